// The auditor page: plain DOM, no build step, no library, nothing loaded from elsewhere.
// Untrusted text only ever goes through textContent or SVG attributes, never innerHTML.
// The token stays in memory and this tab's sessionStorage; the pinned checkpoint key and the
// last checkpoint verified with it stay in localStorage (both public values).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 100; // events per table page: only these are verified
const CHART_PAGE = 1000; // events per request while filling the charts
const CHART_CAP = 50000; // the charts read at most this many events (the caption says so)
const PROOF_CONCURRENCY = 4;
const PIN_KEY = "auditPinnedCheckpointKey";
const SEEN_KEY = "auditLastVerifiedCheckpoint";
const WITNESS_KEY = "auditPinnedWitnesses"; // {vkeys: [...], quorum: K}
const SVG_NS = "http://www.w3.org/2000/svg";
const LOG_KEY = "auditWholeLog"; // + ":" + the pinned key: the last whole-log verdict with it
const GENESIS = "0".repeat(64); // the prev_hash of event 1
const SERIES_CAP = 10; // series a chart's legend names; the rest are summed as "other"
// Allow and deny are told apart by colour family before any label is read: allows in greens
// and blues, denials in reds, oranges and magentas, an altered event in black.
const SHADES = {
  allow: ["#1b7837", "#2166ac", "#5aae61", "#0e7490", "#4393c3", "#166534", "#66bd63", "#1e3a8a", "#35978f", "#92c5de"],
  deny: ["#b2182b", "#e08214", "#c51b7d", "#d6604d", "#8e0152", "#b35806", "#f46d43", "#de77ae", "#fdae61", "#67001f"],
  altered: ["#111111"],
  other: ["#9ca3af"],
};
const ALTERED = "altered event"; // the series of events whose fields do not hash to their hash

// Timings for the browser test: milliseconds since the sign-in was submitted.
const timings = { start: null };
window.auditTimings = timings;
function mark(name) {
  if (timings.start !== null && timings[name] === undefined) timings[name] = performance.now() - timings.start;
  if (timings.rows !== undefined && timings.charts !== undefined && timings.firstRender === undefined) {
    timings.firstRender = Math.max(timings.rows, timings.charts);
  }
}

let token = sessionStorage.getItem("auditToken") || "";

// -- talking to the broker ----------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, method = "GET") {
  let resp;
  try {
    resp = await fetch(path, { method, headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  } catch (e) {
    throw new ApiError("the broker did not answer (" + e.message + ")", 0, "network");
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    // An RFC 9457 problem document: show its title and detail as the broker wrote them.
    const title = body && typeof body.title === "string" ? body.title : resp.statusText || "error";
    const detail = body && typeof body.detail === "string" ? body.detail : "";
    const code = body && typeof body.type === "string" ? body.type.split(":").pop() : "";
    throw new ApiError((detail ? title + ": " + detail : title) + " (HTTP " + resp.status + ")", resp.status, code);
  }
  if (body === null) throw new ApiError("the broker's answer is not JSON", resp.status, "bad_answer");
  return body;
}

// -- small DOM helpers --------------------------------------------------------------------

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fact(list, name, value, cls) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value == null ? "" : String(value);
  if (cls) dd.className = cls;
  list.append(dt, dd);
  return dd;
}

function say(el, text, cls) {
  el.textContent = text;
  el.className = cls || "";
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text != null) node.textContent = String(text);
  return node;
}

// -- bytes, hashes, canonical JSON --------------------------------------------------------

const utf8 = (text) => new TextEncoder().encode(text);

function fromB64(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
    throw new Error("not base64");
  }
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

const toB64 = (bytes) => btoa(String.fromCharCode(...bytes));

function fromHex(text) {
  if (typeof text !== "string" || !/^([0-9a-f]{2})*$/.test(text)) throw new Error("not hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function equal(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// RFC 8785 (JCS) for what audit events hold: object keys sorted by UTF-16 code units (the
// default string sort), no whitespace, and ECMAScript's own string and number forms.
function canonical(value) {
  if (value === null || typeof value !== "object") {
    if (typeof value === "number" && !Number.isFinite(value)) throw new Error("not canonicalisable");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
  const keys = Object.keys(value).sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonical(value[k])).join(",") + "}";
}

// The RFC 6962 leaf of an event, as the broker computes it: SHA-256(0x00 || canonical(event
// without its "hash" field)). The event's hash is this leaf hash.
async function leafHash(event) {
  const body = {};
  for (const [k, v] of Object.entries(event)) if (k !== "hash") body[k] = v;
  return sha256(concat(Uint8Array.of(0), utf8(canonical(body))));
}

// SHA-256 (FIPS 180-4) in plain JavaScript, for hashing thousands of events at once: one
// WebCrypto digest per event costs a promise and a trip to another thread each, which made the
// charts and the whole-log check several times slower. The constants are the first 32 bits of
// the fractional parts of the square and cube roots of the first primes, as the standard says.
const SHA_K = new Uint32Array(64), SHA_H = new Uint32Array(8);
(() => {
  const frac = (x) => (x - Math.floor(x)) * 2 ** 32;
  for (let n = 2, found = 0; found < 64; n++) {
    let prime = true;
    for (let d = 2; d * d <= n; d++) if (n % d === 0) { prime = false; break; }
    if (!prime) continue;
    if (found < 8) SHA_H[found] = frac(Math.sqrt(n));
    SHA_K[found++] = frac(Math.cbrt(n));
  }
})();
const shaW = new Uint32Array(64);

function sha256Sync(data) {
  const n = data.length, total = Math.ceil((n + 9) / 64) * 64;
  const buf = new Uint8Array(total);
  buf.set(data);
  buf[n] = 0x80;
  const view = new DataView(buf.buffer);
  view.setUint32(total - 8, Math.floor(n / 0x20000000));
  view.setUint32(total - 4, (n * 8) >>> 0);
  const h = SHA_H.slice(), w = shaW;
  for (let off = 0; off < total; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + 4 * i);
    for (let i = 16; i < 64; i++) {
      const x = w[i - 15], y = w[i - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (let i = 0; i < 64; i++) {
      const t1 = (k + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) +
        ((e & f) ^ (~e & g)) + SHA_K[i] + w[i]) | 0;
      const t2 = ((((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) +
        ((a & b) ^ (a & c) ^ (b & c))) | 0;
      k = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) outView.setUint32(4 * i, h[i]);
  return out;
}

// leafHash, synchronously: for many events at once.
function leafHashSync(event) {
  const body = {};
  for (const [k, v] of Object.entries(event)) if (k !== "hash") body[k] = v;
  return sha256Sync(concat(Uint8Array.of(0), utf8(canonical(body))));
}

const hashChildren = (left, right) => sha256(concat(Uint8Array.of(1), left, right));
const hashChildrenSync = (left, right) => sha256Sync(concat(Uint8Array.of(1), left, right));
const odd = (n) => n % 2 === 1;
const isPowerOfTwo = (n) => n > 0 && Number.isInteger(Math.log2(n));
const half = (n) => Math.floor(n / 2);

// RFC 9162 section 2.1.3.2: the root an inclusion proof leads to, or null.
async function inclusionRoot(index, size, leaf, proof) {
  if (!(index >= 0 && index < size)) return null;
  let fn = index, sn = size - 1, r = leaf;
  for (const p of proof) {
    if (sn === 0) return null;
    if (odd(fn) || fn === sn) {
      r = await hashChildren(p, r);
      while (!odd(fn) && fn !== 0) { fn = half(fn); sn = half(sn); }
    } else {
      r = await hashChildren(r, p);
    }
    fn = half(fn); sn = half(sn);
  }
  return sn === 0 ? r : null;
}

// RFC 9162 section 2.1.4.2.
async function consistencyHolds(first, second, firstRoot, secondRoot, proof) {
  if (first === second) return proof.length === 0 && equal(firstRoot, secondRoot);
  if (!(first > 0 && first < second) || proof.length === 0) return false;
  const path = proof.slice();
  if (isPowerOfTwo(first)) path.unshift(firstRoot);
  let fn = first - 1, sn = second - 1;
  while (odd(fn)) { fn = half(fn); sn = half(sn); }
  let fr = path[0], sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      fr = await hashChildren(c, fr);
      sr = await hashChildren(c, sr);
      while (!odd(fn) && fn !== 0) { fn = half(fn); sn = half(sn); }
    } else {
      sr = await hashChildren(sr, c);
    }
    fn = half(fn); sn = half(sn);
  }
  return sn === 0 && equal(fr, firstRoot) && equal(sr, secondRoot);
}

// -- the pinned key and the signed checkpoint ---------------------------------------------

async function keyId(name, publicKey) {
  return (await sha256(concat(utf8(name + "\n"), Uint8Array.of(1), publicKey))).slice(0, 4);
}

// A pin is a C2SP vkey "<name>+<hex key id>+<base64(0x01 || key)>" or a raw base64 key.
async function parsePin(text) {
  text = (text || "").trim();
  const plus = text.indexOf("+");
  if (plus > 0 && text[plus + 9] === "+") {
    const name = text.slice(0, plus);
    const id = text.slice(plus + 1, plus + 9);
    const raw = fromB64(text.slice(plus + 10));
    if (raw.length !== 33 || raw[0] !== 1) throw new Error("the vkey does not hold an Ed25519 key");
    const publicKey = raw.slice(1);
    if (toHex(await keyId(name, publicKey)) !== id.toLowerCase()) throw new Error("the vkey's key id does not match its key");
    return { name, publicKey, text };
  }
  const publicKey = fromB64(text);
  if (publicKey.length !== 32) throw new Error("an Ed25519 public key is 32 bytes");
  return { name: null, publicKey, text };
}

// A C2SP signed note: the signed text (up to the blank line), its checkpoint lines, signatures.
function parseNote(note) {
  const cut = typeof note === "string" ? note.indexOf("\n\n") : -1;
  if (cut <= 0) throw new Error("not a signed note");
  const text = note.slice(0, cut + 1);
  const lines = text.split("\n").slice(0, -1);
  if (lines.length < 3 || !/^(0|[1-9][0-9]{0,15})$/.test(lines[1])) throw new Error("not a checkpoint");
  const root = fromB64(lines[2]);
  if (root.length !== 32) throw new Error("the root is not a SHA-256 hash");
  const signatures = [];
  for (const line of note.slice(cut + 2).split("\n")) {
    if (!line) continue;
    const parts = line.split(" ");
    if (parts.length === 3 && parts[0] === "\u2014") {
      try { signatures.push({ name: parts[1], raw: fromB64(parts[2]) }); } catch (e) { /* not ours */ }
    }
  }
  return { text, origin: lines[0], size: Number(lines[1]), root, signatures };
}

let ed25519Supported = null;

// The note's signature by the pinned key: { ok, why, body }.
async function verifyNote(note, pin) {
  const body = parseNote(note);
  let key;
  try {
    key = await crypto.subtle.importKey("raw", pin.publicKey, { name: "Ed25519" }, false, ["verify"]);
    ed25519Supported = true;
  } catch (e) {
    ed25519Supported = false;
    return { ok: false, why: "this browser cannot verify Ed25519 (WebCrypto: " + e.message + ")", body };
  }
  for (const s of body.signatures) {
    if (pin.name !== null && s.name !== pin.name) continue;
    if (s.raw.length !== 68 || !equal(s.raw.slice(0, 4), await keyId(s.name, pin.publicKey))) continue;
    const ok = await crypto.subtle.verify({ name: "Ed25519" }, key, s.raw.slice(4), utf8(body.text));
    if (!ok) return { ok, why: "the signature by the pinned key does NOT verify", body, signer: s.name };
    // A log's checkpoints carry its name as their origin (C2SP tlog-checkpoint): a note of
    // another origin, even signed by this key under this name, is another log's checkpoint.
    if (body.origin !== s.name) {
      return { ok: false, why: "the checkpoint's origin " + JSON.stringify(body.origin) +
        " is not " + JSON.stringify(s.name) + ", the name of the log's key: another log's checkpoint", body };
    }
    return { ok, why: "", body, signer: s.name };
  }
  return { ok: false, why: "the note carries no signature by the pinned key", body };
}

// -- witness cosignatures (C2SP tlog-cosignature, Ed25519 type 0x04) -----------------------

async function cosignerKeyId(name, publicKey) {
  return (await sha256(concat(utf8(name + "\n"), Uint8Array.of(4), publicKey))).slice(0, 4);
}

// A witness pin is a cosigner vkey "<name>+<hex key id>+<base64(0x04 || key)>".
async function parseWitness(text) {
  const parts = (text || "").trim().split("+");
  if (parts.length < 3 || !parts[0]) throw new Error("a witness key is a vkey NAME+KEYID+BASE64");
  const name = parts[0];
  const raw = fromB64(parts.slice(2).join("+"));
  if (raw.length !== 33 || raw[0] !== 4) throw new Error("the vkey of " + name + " is not a cosigner key (type 0x04)");
  const publicKey = raw.slice(1);
  if (toHex(await cosignerKeyId(name, publicKey)) !== parts[1].toLowerCase()) {
    throw new Error("the vkey of " + name + ": its key id does not match its key");
  }
  return { name, publicKey, text: text.trim() };
}

let witnesses = { keys: [], quorum: 0 };

async function loadWitnesses() {
  witnesses = { keys: [], quorum: 0 };
  try {
    const stored = JSON.parse(localStorage.getItem(WITNESS_KEY) || "null");
    if (stored) {
      const keys = [];
      for (const vkey of stored.vkeys) keys.push(await parseWitness(vkey));
      witnesses = { keys, quorum: stored.quorum };
    }
  } catch (e) { localStorage.removeItem(WITNESS_KEY); }
  $("pinned-witnesses").textContent = witnesses.keys.length
    ? witnesses.keys.map((k) => k.name).join(", ") + " (quorum " + witnesses.quorum + ")"
    : "none";
}

// One cosignature line checked against a pinned witness: its timestamp, or null if it fails.
async function cosignatureTime(body, sig, key) {
  if (sig.raw.length !== 76 || !equal(sig.raw.slice(0, 4), await cosignerKeyId(key.name, key.publicKey))) return undefined;
  let stamp = 0n;
  for (const b of sig.raw.slice(4, 12)) stamp = (stamp << 8n) | BigInt(b);
  const message = utf8("cosignature/v1\ntime " + stamp.toString() + "\n" + body.text);
  const verifier = await crypto.subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false, ["verify"]);
  const ok = stamp > 0n && await crypto.subtle.verify({ name: "Ed25519" }, verifier, sig.raw.slice(12), message);
  return ok ? Number(stamp) : null;
}

// Each cosigner the note names, checked in this browser against the pinned witness keys, and
// whether the pinned quorum is met. Lines by witnesses nobody pinned are shown, not counted.
async function showCosigners(body, logSigner) {
  const list = $("cosigners");
  list.textContent = "";
  const verdict = $("witness-verdict");
  const valid = new Set();
  const failed = new Set();
  for (const sig of body.signatures) {
    if (sig.name === logSigner) continue;
    const key = witnesses.keys.find((k) => k.name === sig.name);
    const item = document.createElement("li");
    item.className = "mono";
    let stamp;
    if (key) stamp = await cosignatureTime(body, sig, key);
    if (key && typeof stamp === "number") {
      valid.add(sig.name);
      item.textContent = sig.name + " \u2713 cosigned at " + new Date(stamp * 1000).toISOString() + " (verified here)";
      item.classList.add("ok");
    } else if (key) {
      failed.add(sig.name);
      item.textContent = sig.name + " \u2717 its cosignature does NOT verify with the pinned key";
      item.classList.add("bad");
    } else {
      item.textContent = sig.name + " ? not a pinned witness: not checked, not counted";
      item.classList.add("muted");
    }
    item.dataset.state = valid.has(sig.name) ? "verified" : failed.has(sig.name) ? "failed" : "unpinned";
    list.appendChild(item);
  }
  const missing = witnesses.keys.map((k) => k.name).filter((n) => !valid.has(n));
  if (!witnesses.keys.length) {
    say(verdict, "Witness cosignatures NOT verified: no witness keys pinned", "muted");
    verdict.dataset.state = "unpinned";
  } else if (valid.size >= witnesses.quorum && !failed.size) {
    say(verdict, "Witnessed \u2713 " + valid.size + " of " + witnesses.keys.length + " pinned witnesses cosigned this " +
      "checkpoint (quorum " + witnesses.quorum + "), verified in this browser", "ok");
    verdict.dataset.state = "witnessed";
  } else {
    say(verdict, "Quorum NOT met \u2717 " + valid.size + " valid cosignature" + (valid.size === 1 ? "" : "s") + " of the " +
      witnesses.quorum + " required" + (missing.length ? "; missing: " + missing.join(", ") : "") +
      (failed.size ? "; failing: " + [...failed].join(", ") : ""), "bad");
    verdict.dataset.state = "unwitnessed";
  }
}

let pin = null; // the parsed pinned key
let checkpoint = null; // { verified, size, root, origin, rootHex } of the latest one loaded

function showPin() {
  $("pinned-key").textContent = pin ? pin.text : "none: paste the broker's checkpoint key to verify anything";
  $("pinned-key").className = pin ? "mono" : "mono warn";
  $("unpin").disabled = !pin;
}

async function loadPin() {
  const stored = localStorage.getItem(PIN_KEY);
  pin = null;
  if (stored) {
    try { pin = await parsePin(stored); } catch (e) { localStorage.removeItem(PIN_KEY); }
  }
  showPin();
}

async function showAnnouncedKey() {
  try {
    const resp = await fetch("/.well-known/alliance-broker/checkpoint-key", { cache: "no-store" });
    const key = await resp.json();
    $("announced-key").textContent = key.vkey;
    if (!pin) { say($("announced-match"), ""); return; }
    const same = key.public_key === toB64(pin.publicKey) && (pin.name === null || pin.name === key.name);
    say($("announced-match"), same ? "(the pinned key)" : "(NOT the pinned key)", same ? "ok" : "bad");
  } catch (e) {
    $("announced-key").textContent = "unavailable";
  }
}

function loadSeen() {
  try { return JSON.parse(localStorage.getItem(SEEN_KEY) || "null"); } catch (e) { return null; }
}

function saveSeen(cp) {
  localStorage.setItem(SEEN_KEY, JSON.stringify({
    pin: toB64(pin.publicKey), origin: cp.origin, size: cp.size, root: toB64(cp.root),
  }));
}

// Is the verified checkpoint consistent with the last one this browser verified? Returns
// [state, text]; state "verified", "failed" or "baseline".
async function checkConsistency(cp) {
  const seen = loadSeen();
  if (!seen || seen.pin !== toB64(pin.publicKey) || seen.origin !== cp.origin) {
    saveSeen(cp);
    return ["baseline", "First checkpoint this browser has verified with this key (size " + cp.size +
      "): kept as the baseline; later checkpoints are checked against it."];
  }
  const seenRoot = fromB64(seen.root);
  if (seen.size === cp.size) {
    return equal(seenRoot, cp.root)
      ? ["verified", "Same tree as the checkpoint this browser verified before (size " + cp.size + ") \u2713"]
      : ["failed", "FORK: another root for size " + cp.size + " than the one verified before \u2717"];
  }
  if (seen.size > cp.size) {
    return ["failed", "The latest checkpoint (size " + cp.size + ") is older than one this browser already " +
      "verified (size " + seen.size + "): rolled back? \u2717"];
  }
  let ok = seen.size === 0;
  if (!ok) {
    const proof = await api("/v1/audit/proofs/consistency?first=" + seen.size + "&second=" + cp.size);
    ok = await consistencyHolds(seen.size, cp.size, seenRoot, cp.root, proof.path.map(fromHex));
  }
  if (!ok) {
    return ["failed", "The log of size " + cp.size + " is NOT an extension of the one verified before " +
      "(size " + seen.size + ") \u2717"];
  }
  saveSeen(cp);
  return ["verified", "Consistent with the checkpoint of size " + seen.size + " this browser verified before \u2713"];
}

async function useCheckpoint(cp) {
  const box = $("checkpoint");
  box.textContent = "";
  const verdict = $("checkpoint-verdict");
  const consistency = $("consistency-verdict");
  say(consistency, "");
  let result = null;
  if (!pin) {
    result = { ok: false, why: "no pinned key", body: null };
  } else {
    try { result = await verifyNote(cp.note, pin); } catch (e) { result = { ok: false, why: e.message, body: null }; }
  }
  // Only values read from the signed note are shown as the checkpoint, and only once verified.
  if (result.ok) {
    const b = result.body;
    checkpoint = { verified: true, size: b.size, root: b.root, rootHex: toHex(b.root), origin: b.origin };
    fact(box, "Origin", b.origin, "mono");
    fact(box, "Events covered", b.size);
    fact(box, "Merkle root", toHex(b.root), "mono");
    fact(box, "Signed by", result.signer, "mono");
    fact(box, "Signed at (unsigned field)", cp.time, "muted");
    say(verdict, "Signature by the pinned key verified in this browser \u2713", "ok");
    await showCosigners(b, result.signer);
    try {
      const [state, text] = await checkConsistency(checkpoint);
      say(consistency, text, state === "verified" ? "ok" : state === "failed" ? "bad" : "warn");
      consistency.dataset.state = state;
    } catch (e) {
      say(consistency, "Consistency NOT checked: " + e.message, "bad");
      consistency.dataset.state = "unverified";
    }
  } else {
    checkpoint = { verified: false, why: result.why, unpinned: !pin };
    fact(box, "Events covered (unverified)", cp.size);
    fact(box, "Merkle root (unverified)", cp.head, "mono");
    // Nothing pinned is "not yet", grey; a pinned key the note does not verify with is a failure.
    if (pin) say(verdict, "Signature NOT verified: " + result.why + " \u2717", "bad");
    else say(verdict, "Signature NOT verified yet: no key pinned", "muted");
    $("cosigners").textContent = "";
    say($("witness-verdict"), "Witness cosignatures NOT checked: the log's own signature is not verified", "muted");
    $("witness-verdict").dataset.state = "unverified";
    consistency.dataset.state = "unverified";
  }
  verdict.dataset.state = checkpoint.verified ? "verified" : "unverified";
  mark("checkpoint");
  reverifyAll();
  verifyWholeLog(checkpoint, consistency.dataset.state === "failed" ? consistency.textContent : null, false);
}

async function loadCheckpoint(sign) {
  try {
    const cp = sign ? await api("/v1/audit/checkpoints", "POST") : await api("/v1/audit/checkpoints/latest");
    await useCheckpoint(cp);
  } catch (e) {
    say($("page-error"), "Checkpoint: " + e.message, "error");
    if (!checkpoint) banner("unverified", "Not yet verified: the signed checkpoint could not be loaded (" + e.message + ").");
  }
}

// -- the whole log against the signed checkpoint: one verdict ------------------------------
//
// Each row's proof covers that row only: an event edited further back than the rows on screen
// would leave every mark green. So once a checkpoint verifies, the page reads every event from 1
// to its size (1,000 a request, showing progress) and checks that each seq is there, each
// event's fields hash to its hash, each prev_hash is the hash of the event before, and the
// leaves fold to the signed root. The verdict is kept in localStorage by pinned key, origin,
// size and root, so reloading the page for the same checkpoint does not read the log again.

const badSeqs = new Map(); // seq -> why, from the whole-log check of the checkpoint shown
// Set when the events up to the checkpoint do not hash to its root although each hashes to its hash
// and links to the one before (rewritten with every hash after the edit): any of them may be the
// rewritten one, so none of them is charted under its decision.
let rewrittenUpTo = 0;
let logGen = 0;

function banner(state, text, extra) {
  const box = $("log-verdict");
  box.hidden = false;
  box.dataset.state = state;
  box.dataset.remembered = extra && extra.remembered ? "1" : "";
  box.dataset.firstBad = extra && extra.firstBad ? String(extra.firstBad) : "";
  $("log-verdict-text").textContent = text;
  const bar = $("log-verdict-progress");
  bar.hidden = !(extra && extra.progress);
  if (extra && extra.progress) { bar.max = extra.progress[1]; bar.value = extra.progress[0]; }
  $("reverify-log").hidden = !(extra && extra.again);
  $("show-first-bad").hidden = !(extra && extra.firstBad);
  if (extra && extra.firstBad) $("show-first-bad").textContent = "Show event " + extra.firstBad + " in the table";
}

// A Merkle tree's frontier: the roots of its perfect subtrees, largest first (RFC 9162 2.1.1).
function frontierPush(stack, leaf) {
  stack.push({ hash: leaf, height: 0 });
  while (stack.length > 1 && stack[stack.length - 1].height === stack[stack.length - 2].height) {
    const right = stack.pop(), left = stack.pop();
    stack.push({ hash: hashChildrenSync(left.hash, right.hash), height: left.height + 1 });
  }
}

async function frontierRoot(stack) {
  if (!stack.length) return sha256(new Uint8Array(0));
  let root = stack[stack.length - 1].hash;
  for (let i = stack.length - 2; i >= 0; i--) root = await hashChildren(stack[i].hash, root);
  return root;
}

function logMemoKey() {
  return LOG_KEY + ":" + toB64(pin.publicKey);
}

function showLogVerdict(memo, remembered) {
  badSeqs.clear();
  rewrittenUpTo = 0;
  for (const f of memo.faults) {
    badSeqs.set(f.seq, f.why);
    if (f.rewritten) rewrittenUpTo = Math.max(rewrittenUpTo, f.seq);
  }
  const when = remembered ? " (verified in this browser at " + memo.at + "; remembered for this checkpoint)" : "";
  if (memo.state === "intact") {
    banner("intact", "Log intact \u2713 every event up to the signed checkpoint (" + memo.size + " events) was read and " +
      "verified in this browser: all present, each hashing to its hash, each linked to the one before, " +
      "together hashing to the signed root" + when + ".", { remembered, again: true });
  } else {
    const first = memo.faults[0];
    banner("tampered", "Log TAMPERED \u2717 the log up to the signed checkpoint (" + memo.size + " events) is not what the " +
      "broker signed. First bad: event " + first.seq + ": " + first.why + ". " + memo.count +
      (memo.count === 1 ? " fault" : " faults") + " in all" + when + ".", { remembered, again: true, firstBad: first.seq });
  }
  if (lastChart && memo.faults.length) drawCharts(lastChart.points, lastChart.undated);
}

async function verifyWholeLog(cp, inconsistent, again) {
  const gen = ++logGen;
  badSeqs.clear();
  rewrittenUpTo = 0;
  if (!pin) {
    banner("unverified", "Not yet verified: no checkpoint key is pinned. Pin the broker's key (obtained out of band) " +
      "to verify the whole log in this browser.");
    return;
  }
  if (!cp.verified) {
    banner("failed", "Log NOT verified \u2717 the latest checkpoint does not verify with the pinned key: " + cp.why + ".");
    return;
  }
  if (inconsistent) {
    banner("failed", "Log NOT verified \u2717 " + inconsistent);
    return;
  }
  const key = logMemoKey(), rootB64 = toB64(cp.root);
  let memo = null;
  try { memo = JSON.parse(localStorage.getItem(key) || "null"); } catch (e) { memo = null; }
  if (!again && memo && memo.origin === cp.origin && memo.size === cp.size && memo.root === rootB64) {
    showLogVerdict(memo, true);
    return;
  }
  // Events verified before may have been edited since: a new checkpoint is checked from event 1.
  // Meanwhile the last verdict is named, but as what it was: a verdict on another checkpoint.
  const before = memo && memo.origin === cp.origin && memo.state
    ? " Last verdict in this browser, for the checkpoint of size " + memo.size + " (" + memo.at + "): " +
      (memo.state === "intact" ? "intact." : "TAMPERED, first bad event " + memo.faults[0].seq + ".")
    : "";
  const faults = [];
  const fault = (seq, why, rewritten) => {
    faults.push(rewritten ? { seq, why, rewritten } : { seq, why });
    badSeqs.set(seq, why);
    if (rewritten) rewrittenUpTo = seq;
  };
  const stack = [];
  let expect = 1, prevHash = GENESIS;
  const progress = () => banner("pending", "Not yet verified: reading the whole log up to the signed checkpoint \u2026 " +
    (expect - 1) + " of " + cp.size + " events checked" + (faults.length ? ", " + faults.length + " FAULTS so far" : "") +
    "." + before, { progress: [expect - 1, cp.size] });
  progress();
  try {
    while (expect <= cp.size) {
      const params = new URLSearchParams({ after: String(expect - 1), before: String(cp.size + 1), limit: String(CHART_PAGE) });
      const page = await api("/v1/audit/events?" + params);
      if (gen !== logGen) return;
      if (!page.events.length) break;
      for (const event of page.events) {
        const leaf = leafHashSync(event);
        if (event.seq !== expect) {
          fault(expect, "the log has no event at " + (event.seq - 1 === expect ? "seq " + expect : "seqs " + expect + "\u2013" +
            (event.seq - 1)) + " (removed or moved)");
        }
        if (toHex(leaf) !== event.hash) fault(event.seq, "its fields do not hash to its hash (altered)");
        else if (event.prev_hash !== prevHash) {
          // Either may be the edited one (an event edited and re-hashed hashes to its hash): both
          // are at fault, the earlier one first, as `broker audit verify` names it. After a gap the
          // gap is the fault, not the event before it.
          if (event.seq === expect && expect > 1) {
            fault(expect - 1, "its hash is not the prev_hash of event " + event.seq +
              ": one of the two was altered, or re-hashed (the chain is broken there)");
          }
          fault(event.seq, "its prev_hash is not the hash of event " + (event.seq - 1) +
            ": one of the two was altered (the chain is broken there)");
        }
        frontierPush(stack, leaf);
        prevHash = event.hash;
        expect = event.seq + 1;
      }
      progress();
    }
    if (expect <= cp.size) fault(expect, "the log has no event from seq " + expect + " to the signed size " + cp.size);
    if (!faults.length && !equal(await frontierRoot(stack), cp.root)) {
      fault(cp.size, "the events up to it do not hash to the signed root, though each hashes to its hash and " +
        "links to the one before: events were rewritten, each hash after the first edit recomputed. This page " +
        "cannot tell which (none is charted under its decision); `broker audit verify` on an export locates " +
        "them between its earlier checkpoints", true);
    }
  } catch (e) {
    if (gen === logGen) {
      banner("unverified", "Not yet verified: the log could not be read (" + e.message + ").", { again: true });
    }
    return;
  }
  if (gen !== logGen) return;
  faults.sort((a, b) => a.seq - b.seq);
  memo = {
    origin: cp.origin, size: cp.size, root: rootB64, state: faults.length ? "tampered" : "intact",
    faults: faults.slice(0, 100), count: faults.length, at: new Date().toISOString().slice(0, 19).replace("T", " ") + " UTC",
  };
  localStorage.setItem(key, JSON.stringify(memo));
  showLogVerdict(memo, false);
}

// -- verifying the displayed events against the signed checkpoint -------------------------

const proofs = new Map(); // "seq@size:root" -> Promise<{ ok, why }>
let running = 0;
const waiting = [];

function limited(task) {
  return new Promise((resolve, reject) => {
    waiting.push(() => task().then(resolve, reject));
    pump();
  });
}

function pump() {
  while (running < PROOF_CONCURRENCY && waiting.length) {
    running++;
    waiting.shift()().finally(() => { running--; pump(); });
  }
}

async function provenIncluded(event, cp) {
  const leaf = await leafHash(event);
  if (toHex(leaf) !== event.hash) return { ok: false, why: "the event's fields do not hash to its hash: altered" };
  const proof = await api("/v1/audit/proofs/inclusion?seq=" + event.seq + "&size=" + cp.size);
  const root = await inclusionRoot(event.seq - 1, cp.size, leaf, proof.path.map(fromHex));
  if (!root || !equal(root, cp.root)) return { ok: false, why: "its inclusion proof does not lead to the signed root" };
  return { ok: true, why: "" };
}

function setMark(td, state, why, checking) {
  td.dataset.state = state;
  td.dataset.checking = checking ? "1" : "0";
  td.textContent = { verified: "\u2713", failed: "\u2717", unverified: "?", pending: "\u2026" }[state];
  td.title = why;
  scheduleSummary();
}

// Every mark cell shown, with its event; verify() settles one.
const shown = { events: new Map(), report: new Map(), failures: new Map() };

function verify(td, event) {
  const cp = checkpoint;
  if (!cp) { setMark(td, "pending", "pending: the signed checkpoint is loading"); return; }
  if (!cp.verified) { setMark(td, "unverified", "not verified: no checkpoint verified with the pinned key (" + cp.why + ")"); return; }
  if (event.seq > cp.size) {
    setMark(td, "pending", "pending: newer than the signed checkpoint (size " + cp.size + "); sign a new one to check it");
    return;
  }
  setMark(td, "pending", "pending: checking its inclusion proof", true);
  const key = event.seq + "@" + cp.size + ":" + cp.rootHex;
  if (!proofs.has(key)) proofs.set(key, limited(() => provenIncluded(event, cp)).catch((e) => ({ ok: false, error: true, why: e.message })));
  // A report row is verified only once the log around it is known whole (checkReportChain).
  const around = shown.report.has(td) ? chain.ready : null;
  proofs.get(key).then(async (r) => {
    const fault = around ? await around.then(() => chain.faults.get(event.seq)) : undefined;
    if (checkpoint !== cp || !td.isConnected) return;
    if (!r.ok && !r.error) setMark(td, "failed", "FAILED: " + r.why);
    else if (fault && fault.state === "failed") setMark(td, "failed", "FAILED: " + fault.why);
    else if (r.error) setMark(td, "unverified", "not verified: " + r.why);
    else if (fault) setMark(td, "unverified", "not verified: " + fault.why);
    else setMark(td, "verified", "verified: included in the signed checkpoint of size " + cp.size +
      (around ? ", and the log around it is whole" : ""));
  });
}

// The report's table can be long: its rows are verified when they scroll into view.
const lazy = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    lazy.unobserve(entry.target);
    const event = shown.report.get(entry.target);
    if (event) verify(entry.target, event);
  }
}, { rootMargin: "200px" }) : null;

function track(where, td, event) {
  shown[where].set(td, event);
  if (where === "report" && lazy) { setMark(td, "pending", "pending: verified when shown"); lazy.observe(td); }
  else verify(td, event);
}

function reverifyAll() {
  if (chain.events) chain.ready = checkReportChain(chain.events, reportGen);
  for (const [where, map] of Object.entries(shown)) {
    for (const [td, event] of map) {
      if (!td.isConnected) { map.delete(td); continue; }
      if (where === "report" && lazy) { setMark(td, "pending", "pending: verified when shown"); lazy.unobserve(td); lazy.observe(td); }
      else verify(td, event);
    }
  }
}

let summaryQueued = false;
function scheduleSummary() {
  if (summaryQueued) return;
  summaryQueued = true;
  requestAnimationFrame(() => {
    summaryQueued = false;
    const counts = { verified: 0, failed: 0, unverified: 0, pending: 0 };
    for (const td of shown.events.keys()) if (td.isConnected) counts[td.dataset.state]++;
    $("verify-summary").textContent = "Inclusion in the signed checkpoint, for the rows shown: " +
      counts.verified + " verified, " + counts.failed + " FAILED, " + counts.unverified +
      " not verified, " + counts.pending + " pending";
    let checking = 0;
    for (const td of shown.events.keys()) if (td.isConnected && td.dataset.checking === "1") checking++;
    if (checking === 0 && counts.verified > 0 && timings.rows !== undefined) mark("verified");
  });
}

// -- the events table ---------------------------------------------------------------------

function detailsText(details) {
  if (!details || typeof details !== "object") return "";
  return Object.keys(details).sort().map((k) => {
    const v = details[k];
    return k + "=" + (v !== null && typeof v === "object" ? JSON.stringify(v) : String(v));
  }).join("; ");
}

function eventRow(event, where, withReport) {
  const row = document.createElement("tr");
  row.dataset.seq = event.seq;
  const markCell = cell(row, "", "mark");
  for (const key of ["seq", "time", "actor", "action"]) cell(row, event[key]);
  if (withReport) {
    const rep = cell(row, "");
    if (event.report) {
      rep.className = "report";
      rep.title = event.report;
      rep.appendChild(reportLink(event.report));
      rep.addEventListener("click", (ev) => openReportLink(ev, event.report));
    }
  }
  for (const key of ["node", "nation"]) cell(row, event[key]);
  cell(row, event.decision, event.decision === "allow" || event.decision === "deny" ? event.decision : "");
  cell(row, event.reason);
  cell(row, detailsText(event.details), "details");
  track(where, markCell, event);
  return row;
}

// A report id is a real link (#report=<id>): it can be opened in another tab, copied, or
// bookmarked, and the page opens the report it names when it loads.
const REPORT_HASH = /^#report=([0-9A-Za-z:{}-]{32,45})$/;

function reportLink(id) {
  const a = document.createElement("a");
  a.href = "#report=" + encodeURIComponent(id);
  a.textContent = id.slice(0, 8) + "\u2026";
  return a;
}

function openReportLink(ev, id) {
  if (ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return; // a new tab: the browser's
  ev.preventDefault();
  if (location.hash !== "#report=" + encodeURIComponent(id)) history.pushState(null, "", "#report=" + encodeURIComponent(id));
  showReport(id);
}

function reportInLocation() {
  const m = REPORT_HASH.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function filterQuery() {
  const params = new URLSearchParams();
  for (const el of $("filters").elements) {
    if (el.name && el.value.trim()) params.set(el.name, el.value.trim());
  }
  return params;
}

let before = null; // the oldest seq shown: the next page's "before"
let eventsGen = 0;

// from: on a reset, the table starts at this seq (newest first) instead of the log's end.
async function loadEvents(reset, from) {
  const gen = reset ? ++eventsGen : eventsGen;
  const filters = filterQuery();
  const params = new URLSearchParams(filters);
  params.set("order", "desc");
  params.set("limit", PAGE);
  if (!reset && before !== null) params.set("before", before);
  if (reset && from) params.set("before", from + 1);
  $("older").disabled = true;
  let page;
  try {
    page = await api("/v1/audit/events?" + params);
  } catch (e) {
    // The table keeps what it showed; the broker's reason is shown where the filters are.
    if (gen === eventsGen) {
      say($("filter-error"), "The broker refused this query: " + e.message, "error");
      $("older").disabled = false;
    }
    return false;
  }
  if (gen !== eventsGen) return false;
  $("filter-error").textContent = "";
  const body = $("events").tBodies[0];
  if (reset) {
    body.textContent = "";
    shown.events.clear();
  }
  const rows = document.createDocumentFragment();
  for (const event of page.events) rows.appendChild(eventRow(event, "events", true));
  body.appendChild(rows);
  if (page.events.length) before = page.next_after;
  const ended = page.events.length < PAGE;
  if (ended) {
    const row = body.insertRow();
    row.className = "end-of-log";
    const td = cell(row, "");
    td.colSpan = 11;
    td.textContent = [...filters.keys()].length
      ? "\u2014 end of log: no older events match these filters \u2014"
      : "\u2014 end of log: event 1 is the first event ever recorded \u2014";
  }
  $("older").disabled = ended;
  $("events-count").textContent = body.querySelectorAll("tr[data-seq]").length + " events shown" +
    (ended ? " (all matching events)" : "");
  mark("rows");
  scheduleSummary();
  return true;
}

// -- charts: decisions over time, by reason and by nation ---------------------------------

let chartsGen = 0;
const SECOND = 1000, MINUTE = 60 * SECOND, HOUR = 60 * MINUTE, DAY = 24 * HOUR;
// The widths a bar may span: round ones, aligned on UTC (an hour's bar starts on the hour).
const WIDTHS = [SECOND, 2 * SECOND, 5 * SECOND, 10 * SECOND, 15 * SECOND, 30 * SECOND,
  MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE,
  HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY,
  91 * DAY, 364 * DAY];
const MIN_BARS = 24, MAX_BARS = 60;

function eventMillis(time) {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,3})?\d*Z$/.exec(time || "");
  return m ? Date.parse(m[1] + (m[2] || "") + "Z") : NaN;
}

function shortTime(ms) {
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

function widthName(ms) {
  for (const [unit, size] of [["day", DAY], ["hour", HOUR], ["minute", MINUTE], ["second", SECOND]]) {
    if (ms % size === 0) return ms === size ? "one " + unit : ms / size + " " + unit + "s";
  }
  return ms + " ms";
}

// The first index of the sorted times at or after t.
function lowerBound(sorted, t) {
  let lo = 0, hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < t) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// The time axis for event times sorted oldest first: { start, end, width, bars, earlier }. A few
// old events (the broker's setup, a quiet month before today's activity) must not squeeze the
// activity into one bar, so the axis starts where the bulk of the events does:
// 1. it spans at most twice what the newest 90% of the events span;
// 2. an empty stretch longer than half of what is left, with at most half of the events before
//    it, is cut off too (a few times over).
// Then the width is the smallest round one giving at most MAX_BARS bars (at least MIN_BARS,
// going back further if need be). The events before the axis are counted, never dropped: they
// are drawn as one "earlier" bar and the caption says how many they are.
function timeAxis(sorted) {
  const n = sorted.length, newest = sorted[n - 1];
  let first = lowerBound(sorted, newest - 2 * (newest - sorted[Math.floor(n * 0.1)]));
  for (let round = 0; round < 4; round++) {
    let gap = 0, at = -1;
    for (let i = first + 1; i < n; i++) {
      const g = sorted[i] - sorted[i - 1];
      if (g > gap) { gap = g; at = i; }
    }
    if (at < 0 || gap <= 0.5 * (newest - sorted[first]) || at > n / 2) break;
    first = at;
  }
  const oldest = sorted[first];
  let width = WIDTHS.find((w) => Math.floor(newest / w) - Math.floor(oldest / w) < MAX_BARS);
  if (width === undefined) width = Math.ceil((newest - oldest) / (MAX_BARS - 1) / DAY) * DAY;
  const end = (Math.floor(newest / width) + 1) * width;
  const start = Math.min(Math.floor(oldest / width) * width, end - MIN_BARS * width);
  return { start, end, width, bars: Math.round((end - start) / width), earlier: lowerBound(sorted, start) };
}

// A round step for the count axis: about four gridlines.
function countStep(peak) {
  const raw = Math.max(1, peak / 4), power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw && Number.isInteger(m * power)) return m * power;
  return 10 * power;
}

function tickLabel(t, interval, first) {
  const iso = new Date(t).toISOString();
  if (t % DAY === 0 && interval >= HOUR) return iso.slice(0, 10);
  const clock = interval < MINUTE ? iso.slice(11, 19) : iso.slice(11, 16);
  return first ? iso.slice(0, 10) + " " + clock : clock;
}

// A series' colour family: its decision, or "altered" (see SHADES).
function familyOf(point) {
  if (point.altered) return "altered";
  return point.decision === "allow" || point.decision === "deny" ? point.decision : "other";
}

// One stacked bar chart. keys[i] is the series of points[i]; axis comes from timeAxis().
function drawChart(svg, legend, points, keys, axis) {
  svg.textContent = "";
  legend.textContent = "";
  const width = Math.max(400, Math.round(svg.getBoundingClientRect().width) || 900);
  const height = 220, left = 44, right = 12, top = 16, bottom = 34;
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  if (!points.length) {
    svg.appendChild(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no decisions to chart"));
    return;
  }
  const totals = new Map();
  for (const k of keys) totals.set(k, (totals.get(k) || 0) + 1);
  const families = new Map();
  for (let i = 0; i < points.length; i++) if (!families.has(keys[i])) families.set(keys[i], familyOf(points[i]));
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const keep = ranked.slice(0, ranked.length > SERIES_CAP ? SERIES_CAP - 1 : SERIES_CAP).map(([s]) => s);
  const names = ranked.length > keep.length ? [...keep, "other"] : keep;
  const used = { allow: 0, deny: 0, altered: 0, other: 0 };
  const colours = names.map((name, i) => {
    const family = i < keep.length ? families.get(name) : "other";
    const shades = SHADES[family];
    return shades[used[family]++ % shades.length];
  });
  const index = new Map(keep.map((s, i) => [s, i]));
  const { start, width: bucketMs, bars } = axis;
  const counts = Array.from({ length: bars }, () => new Array(names.length).fill(0));
  const earlier = new Array(names.length).fill(0);
  for (let i = 0; i < points.length; i++) {
    const b = Math.floor((points[i].t - start) / bucketMs);
    const s = index.get(keys[i]);
    (b < 0 ? earlier : counts[Math.min(b, bars - 1)])[s === undefined ? names.length - 1 : s]++;
  }
  const sums = counts.map((c) => c.reduce((a, b) => a + b, 0));
  const earlierSum = earlier.reduce((a, b) => a + b, 0);
  const peak = Math.max(1, ...sums);
  const step = countStep(peak), ceiling = Math.ceil(peak / step) * step;
  const plotH = height - top - bottom, base = top + plotH;
  const slot = earlierSum ? 40 : 0; // the "earlier" bar's column, left of the time axis
  const x0 = left + slot, plotW = width - right - x0, barW = plotW / bars;
  const yOf = (v) => base - (v / ceiling) * plotH;

  for (let v = 0; v <= ceiling; v += step) {
    const y = yOf(v).toFixed(1);
    svg.appendChild(svgEl("line", { x1: left, y1: y, x2: width - right, y2: y, stroke: "#eceef2" }));
    svg.appendChild(svgEl("text", { x: left - 4, y: Number(y) + 3, "text-anchor": "end" }, v));
  }
  svg.appendChild(svgEl("line", { x1: left, y1: base, x2: width - right, y2: base, stroke: "#9ca3af" }));
  svg.appendChild(svgEl("line", { x1: left, y1: top, x2: left, y2: base, stroke: "#9ca3af" }));

  // The time axis: a tick and a label at round times, far enough apart to be read.
  const interval = WIDTHS.find((w) => w % bucketMs === 0 && (w / bucketMs) * barW >= 56) || bucketMs * bars;
  let labelEnd = -Infinity;
  for (let b = 0; b <= bars; b++) {
    const t = start + b * bucketMs;
    if (t % interval !== 0 && b !== 0) continue;
    const x = x0 + b * barW;
    if (t % interval === 0) {
      svg.appendChild(svgEl("line", { x1: x.toFixed(1), y1: base, x2: x.toFixed(1), y2: base + 4, stroke: "#9ca3af" }));
    }
    const text = tickLabel(t, interval, labelEnd === -Infinity);
    const textW = text.length * 5.6;
    if (x < labelEnd + 10 || x + textW > width - 2) continue;
    svg.appendChild(svgEl("text", { x: x.toFixed(1), y: base + 14 }, text));
    labelEnd = x + textW;
  }
  svg.appendChild(svgEl("text", { x: width - right, y: height - 4, "text-anchor": "end", class: "axis-note" },
    "UTC, one bar = " + widthName(bucketMs).replace(/^one /, "")));

  const stackOf = (g, stack, x, w, scale, from, to, total) => {
    let y = base;
    stack.forEach((n, s) => {
      if (!n) return;
      const h = n * scale;
      y -= h;
      const rect = svgEl("rect", { x: x.toFixed(1), y: y.toFixed(1), width: w.toFixed(1), height: Math.max(0.5, h).toFixed(1), fill: colours[s] });
      rect.appendChild(svgEl("title", {}, names[s] + ": " + n + " of " + total + " (" + shortTime(from) +
        " \u2013 " + shortTime(to) + " UTC); click to look at this span"));
      g.appendChild(rect);
    });
  };
  const group = (from, to, total, cls) => svgEl("g", {
    class: cls, "data-from": new Date(from).toISOString(), "data-to": new Date(to).toISOString(), "data-total": total,
  });

  // The events before the axis: one bar, to the count scale but clipped to the plot's height.
  if (earlierSum) {
    const from = points.reduce((m, p) => Math.min(m, p.t), Infinity);
    const g = group(from, start, earlierSum, "bar earlier");
    const clipped = earlierSum > ceiling;
    const scale = (clipped ? ceiling / earlierSum : 1) * plotH / ceiling;
    stackOf(g, earlier, left + 6, slot - 14, scale, from, start, earlierSum);
    svg.appendChild(g);
    if (clipped) {
      for (const dy of [12, 17]) {
        svg.appendChild(svgEl("line", { x1: left + 3, y1: top + dy + 3, x2: left + slot - 5, y2: top + dy - 3, stroke: "#fcfcfd", "stroke-width": 2 }));
      }
    }
    const mid = left + 6 + (slot - 14) / 2;
    svg.appendChild(svgEl("text", { x: mid, y: yOf(Math.min(earlierSum, ceiling)) - 3, "text-anchor": "middle" }, earlierSum));
    svg.appendChild(svgEl("text", { x: mid, y: base + 14, "text-anchor": "middle", class: "axis-note" }, "earlier"));
    svg.appendChild(svgEl("line", { x1: x0 - 2, y1: top, x2: x0 - 2, y2: base + 4, stroke: "#9ca3af", "stroke-dasharray": "3 3" }));
  }

  const scale = plotH / ceiling;
  for (let b = 0; b < bars; b++) {
    if (!sums[b]) continue;
    const from = start + b * bucketMs, to = from + bucketMs;
    const g = group(from, to, sums[b], "bar");
    stackOf(g, counts[b], x0 + b * barW + (barW > 4 ? 0.5 : 0), Math.max(1, barW - (barW > 4 ? 1 : 0)), scale, from, to, sums[b]);
    svg.appendChild(g);
  }

  names.forEach((name, s) => {
    const item = document.createElement("span");
    const swatch = svgEl("svg", { width: 10, height: 10, class: "swatch" });
    swatch.appendChild(svgEl("rect", { width: 10, height: 10, fill: colours[s] }));
    const n = name === "other" ? ranked.slice(keep.length).reduce((a, [, c]) => a + c, 0) : totals.get(name);
    item.append(swatch, document.createTextNode(name + " (" + n + ")"));
    item.dataset.series = name;
    item.dataset.family = s < keep.length ? families.get(name) : "other";
    legend.appendChild(item);
  });
}

// A bar's time span becomes the since/until filters (since inclusive, until exclusive).
function zoom(from, to) {
  const form = $("filters");
  form.elements.since.value = new Date(Math.floor(from)).toISOString();
  form.elements.until.value = new Date(Math.ceil(to)).toISOString();
  form.requestSubmit();
}

for (const id of ["chart-reason", "chart-nation"]) {
  $(id).addEventListener("click", (ev) => {
    const bar = ev.target.closest && ev.target.closest("g[data-from]");
    if (bar) zoom(Date.parse(bar.dataset.from), Date.parse(bar.dataset.to));
  });
}

function describeAxis(axis, sorted, undated) {
  const at = (ms) => axis.width < MINUTE ? new Date(ms).toISOString().slice(0, 19).replace("T", " ") : shortTime(ms);
  let text = "Time axis (UTC): " + at(axis.start) + " to " + at(axis.end) + ", one bar per " +
    widthName(axis.width).replace(/^one /, "") + ". ";
  if (axis.earlier) {
    const from = shortTime(sorted[0]), to = shortTime(sorted[axis.earlier - 1]);
    text += axis.earlier + (axis.earlier === 1 ? " earlier event (" : " earlier events (") + from +
      (to !== from ? " to " + to : "") + (axis.earlier === 1 ? ") lies" : ") lie") +
      " before it: the \u201cearlier\u201d bar at the left, drawn to the count scale but not the time " +
      "scale (click it to chart them).";
  } else {
    text += "Every charted event is on it.";
  }
  if (undated) text += " " + undated + " events with an unreadable time are not charted.";
  return text;
}

let lastChart = null; // the points last charted, redrawn when the whole-log check finds faults

function drawCharts(points, undated) {
  lastChart = { points, undated };
  // An event the whole-log check found at fault is charted as altered, never as its decision.
  for (const p of points) if (!p.altered && (badSeqs.has(p.seq) || p.seq <= rewrittenUpTo)) p.altered = true;
  // An event with no decision is charted only if altered (its decision may be what was removed).
  points = points.filter((p) => p.altered || p.decision);
  const began = performance.now();
  try { drawBothCharts(points, undated); } finally {
    timings.chartDrawMax = Math.max(timings.chartDrawMax || 0, performance.now() - began);
  }
}

function drawBothCharts(points, undated) {
  const caption = $("charts-axis");
  if (!points.length) {
    drawChart($("chart-reason"), $("legend-reason"), points, [], null);
    drawChart($("chart-nation"), $("legend-nation"), points, [], null);
    say(caption, undated ? undated + " events with an unreadable time are not charted." : "", "muted");
    return;
  }
  const sorted = new Float64Array(points.length);
  for (let i = 0; i < points.length; i++) sorted[i] = points[i].t;
  sorted.sort();
  const axis = timeAxis(sorted);
  drawChart($("chart-reason"), $("legend-reason"), points,
    points.map((p) => p.altered ? ALTERED : p.decision + ": " + (p.reason || "(none)")), axis);
  drawChart($("chart-nation"), $("legend-nation"), points,
    points.map((p) => p.altered ? ALTERED : (p.nation || "(no nation)") + " " + p.decision), axis);
  say(caption, describeAxis(axis, sorted, undated), axis.earlier ? "warn-soft" : "muted");
  caption.dataset.earlier = String(axis.earlier);
  caption.dataset.width = String(axis.width);
}

async function loadCharts() {
  const gen = ++chartsGen;
  const params = filterQuery();
  params.set("order", "desc");
  params.set("limit", CHART_PAGE);
  const points = [];
  let read = 0, undated = 0, decided = 0, complete = false, pages = 0;
  const coverage = $("charts-coverage");
  say(coverage, "Reading events for the charts\u2026", "muted");
  while (read < CHART_CAP) {
    let page;
    try {
      page = await api("/v1/audit/events?" + params);
    } catch (e) {
      if (gen === chartsGen) say(coverage, "Charts stopped: " + e.message, "bad");
      return;
    }
    if (gen !== chartsGen) return;
    pages++;
    // An event whose fields no longer hash to its hash was edited: its decision is not trusted.
    page.events.forEach((e) => {
      read++;
      if (e.decision) decided++;
      const altered = toHex(leafHashSync(e)) !== e.hash;
      // Kept without a decision too: the whole-log check may yet find it at fault (drawCharts).
      const t = eventMillis(e.time);
      if (Number.isNaN(t)) undated++;
      else {
        points.push({ t, seq: e.seq, decision: e.decision, reason: e.reason, nation: e.nation, altered });
      }
    });
    complete = page.events.length < CHART_PAGE;
    if (pages === 1 || complete || pages % 5 === 0) {
      drawCharts(points, undated);
      mark("charts");
      say(coverage, (complete ? "All " : "So far the newest ") + read + " matching events read, " +
        decided + " with a decision" + (complete ? "." : "\u2026"), "muted");
    }
    if (complete) break;
    params.set("before", page.next_after);
  }
  if (!complete) {
    drawCharts(points, undated);
    say(coverage, "The newest " + read + " matching events only (the charts read at most " + CHART_CAP +
      "): narrow the filters to chart older ones. " + decided + " with a decision.", "warn");
  }
  mark("chartsComplete");
}

// -- failed sign-ins ----------------------------------------------------------------------

async function loadFailures() {
  const page = await api("/v1/audit/events?action=authenticate&decision=deny&order=desc&limit=" + PAGE);
  const body = $("failures").tBodies[0];
  body.textContent = "";
  shown.failures.clear();
  for (const event of page.events) {
    const d = event.details || {};
    const row = body.insertRow();
    row.dataset.seq = event.seq;
    const td = cell(row, "", "mark");
    cell(row, String(d.to || event.time).replace("T", " ").slice(0, 19));
    cell(row, d.source, "mono");
    cell(row, d.failures);
    const reasons = d.reasons && typeof d.reasons === "object"
      ? Object.entries(d.reasons).map(([k, v]) => k + " \u00d7" + v).join(", ") : event.reason;
    cell(row, reasons);
    cell(row, event.node ? event.node + " (" + (event.nation || "?") + ")" : "(no such token)");
    track("failures", td, event);
  }
  if (!page.events.length) {
    const td = cell(body.insertRow(), "no failed sign-ins recorded");
    td.colSpan = 6;
  }
}

// -- one report: metadata, who received what, every event ---------------------------------

let reportGen = 0;

function label(value) {
  if (!value || typeof value !== "object") return String(value);
  const parts = [String(value.classification || "?")];
  if (Array.isArray(value.releasable_to) && value.releasable_to.length) parts.push("REL TO " + value.releasable_to.join(", "));
  if (Array.isArray(value.caveats) && value.caveats.length) parts.push(value.caveats.join("/"));
  return parts.join(" // ");
}

function showMeta(meta) {
  const box = $("report-meta");
  box.textContent = "";
  fact(box, "Label", label(meta.label));
  fact(box, "Label (as published)", canonical(meta.label), "mono");
  fact(box, "Topics", meta.topics.length ? meta.topics.join(", ") : "none");
  fact(box, "Originator", meta.originator.node + " (" + meta.originator.nation + ")");
  fact(box, "Published", meta.created);
  fact(box, "Sequence", meta.sequence);
  if (meta.recalled) fact(box, "Recalled", meta.recalled, "warn");
  if (meta.erased) fact(box, "Erased", meta.erased, "warn");
  fact(box, "Payload SHA-256", meta.payload_sha256 === null ? "withheld: the report was erased" : meta.payload_sha256,
    meta.payload_sha256 === null ? "muted" : "mono");
  const sig = meta.signature;
  const text = !sig.present ? "unsigned (the originator had no Ed25519 key)"
    : sig.verified === true ? "signed; the broker reports it verifies against the originator's current key"
    : sig.verified === false ? "signed, but the broker reports it does NOT verify against the originator's current key"
    : "signed; the broker cannot check it: " + sig.detail;
  const dd = fact(box, "Signature", text, sig.verified === false ? "bad" : "muted");
  dd.id = "report-signature";
  if (sig.present && meta.payload_sha256 !== null) {
    const own = fact(box, "Signature, checked here", "checking\u2026", "muted");
    own.id = "report-signature-check";
    checkSignature(meta, own);
  }
}

// The originator's signature covers "alliance-broker/v1/sign\n" + canonical(label) + "\n" +
// hex(SHA-256(canonical(payload))): the payload's hash is enough, the payload is never needed.
async function checkSignature(meta, out) {
  const node = meta.originator.node;
  try {
    const keys = await api("/v1/nodes/" + encodeURIComponent(node));
    if (!keys.ed25519_public_key) {
      say(out, "not checked: the broker lists no Ed25519 key for " + node, "warn");
      return;
    }
    const message = utf8("alliance-broker/v1/sign\n" + canonical(meta.label) + "\n" + meta.payload_sha256);
    const key = await crypto.subtle.importKey("raw", fromB64(keys.ed25519_public_key), { name: "Ed25519" }, false, ["verify"]);
    const ok = await crypto.subtle.verify({ name: "Ed25519" }, key, fromB64(meta.signature.value), message);
    say(out, ok
      ? "verified in this browser against the key the broker lists for " + node + " \u2713"
      : "does NOT verify in this browser against the key the broker lists for " + node + " \u2717", ok ? "ok" : "bad");
  } catch (e) {
    say(out, "not checked: " + e.message, "warn");
  }
}

// The acts by which a node receives a report. A denial of one of these is a refusal of the
// report itself; a denial of anything else (a recall, say) is not, and is listed apart.
const RECEIVING = new Set(["read", "deliver"]);

function summarise(events) {
  const byNode = new Map();
  for (const e of events) {
    const who = e.node || e.actor || "(unknown)";
    if (!byNode.has(who)) {
      byNode.set(who, { nation: e.nation || "", publish: 0, deliver: 0, read: 0, deniedReceiving: 0, deniedOther: 0,
        reasons: new Map(), otherActs: new Map() });
    }
    const s = byNode.get(who);
    if (e.nation) s.nation = e.nation;
    if (e.decision === "allow" && (e.action === "publish" || e.action === "deliver" || e.action === "read")) s[e.action]++;
    if (e.decision === "deny") {
      if (RECEIVING.has(e.action)) s.deniedReceiving++;
      else {
        s.deniedOther++;
        s.otherActs.set(e.action, (s.otherActs.get(e.action) || 0) + 1);
      }
      const why = e.action + ": " + (e.reason || "?");
      s.reasons.set(why, (s.reasons.get(why) || 0) + 1);
    }
  }
  const body = $("report-recipients").tBodies[0];
  body.textContent = "";
  const received = [], refused = [], refusedOther = [];
  const order = [...byNode.entries()].sort((a, b) => (b[1].deliver + b[1].read) - (a[1].deliver + a[1].read) || (a[0] < b[0] ? -1 : 1));
  for (const [node, s] of order) {
    const row = body.insertRow();
    row.dataset.node = node;
    const got = s.deliver + s.read > 0;
    row.className = got ? "received" : s.deniedReceiving ? "refused" : "";
    if (got) received.push(node + " (" + s.nation + ")");
    if (s.deniedReceiving) refused.push(node + " (" + s.nation + ")");
    if (s.deniedOther) {
      refusedOther.push(node + " (" + s.nation + "): " +
        [...s.otherActs.entries()].map(([act, n]) => act + (n > 1 ? " \u00d7" + n : "")).join(", "));
    }
    cell(row, node, "mono");
    cell(row, s.nation);
    cell(row, s.publish || "");
    cell(row, s.deliver || "", s.deliver ? "allow" : "");
    cell(row, s.read || "", s.read ? "allow" : "");
    cell(row, s.deniedReceiving || "", s.deniedReceiving ? "deny" : "");
    cell(row, s.deniedOther || "", s.deniedOther ? "deny" : "");
    cell(row, [...s.reasons.entries()].map(([k, n]) => k + (n > 1 ? " \u00d7" + n : "")).join(", "));
  }
  const glance = $("report-glance");
  glance.textContent = "";
  const line = (list, cls, text) => {
    const p = document.createElement("p");
    p.dataset.list = list;
    p.className = cls;
    p.textContent = text;
    glance.appendChild(p);
  };
  line("received", "ok", "Received it (delivered or read): " + (received.length ? received.join(", ") : "nobody"));
  line("refused-receiving", refused.length ? "bad" : "muted",
    "Refused it (a read or a delivery denied): " + (refused.length ? refused.join(", ") : "nobody"));
  line("refused-other", refusedOther.length ? "warn" : "muted",
    "Refused other acts on it (a recall, \u2026; not a refusal of the report): " +
    (refusedOther.length ? refusedOther.join("; ") : "nobody"));
}

async function showReport(id) {
  const gen = ++reportGen;
  $("report-panel").hidden = false;
  $("report-id").textContent = id;
  $("report-meta").textContent = "";
  $("report-glance").textContent = "";
  $("report-error").textContent = "";
  $("report-recipients").tBodies[0].textContent = "";
  const body = $("report-events").tBodies[0];
  body.textContent = "";
  shown.report.clear();
  let loaded;
  chain.events = null;
  chain.faults = new Map();
  chain.ready = new Promise((resolve) => { loaded = resolve; });
  say($("report-chain"), "");
  $("report-chain").dataset.state = "pending";
  $("report-panel").scrollIntoView({ block: "start" });
  const progress = $("report-progress");
  const meta = api("/v1/audit/reports/" + encodeURIComponent(id)).then((m) => {
    if (gen === reportGen) showMeta(m);
  }, (e) => {
    if (gen === reportGen) {
      say($("report-error"), e.status === 404
        ? "No report is stored under this id: only its audit events are shown."
        : "Report metadata: " + e.message, "error");
    }
  });
  // Every page of the report's events, however many: no silent stop.
  const events = [];
  let cursor = null, pages = 0;
  for (;;) {
    const params = new URLSearchParams({ report: id, order: "desc", limit: String(CHART_PAGE) });
    if (cursor !== null) params.set("before", cursor);
    let page;
    try {
      page = await api("/v1/audit/events?" + params);
    } catch (e) {
      if (gen === reportGen) {
        say(progress, "stopped after " + events.length + " events: " + e.message, "bad");
        const why = { state: "unverified", why: "the report's events could not all be read, so the log around them was not checked" };
        chain.faults = new Map(events.map((event) => [event.seq, why]));
      }
      loaded();
      return;
    }
    if (gen !== reportGen) { loaded(); return; }
    pages++;
    events.push(...page.events);
    const rows = document.createDocumentFragment();
    for (const event of page.events) rows.appendChild(eventRow(event, "report", false));
    body.appendChild(rows);
    if (page.events.length < CHART_PAGE) break;
    cursor = page.next_after;
    say(progress, "(loading: " + events.length + " events so far, page " + pages + ")", "muted");
  }
  say(progress, "(all " + events.length + " events, newest first, read in " + pages + (pages === 1 ? " page)" : " pages)"), "muted");
  progress.dataset.complete = String(events.length);
  summarise(events);
  chain.events = events;
  checkReportChain(events, gen).then(loaded);
  await meta;
}

// -- the log around a report's events -----------------------------------------------------
//
// Each event shown verifies alone (its inclusion proof), so a report's event deleted from the
// database, or moved to another seq, would leave every remaining row verified. So the view also
// reads the log around its events: each event with its neighbours, stretches closer than
// CHAIN_GAP read as one, and CHAIN_GAP more before the first and after the last (up to the
// signed size). In a stretch every seq must be there, and each event's prev_hash must
// be the hash of the one before it; the stretch's last event is proven included in the signed
// checkpoint, and the links then vouch for every event before it. A missing seq or a broken
// link fails the report's rows on both sides of it.

const CHAIN_GAP = 1000;
const CHAIN_CAP = 20000; // at most this many events read around one report
const chain = { events: null, faults: new Map(), ready: Promise.resolve() };

async function readStretch(lo, hi) {
  const got = [];
  let after = lo - 1;
  while (after < hi) {
    const params = new URLSearchParams({ after: String(after), before: String(hi + 1), limit: String(CHART_PAGE) });
    const page = await api("/v1/audit/events?" + params);
    got.push(...page.events);
    if (page.events.length < CHART_PAGE) break;
    after = page.next_after;
  }
  return got;
}

// The faults in one stretch [lo, hi]: [{ from, to, why }] (seqs from..to are affected).
async function stretchFaults(lo, hi, cp) {
  const faults = [];
  const got = await readStretch(lo, hi);
  let expect = lo, prev = null;
  for (const event of got) {
    if (event.seq !== expect) {
      const span = expect === event.seq - 1 ? "seq " + expect : "seqs " + expect + "\u2013" + (event.seq - 1);
      faults.push({ from: expect - 1, to: event.seq, why: "the log has no event at " + span + " (removed or moved)" });
    } else if (prev && event.prev_hash !== toHex(await leafHash(prev))) {
      faults.push({ from: prev.seq, to: event.seq, why: "events " + prev.seq + " and " + event.seq +
        " do not chain: the prev_hash of " + event.seq + " is not the hash of " + prev.seq + " (altered)" });
    }
    prev = event;
    expect = event.seq + 1;
  }
  if (expect <= hi) {
    const span = expect === hi ? "seq " + hi : "seqs " + expect + "\u2013" + hi;
    faults.push({ from: expect - 1, to: hi + 1, why: "the log has no event at " + span + " (removed or moved)" });
  }
  if (prev && prev.seq === hi) {
    const anchor = await provenIncluded(prev, cp);
    if (!anchor.ok) faults.push({ from: hi, to: hi, why: "event " + hi + ", next to it in the log: " + anchor.why });
  }
  return faults;
}

async function checkReportChain(events, gen) {
  const out = $("report-chain");
  const cp = checkpoint;
  const faults = new Map();
  const settle = (text, cls, state) => {
    if (gen !== reportGen) return;
    chain.faults = faults;
    say(out, text, cls);
    out.dataset.state = state;
  };
  if (!cp || !cp.verified) {
    for (const event of events) faults.set(event.seq, { state: "unverified", why: "no verified checkpoint to check the log around it" });
    settle("The log around these events: not checked (no verified checkpoint).", "muted", "unverified");
    return;
  }
  const seqs = [...new Set(events.map((e) => e.seq))].filter((s) => s <= cp.size).sort((a, b) => a - b);
  const stretches = [];
  for (const s of seqs) {
    const lo = Math.max(1, s - 1), hi = Math.min(cp.size, s + 1);
    const last = stretches[stretches.length - 1];
    if (last && lo <= last.hi + CHAIN_GAP) last.hi = Math.max(last.hi, hi);
    else stretches.push({ lo, hi });
  }
  // And CHAIN_GAP events beyond the first and the last: an event of the report removed there
  // (its publication, its latest read) has no row of the report after or before it.
  if (stretches.length) {
    stretches[0].lo = Math.max(1, stretches[0].lo - CHAIN_GAP);
    const last = stretches[stretches.length - 1];
    last.hi = Math.min(cp.size, last.hi + CHAIN_GAP);
  }
  let budget = CHAIN_CAP, read = 0, skipped = 0, bad = 0;
  try {
    for (const { lo, hi } of stretches) {
      const mine = seqs.filter((s) => s >= lo && s <= hi);
      if (hi - lo + 1 > budget) {
        skipped += mine.length;
        for (const s of mine) faults.set(s, { state: "unverified", why: "the log around it was not read (over " + CHAIN_CAP + " events around this report)" });
        continue;
      }
      budget -= hi - lo + 1;
      read += hi - lo + 1;
      for (const fault of await stretchFaults(lo, hi, cp)) {
        bad++;
        // The report's rows inside the fault, and the nearest one on each side of it.
        const before = mine.filter((s) => s <= fault.from), after = mine.filter((s) => s >= fault.to);
        const hit = mine.filter((s) => s > fault.from && s < fault.to);
        if (before.length) hit.push(before[before.length - 1]);
        if (after.length) hit.push(after[0]);
        for (const s of hit) faults.set(s, { state: "failed", why: fault.why });
      }
      if (gen !== reportGen) return;
    }
  } catch (e) {
    for (const s of seqs) if (!faults.has(s)) faults.set(s, { state: "unverified", why: "the log around it could not be read: " + e.message });
    settle("The log around these events: NOT checked (" + e.message + ").", "bad", "unverified");
    return;
  }
  if (bad) {
    settle("The log around these events is NOT whole: " + bad + (bad === 1 ? " fault" : " faults") + " in " + read +
      " events read; the rows next to them are marked \u2717 (hover for which).", "bad", "failed");
  } else {
    settle("The log around these events (" + read + " events read, up to the signed size " + cp.size + ") is whole: " +
      "no seq missing, every link holds" + (skipped ? "; " + skipped + " events not checked (too far apart)" : "") + ".",
      skipped ? "warn" : "ok", skipped ? "unverified" : "verified");
  }
}

// -- signing in and out -------------------------------------------------------------------

async function start() {
  say($("signin-error"), "", "error");
  let me;
  try {
    me = await api("/v1/audit/whoami");
  } catch (e) {
    say($("signin-error"), "Sign-in failed: " + e.message, "error");
    token = "";
    sessionStorage.removeItem("auditToken");
    return;
  }
  sessionStorage.setItem("auditToken", token);
  $("token").value = "";
  $("signin-panel").hidden = true;
  for (const id of ["checkpoint-panel", "failures-panel", "charts-panel", "events-panel", "signout"]) $(id).hidden = false;
  $("who").textContent = "Signed in as " + me.id + " (" + me.nation + ")";
  $("who").title = "roles: " + me.roles.join(", ");
  await loadPin();
  await loadWitnesses();
  banner("unverified", "Not yet verified: loading the signed checkpoint\u2026");
  const linked = reportInLocation();
  if (linked) showReport(linked);
  const failed = (what) => (e) => say($("page-error"), what + ": " + e.message, "error");
  await Promise.all([
    loadEvents(true),
    loadCharts(),
    loadCheckpoint(false),
    loadFailures().catch(failed("Failed sign-ins")),
    showAnnouncedKey(),
  ]);
}

$("signin").addEventListener("submit", (ev) => {
  ev.preventDefault();
  timings.start = performance.now();
  for (const k of Object.keys(timings)) if (k !== "start") delete timings[k];
  token = $("token").value.trim();
  start();
});

$("filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  loadEvents(true).then((ok) => { if (ok) loadCharts(); });
});

$("clear-filters").addEventListener("click", () => {
  for (const el of $("filters").elements) if (el.name) el.value = "";
  loadEvents(true).then((ok) => { if (ok) loadCharts(); });
});

$("older").addEventListener("click", () => loadEvents(false));

$("pin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const parsed = await parsePin($("pin-input").value);
    localStorage.setItem(PIN_KEY, parsed.text);
    $("pin-input").value = "";
    say($("page-error"), "", "error");
  } catch (e) {
    say($("page-error"), "That is not a checkpoint key: " + e.message, "error");
    return;
  }
  await loadPin();
  await showAnnouncedKey();
  await loadCheckpoint(false);
});

$("witness-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const vkeys = $("witness-input").value.split("\n").map((l) => l.trim()).filter((l) => l);
  const quorum = Number($("quorum-input").value);
  try {
    const names = new Set();
    for (const vkey of vkeys) {
      const key = await parseWitness(vkey);
      if (names.has(key.name)) throw new Error(key.name + " is pinned twice");
      names.add(key.name);
    }
    if (!Number.isInteger(quorum) || quorum < 0 || quorum > vkeys.length) {
      throw new Error("the quorum must be 0 to " + vkeys.length + ", the number of witness keys");
    }
    localStorage.setItem(WITNESS_KEY, JSON.stringify({ vkeys, quorum }));
    say($("page-error"), "", "error");
  } catch (e) {
    say($("page-error"), "Witness keys not pinned: " + e.message, "error");
    return;
  }
  await loadWitnesses();
  await loadCheckpoint(false);
});

$("unpin").addEventListener("click", async () => {
  localStorage.removeItem(PIN_KEY);
  localStorage.removeItem(SEEN_KEY);
  await loadPin();
  await showAnnouncedKey();
  await loadCheckpoint(false);
});

$("sign-checkpoint").addEventListener("click", () => loadCheckpoint(true));
$("reverify-log").addEventListener("click", () => {
  verifyWholeLog(checkpoint, $("consistency-verdict").dataset.state === "failed" ? $("consistency-verdict").textContent : null, true);
});
// The table from the first bad event down, with no filter that could hide it.
$("show-first-bad").addEventListener("click", () => {
  const seq = Number($("log-verdict").dataset.firstBad);
  for (const el of $("filters").elements) if (el.name) el.value = "";
  loadEvents(true, seq).then((ok) => {
    if (ok) $("events-panel").scrollIntoView({ block: "start" });
    if (ok) loadCharts();
  });
});
window.addEventListener("hashchange", () => {
  const id = reportInLocation();
  if (id && token && !$("events-panel").hidden) showReport(id);
});
$("reload-checkpoint").addEventListener("click", () => loadCheckpoint(false));
$("close-report").addEventListener("click", () => {
  reportGen++;
  $("report-panel").hidden = true;
  shown.report.clear();
  if (reportInLocation()) history.pushState(null, "", location.pathname + location.search);
});
$("signout").addEventListener("click", () => {
  token = "";
  sessionStorage.removeItem("auditToken");
  location.reload();
});

if (token) {
  timings.start = performance.now();
  start();
}
