"""A hostile broker against ``BrokerClient.witnessed_checkpoint``: the checkpoint it returns is
"returned only if verify_witnessed holds", so every field it returns beside the note (size, head,
root) must say what the verified note says; a broker that serves a genuine witnessed note next to
other numbers must be refused, not believed."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broker.client import BrokerClient, WitnessError
from broker.crypto import cosignature, notes

ORIGIN = "broker.example/audit"
WITNESS = "witness.fra.example/w1"


def _witnessed_note(size: int, root: bytes) -> tuple[str, str, str]:
    """A checkpoint note signed by a log key and cosigned by one witness; its log and witness vkeys."""
    log_private, witness_private = secrets.token_bytes(32), secrets.token_bytes(32)
    body = notes.CheckpointBody(origin=ORIGIN, size=size, root=root)
    note, _ = notes.sign(body, name=ORIGIN, private_key=log_private)
    stamp = 1_700_000_000
    note += cosignature.cosign(body.text(), name=WITNESS, private_key=witness_private, timestamp=stamp)
    log_vkey = notes.vkey(ORIGIN, notes.public_key(log_private))
    witness_vkey = cosignature.cosigner_vkey(WITNESS, notes.public_key(witness_private))
    return note, log_vkey, witness_vkey


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
