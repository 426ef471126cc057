"""A hostile broker against ``BrokerClient.witnessed_checkpoint``: the checkpoint it returns is
"returned only if verify_witnessed holds", so every field it returns beside the note (size, head,
root) must say what the verified note says; a broker that serves a genuine witnessed note next to
other numbers must be refused, not believed, and so must a note of another log signed with the
same key (its origin is not the pinned key's name).

A client remembers the largest checkpoint it verified: a broker that later serves an older one
(a rollback), another root at the same size, or a larger one that its consistency proof does not
join to the one remembered (a fork) is refused; an auditor saves the remembered note and seeds the
next client with it. The same client against a real broker checks its growing log by the
broker's own consistency proofs."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broker.client import ApiError, BrokerClient, WitnessError, verify_witnessed
from broker.crypto import cosignature, merkle, notes
from tests.integration.conftest import Api
from tests.integration.helpers import body

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


@dataclass
class _Broker:
    """What the hostile broker answers: its latest checkpoint (a test changes it between calls),
    and its consistency proofs by (first, second) sizes (None: it has none, 404); ``asked``: the
    proofs it was asked for."""

    latest: object
    proofs: Callable[[int, int], object] | None = None
    asked: list[tuple[int, int]] = field(default_factory=list)


@asynccontextmanager
async def _hostile(broker: _Broker) -> AsyncIterator[str]:
    async def latest(_request: web.Request) -> web.Response:
        return web.json_response(broker.latest)

    async def consistency(request: web.Request) -> web.Response:
        first, second = int(request.query["first"]), int(request.query["second"])
        broker.asked.append((first, second))
        if broker.proofs is None:
            return web.json_response({"type": "urn:alliance-broker:not_found", "status": 404}, status=404)
        return web.json_response(broker.proofs(first, second))

    app = web.Application()
    app.router.add_get("/v1/audit/checkpoints/latest", latest)
    app.router.add_get("/v1/audit/proofs/consistency", consistency)
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
    async with _hostile(_Broker(served)) as url, BrokerClient(url, "token") as client:
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


# -- what a client remembers: rollbacks and forks ------------------------------------------------


class _Tree:
    """An RFC 6962 tree of ``size`` random leaves: the roots of its prefixes, and consistency
    proofs between them as an honest broker serves them (``GET /v1/audit/proofs/consistency``)."""

    def __init__(self, size: int) -> None:
        leaves = [merkle.hash_leaf(secrets.token_bytes(8)) for _ in range(size)]
        self.nodes = {(level, index): digest for level, index, digest in merkle.append([], leaves, 0)[1]}

    def root(self, size: int) -> bytes:
        return merkle.range_root(0, size, self.nodes)

    def proof(self, first: int, second: int) -> dict[str, Any]:
        ranges = merkle.consistency_ranges(first, second)
        return {
            "first": first,
            "second": second,
            "first_root": self.root(first).hex(),
            "second_root": self.root(second).hex(),
            "path": [merkle.range_root(lo, hi, self.nodes).hex() for lo, hi in ranges],
        }


def _served(log: _Log, size: int, root: bytes) -> dict[str, Any]:
    return _record(log.note(size, root), size=size, root=root)


async def _check(client: BrokerClient, log: _Log) -> dict[str, Any]:
    return await client.witnessed_checkpoint(log_key=log.vkey, witnesses=[log.witness_vkey], quorum_size=1)


async def test_an_older_checkpoint_after_a_newer_one_is_a_rollback() -> None:
    log, tree = _Log(), _Tree(8)
    broker = _Broker(_served(log, 8, tree.root(8)), proofs=tree.proof)
    async with _hostile(broker) as url, BrokerClient(url, "token") as client:
        assert (await _check(client, log))["size"] == 8
        broker.latest = _served(log, 5, tree.root(5))  # genuine and witnessed, but older
        with pytest.raises(WitnessError, match=r"rollback: .* size 5, smaller than .* size 8"):
            await _check(client, log)


async def test_another_root_at_a_size_already_verified_is_a_fork() -> None:
    log, root, other = _Log(), secrets.token_bytes(32), secrets.token_bytes(32)
    broker = _Broker(_served(log, 5, root))
    async with _hostile(broker) as url, BrokerClient(url, "token") as client:
        await _check(client, log)
        broker.latest = _served(log, 5, other)
        with pytest.raises(WitnessError, match=f"fork: .* size 5 has root {other.hex()}"):
            await _check(client, log)
        broker.latest = _served(log, 5, root)
        assert (await _check(client, log))["size"] == 5  # the one verified: no proof needed
    assert broker.asked == []


async def test_a_larger_checkpoint_is_taken_once_a_consistency_proof_joins_it() -> None:
    log, tree = _Log(), _Tree(13)
    broker = _Broker(_served(log, 5, tree.root(5)), proofs=tree.proof)
    async with _hostile(broker) as url, BrokerClient(url, "token") as client:
        await _check(client, log)
        broker.latest = _served(log, 13, tree.root(13))
        assert (await _check(client, log))["size"] == 13
        assert broker.asked == [(5, 13)]


async def test_a_larger_checkpoint_of_another_history_is_a_fork() -> None:
    """The broker's proof is honest for the history it now serves, which does not start with
    the checkpoint the client verified: no proof can join them."""
    log, tree, forked = _Log(), _Tree(13), _Tree(13)
    broker = _Broker(_served(log, 5, tree.root(5)), proofs=forked.proof)
    async with _hostile(broker) as url, BrokerClient(url, "token") as client:
        await _check(client, log)
        broker.latest = _served(log, 13, forked.root(13))
        with pytest.raises(WitnessError, match=r"fork: the checkpoint at size 13 does not extend .* size 5"):
            await _check(client, log)


@pytest.mark.parametrize("answer", [{"path": ["zz"]}, {"path": "00"}, ["not", "a", "proof"], {}])
async def test_a_malformed_consistency_proof_is_refused(answer: object) -> None:
    log, tree = _Log(), _Tree(13)
    broker = _Broker(_served(log, 5, tree.root(5)), proofs=lambda _first, _second: answer)
    async with _hostile(broker) as url, BrokerClient(url, "token") as client:
        await _check(client, log)
        broker.latest = _served(log, 13, tree.root(13))
        with pytest.raises(WitnessError, match="consistency proof"):
            await _check(client, log)


async def test_the_remembered_checkpoint_is_read_and_seeds_the_next_client() -> None:
    log, tree = _Log(), _Tree(13)
    broker = _Broker(_served(log, 8, tree.root(8)), proofs=tree.proof)
    async with _hostile(broker) as url:
        async with BrokerClient(url, "token") as first:
            assert first.trusted_checkpoint is None
            saved = (await _check(first, log))["note"]
            assert first.trusted_checkpoint == saved
        broker.latest = _served(log, 5, tree.root(5))
        async with BrokerClient(url, "token", trusted_checkpoint=saved) as later:
            with pytest.raises(WitnessError, match="rollback"):
                await _check(later, log)
            assert later.trusted_checkpoint == saved
            broker.latest = _served(log, 13, tree.root(13))
            grown = await _check(later, log)
            assert later.trusted_checkpoint == grown["note"] and broker.asked == [(8, 13)]
        broker.proofs = None  # a broker that gives no proof: the larger checkpoint is not taken
        async with BrokerClient(url, "token", trusted_checkpoint=saved) as refused:
            with pytest.raises(ApiError):
                await _check(refused, log)
            assert refused.trusted_checkpoint == saved


@pytest.mark.parametrize("seed", ["another key", "another origin"])
async def test_a_seed_that_is_not_a_checkpoint_of_this_log_is_refused(seed: str) -> None:
    log, root = _Log(), secrets.token_bytes(32)
    saved = _Log().note(5, root) if seed == "another key" else log.note(5, root, origin=OTHER)
    served = _Broker(_served(log, 5, root))
    async with _hostile(served) as url, BrokerClient(url, "token", trusted_checkpoint=saved) as client:
        with pytest.raises(WitnessError, match="trusted checkpoint is not one of the log"):
            await _check(client, log)


def test_a_seed_that_is_no_checkpoint_note_is_refused_at_once() -> None:
    with pytest.raises(WitnessError, match="trusted checkpoint"):
        BrokerClient("http://127.0.0.1:1", "token", trusted_checkpoint="size 5, trust me\n")


async def _sign(api: Api, auditor: str) -> int:
    status, checkpoint = await api.call("POST", "/v1/audit/checkpoints", auditor)
    assert status == 201, checkpoint
    return int(checkpoint["size"])


async def test_a_real_brokers_growing_log_is_followed_by_its_consistency_proofs(api: Api) -> None:
    auditor = await api.node("usa-aud", "USA", roles=("audit",))
    publisher = await api.node("usa-pub", "USA")
    status, key = await api.get("/.well-known/alliance-broker/checkpoint-key")
    assert status == 200
    log_key = str(key["vkey"])
    first_size = await _sign(api, auditor)
    async with BrokerClient(api.base_url, auditor) as client:
        first = await client.witnessed_checkpoint(log_key=log_key, witnesses=[], quorum_size=0)
        assert first["size"] == first_size
        for _ in range(3):
            assert (await api.publish(publisher, body()))[0] == 201
        second_size = await _sign(api, auditor)
        second = await client.witnessed_checkpoint(log_key=log_key, witnesses=[], quorum_size=0)
        assert second["size"] == second_size > first_size
        assert client.trusted_checkpoint == second["note"]
    async with BrokerClient(api.base_url, auditor, trusted_checkpoint=first["note"]) as later:
        again = await later.witnessed_checkpoint(log_key=log_key, witnesses=[], quorum_size=0)
        assert again["size"] >= second_size and later.trusted_checkpoint == again["note"]
