// The auditor page: plain DOM, no build step. The token stays in this tab's sessionStorage.
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("auditToken") || "";
let cursor = 0;

async function api(path) {
  const resp = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.detail || resp.statusText);
  return body;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fromB64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

async function verifyNote(note, publicKeyB64) {
  // C2SP signed note: the signature covers the text before the blank line (newline included).
  const cut = note.indexOf("\n\n");
  const text = new TextEncoder().encode(note.slice(0, cut + 1));
  const stamp = fromB64(note.trim().split(" ").pop());
  const key = await crypto.subtle.importKey("raw", fromB64(publicKeyB64), { name: "Ed25519" }, false, ["verify"]);
  return crypto.subtle.verify({ name: "Ed25519" }, key, stamp.slice(4), text);
}

async function showCheckpoint() {
  const [cp, key] = await Promise.all([api("/v1/audit/checkpoints/latest"),
    fetch("/.well-known/alliance-broker/checkpoint-key").then((r) => r.json())]);
  const box = $("checkpoint");
  box.textContent = "";
  const lines = [["Events covered", cp.size], ["Merkle root", cp.head], ["Signed at", cp.time],
    ["Key", key.vkey]];
  for (const [name, value] of lines) {
    const p = document.createElement("div");
    p.innerHTML = "<b></b> <span class='mono'></span>";
    p.firstChild.textContent = name + ":";
    p.lastChild.textContent = value;
    box.appendChild(p);
  }
  const verdict = document.createElement("div");
  verdict.id = "checkpoint-verdict";
  let valid = false;
  try { valid = await verifyNote(cp.note, key.public_key); } catch (e) { verdict.title = String(e); }
  verdict.textContent = valid ? "Signature verified in this browser \u2713" : "Signature NOT verified";
  verdict.className = valid ? "ok" : "bad";
  box.appendChild(verdict);
}

function filterQuery() {
  const params = new URLSearchParams();
  for (const el of $("filters").elements) {
    if (el.name && el.value) params.set(el.name, el.value);
  }
  return params;
}

async function loadEvents(reset) {
  if (reset) { cursor = 0; $("events").tBodies[0].textContent = ""; }
  const params = filterQuery();
  params.set("after", cursor);
  params.set("limit", 100);
  const page = await api("/v1/audit/events?" + params);
  const body = $("events").tBodies[0];
  for (const e of page.events) {
    const row = document.createElement("tr");
    for (const key of ["seq", "time", "actor", "action"]) cell(row, e[key]);
    const rep = cell(row, e.report ? e.report.slice(0, 8) + "\u2026" : "");
    if (e.report) {
      rep.className = "report";
      rep.title = e.report;
      rep.onclick = () => showReport(e.report);
    }
    for (const key of ["node", "nation"]) cell(row, e[key]);
    cell(row, e.decision, e.decision || "");
    cell(row, e.reason);
    body.appendChild(row);
  }
  cursor = page.next_after;
}

async function showReport(id) {
  const page = await api("/v1/audit/events?limit=1000&report=" + encodeURIComponent(id));
  $("report-panel").hidden = false;
  $("report-id").textContent = id;
  const box = $("report-summary");
  box.textContent = "";
  const groups = [
    ["Published", (e) => e.action === "publish" && e.decision === "allow"],
    ["Received (delivered or read)", (e) => ["deliver", "read"].includes(e.action) && e.decision === "allow"],
    ["Refused", (e) => e.decision === "deny"],
    ["Recalled or erased", (e) => ["recall", "erase"].includes(e.action) && e.decision === "allow"],
  ];
  for (const [title, test] of groups) {
    const h = document.createElement("h3");
    h.textContent = title;
    box.appendChild(h);
    const table = document.createElement("table");
    table.className = "report-" + title.split(" ")[0].toLowerCase();
    for (const e of page.events.filter(test)) {
      const row = table.insertRow();
      for (const v of [e.time, e.node || e.actor, e.nation, e.action, e.reason]) cell(row, v);
    }
    if (!table.rows.length) cell(table.insertRow(), "none");
    box.appendChild(table);
  }
}

async function start() {
  $("error").textContent = "";
  try {
    await showCheckpoint();
  } catch (e) {
    $("error").textContent = "Sign-in failed: " + e.message;
    sessionStorage.removeItem("auditToken");
    return;
  }
  $("signin-panel").hidden = true;
  for (const id of ["checkpoint-panel", "events-panel", "signout"]) $(id).hidden = false;
  $("who").textContent = "signed in";
  await loadEvents(true);
}

$("signin").onsubmit = (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("auditToken", token);
  start();
};
$("filters").onsubmit = (ev) => { ev.preventDefault(); loadEvents(true).catch((e) => { $("error").textContent = e.message; }); };
$("more").onclick = () => loadEvents(false);
$("signout").onclick = () => { sessionStorage.removeItem("auditToken"); location.reload(); };
if (token) start();
