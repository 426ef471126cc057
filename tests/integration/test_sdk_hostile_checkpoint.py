"""A hostile broker against ``BrokerClient.witnessed_checkpoint``: the checkpoint it returns is
"returned only if verify_witnessed holds", so every field it returns beside the note (size, head,
root) must say what the verified note says; a broker that serves a genuine witnessed note next to
other numbers must be refused, not believed, and so must a note of another log signed with the
same key (its origin is not the pinned key's name)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broker.client import BrokerClient, WitnessError, verify_witnessed
from broker.crypto import cosignature, notes

ORIGIN = "broker.example/audit"
OTHER = "other-broker.example/audit"
WITNESS = "witness.fra.example/w1"
STAMP = 1_700_000_000


class _Log:
    """A log key and a witness key, signing and cosigning checkpoints as a broker and its
    witness would; ``vkey`` is the log's vkey (named ORIGIN) an auditor pins."""

    def __init__(self) -> None:
        self.private, self.witness_private = secrets.token_bytes(32), secrets.token_bytes(32)
        self.vkey = notes.vkey(ORIGIN, notes.public_key(self.private))
        self.witness_vkey = cosignature.cosigner_vkey(WITNESS, notes.public_key(self.witness_private))

    def note(self, size: int, root: bytes, *, origin: str = ORIGIN, signer: str | None = None) -> str:
        """A witnessed note; ``origin`` and ``signer`` (the name on the log's signature line,
        the origin unless given): another log's, with the same key."""
        body = notes.CheckpointBody(origin=origin, size=size, root=root)
        note, _ = notes.sign(body, name=signer or origin, private_key=self.private)
        return note + cosignature.cosign(
            body.text(), name=WITNESS, private_key=self.witness_private, timestamp=STAMP
        )


def _witnessed_note(size: int, root: bytes) -> tuple[str, str, str]:
    """A checkpoint note signed by a log key and cosigned by one witness; its log and witness vkeys."""
    log = _Log()
    return log.note(size, root), log.vkey, log.witness_vkey


@asynccontextmanager
async def _hostile(served: object) -> AsyncIterator[str]:
    async def latest(_request: web.Request) -> web.Response:
        return web.json_response(served)

    app = web.Application()
    app.router.add_get("/v1/audit/checkpoints/latest", latest)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def _record(note: str, *, size: int, root: bytes) -> dict[str, Any]:
    return {
        "size": size,
        "head": root.hex(),
        "root": root.hex(),
        "signature": "",
        "origin": ORIGIN,
        "note": note,
        "cosigners": [{"name": WITNESS, "timestamp": 1_700_000_000}],
    }


async def _fetch(served: object, log_vkey: str, witness_vkey: str) -> dict[str, Any]:
    async with _hostile(served) as url, BrokerClient(url, "token") as client:
        return await client.witnessed_checkpoint(log_key=log_vkey, witnesses=[witness_vkey], quorum_size=1)


async def test_an_honest_witnessed_checkpoint_is_returned() -> None:
    root = secrets.token_bytes(32)
    note, log_vkey, witness_vkey = _witnessed_note(5, root)
    held = await _fetch(_record(note, size=5, root=root), log_vkey, witness_vkey)
    assert held["size"] == 5 and held["root"] == root.hex()


@pytest.mark.parametrize("field", ["size", "head", "root", "origin"])
async def test_fields_beside_the_witnessed_note_must_agree_with_it(field: str) -> None:
    root, other = secrets.token_bytes(32), secrets.token_bytes(32)
    note, log_vkey, witness_vkey = _witnessed_note(5, root)
    served = _record(note, size=5, root=root)
    served[field] = {"size": 9, "origin": "other.example/audit"}.get(field, other.hex())
    with pytest.raises(WitnessError, match=field):
        await _fetch(served, log_vkey, witness_vkey)


async def test_a_root_in_base64_that_agrees_is_accepted() -> None:
    root = secrets.token_bytes(32)
    note, log_vkey, witness_vkey = _witnessed_note(5, root)
    served = _record(note, size=5, root=root)
    served["root"] = base64.b64encode(root).decode()
    assert (await _fetch(served, log_vkey, witness_vkey))["size"] == 5


async def test_cosigners_are_the_ones_that_verified() -> None:
    root = secrets.token_bytes(32)
    note, log_vkey, witness_vkey = _witnessed_note(5, root)
    served = _record(note, size=5, root=root)
    served["cosigners"] = [*served["cosigners"], {"name": "witness.deu.example/w2", "timestamp": 1}]
    held = await _fetch(served, log_vkey, witness_vkey)
    assert held["cosigners"] == [{"name": WITNESS, "timestamp": 1_700_000_000}]


async def test_an_answer_that_is_not_an_object_is_a_witness_error() -> None:
    _note, log_vkey, witness_vkey = _witnessed_note(5, secrets.token_bytes(32))
    with pytest.raises(WitnessError):
        await _fetch(["not", "a", "checkpoint"], log_vkey, witness_vkey)


@pytest.mark.parametrize("signer", [OTHER, ORIGIN])
async def test_a_note_of_another_log_with_the_same_key_is_refused(signer: str) -> None:
    """The note's origin names another log (signed with the pinned key under that log's name,
    or under the pinned name): it is no checkpoint of the pinned log, witnessed or not."""
    log, root = _Log(), secrets.token_bytes(32)
    note = log.note(5, root, origin=OTHER, signer=signer)
    served = {**_record(note, size=5, root=root), "origin": OTHER}
    with pytest.raises(WitnessError, match=f"origin {OTHER!r} is not {ORIGIN!r}"):
        await _fetch(served, log.vkey, log.witness_vkey)
    with pytest.raises(WitnessError, match="origin"):
        verify_witnessed(note, log_key=log.vkey, witnesses=[log.witness_vkey], quorum_size=1)
