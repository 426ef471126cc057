"""An independent implementation of the C2SP formats, written from the specifications
(signed-note, tlog-checkpoint, tlog-cosignature, tlog-witness) with hashlib and cryptography
only, never broker.crypto: the tests check the broker's notes and its witnesses' cosignature
lines with it, and ``ReferenceWitness`` is a second witness implementation the broker must
interoperate with."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

DASH = "\u2014"


def key_id(name: str, kind: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


def parse_vkey(vkey: str) -> tuple[str, int, bytes]:
    name, kid, encoded = vkey.split("+", 2)
    raw = base64.b64decode(encoded)
    assert key_id(name, raw[0], raw[1:]).hex() == kid
    return name, raw[0], raw[1:]


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """The signed text (ending in a newline) and the signature lines as (name, raw bytes)."""
    text, _, block = note.partition("\n\n")
    lines = [line for line in block.split("\n") if line]
    sigs = []
    for line in lines:
        dash, name, b64 = line.split(" ")
        assert dash == DASH
        sigs.append((name, base64.b64decode(b64)))
    return text + "\n", sigs


def log_signed(note: str, log_vkey: str) -> bool:
    name, kind, public = parse_vkey(log_vkey)
    assert kind == 0x01
    text, sigs = split_note(note)
    for signer, raw in sigs:
        if signer == name and raw[:4] == key_id(name, 0x01, public):
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(raw[4:], text.encode())
            except InvalidSignature:
                return False
            return True
    return False


def cosigned_by(note: str, witness_vkey: str) -> int | None:
    """The timestamp of a valid Ed25519 cosignature (type 0x04) by the witness, else None."""
    name, kind, public = parse_vkey(witness_vkey)
    assert kind == 0x04
    text, sigs = split_note(note)
    for signer, raw in sigs:
        if signer != name or raw[:4] != key_id(name, 0x04, public) or len(raw) != 76:
            continue
        (stamp,) = struct.unpack(">Q", raw[4:12])
        message = f"cosignature/v1\ntime {stamp}\n".encode() + text.encode()
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], message)
        except InvalidSignature:
            return None
        return int(stamp)
    return None


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def consistent(first: int, second: int, first_hash: bytes, second_hash: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2, as written there."""
    if first == second:
        return not proof and first_hash == second_hash
    if first == 0:
        return not proof
    if first > second or not proof:
        return False
    if first & (first - 1) == 0:
        proof = [first_hash, *proof]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_hash and sr == second_hash


@dataclass
class ReferenceWitness:
    """A tlog-witness add-checkpoint endpoint, from the specification (state in memory)."""

    name: str
    log_vkey: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    state: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    answers: list[int] = field(default_factory=list)

    @property
    def vkey(self) -> str:
        public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        encoded = base64.b64encode(b"\x04" + public).decode()
        return f"{self.name}+{key_id(self.name, 0x04, public).hex()}+{encoded}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/add-checkpoint", self.add_checkpoint)
        return app

    async def add_checkpoint(self, request: web.Request) -> web.Response:
        answer = self._answer((await request.read()).decode())
        self.answers.append(answer.status)
        return answer

    def _answer(self, body: str) -> web.Response:
        head, _, note = body.partition("\n\n")
        lines = head.split("\n")
        old = int(lines[0].removeprefix("old "))
        proof = [base64.b64decode(line) for line in lines[1:]]
        text, _ = split_note(note)
        origin, size_line, root_line = text.split("\n")[:3]
        size, root = int(size_line), base64.b64decode(root_line)
        log_name = self.log_vkey.split("+", 1)[0]
        if origin != log_name:
            return web.Response(status=404)
        if not log_signed(note, self.log_vkey):
            return web.Response(status=403)
        if old > size:
            return web.Response(status=400)
        held_size, held_root = self.state.get(origin, (0, hashlib.sha256(b"").digest()))
        if old != held_size or (old == size and root != held_root):  # both 409 in tlog-witness
            return web.Response(status=409, text=f"{held_size}\n", content_type="text/x.tlog.size")
        if (old == 0 and proof) or not consistent(old, size, held_root, root, proof):
            return web.Response(status=422)
        self.state[origin] = (size, root)
        stamp = int(time.time())
        signature = self.key.sign(f"cosignature/v1\ntime {stamp}\n".encode() + text.encode())
        public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        raw = key_id(self.name, 0x04, public) + struct.pack(">Q", stamp) + signature
        return web.Response(text=f"{DASH} {self.name} {base64.b64encode(raw).decode()}\n")
