"""A checkpoint's signature lines, repeated: anyone holding one public log-signed checkpoint can
copy its signature line hundreds of times into a 64 KiB body. The witness must not verify the
same signature again for each copy (Ed25519 work on the event loop, hundreds of times what one
request costs) nor keep the copies in the note it stores and serves to monitors (Go's
signed-note reader refuses a note of more than 100 signatures as malformed)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.crypto import notes
from broker.witness import server
from tests.integration import c2sp, witnesses
from tests.integration.witness_log import Tree

ORIGIN = "log.example/dup"
TREE = Tree([bytes([i]) for i in range(8)])


class _Counting:
    """Stands in for Ed25519PublicKey in broker.crypto.notes: counts verifications."""

    calls = 0

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    @classmethod
    def from_public_bytes(cls, data: bytes) -> _Counting:
        return cls(Ed25519PublicKey.from_public_bytes(data))

    def verify(self, signature: bytes, data: bytes) -> None:
        type(self).calls += 1
        self._key.verify(signature, data)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, c2sp.Log, aiohttp.ClientSession]]:
    async with witnesses.in_process(tmp_path / "w", ORIGIN) as served:
        yield served


def _variants(line: str) -> list[str]:
    """The line and the other base64 spellings of the same bytes (the last character before the
    padding carries two bits no decoder reads)."""
    dash, name, encoded = line.rstrip("\n").split(" ")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    at = encoded.rstrip("=")
    last = alphabet.index(at[-1]) & ~0b11
    spellings = [at[:-1] + alphabet[last | low] + encoded[len(at) :] for low in range(4)]
    raw = base64.b64decode(encoded)
    assert all(base64.b64decode(s, validate=True) == raw for s in spellings)
    return [f"{dash} {name} {s}\n" for s in spellings]


async def test_copies_of_a_public_signature_line_are_verified_and_kept_once(
    served: tuple[str, c2sp.Log, aiohttp.ClientSession], monkeypatch: Any
) -> None:
    url, log, session = served
    note = log.checkpoint(5, TREE.root(5))
    async with session.post(f"{url}/add-checkpoint", data=c2sp.add_checkpoint_body(0, [], note)) as resp:
        assert resp.status == 200
    # A stranger replays the public checkpoint (same size, same root: cosigned again, as the
    # specification has it) with its one line copied until the body is near 64 KiB.
    text, lines = c2sp.split_note(note)
    copies = [v for _ in range(140) for v in _variants(lines[0] + "\n")]
    body = c2sp.add_checkpoint_body(5, [], text + "\n" + "".join(copies))
    assert len(body) < server.MAX_BODY_BYTES and len(copies) == 560
    monkeypatch.setattr(notes, "Ed25519PublicKey", _Counting)
    async with session.post(f"{url}/add-checkpoint", data=body) as resp:
        assert resp.status == 200
    assert _Counting.calls <= 2, f"{_Counting.calls} Ed25519 verifications for one signature"
    path = hashlib.sha256(ORIGIN.encode()).hexdigest()
    async with session.get(f"{url}/{path}/checkpoint") as resp:
        served_note = await resp.text()
    _, kept = c2sp.split_note(served_note)
    assert [line for line in kept if line.split(" ")[1] == ORIGIN] == [lines[0]]
    assert len(kept) == 2  # the log's line and the witness's cosignature
