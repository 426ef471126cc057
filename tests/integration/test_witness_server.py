"""The witness's add-checkpoint (C2SP tlog-witness) through a real server on 127.0.0.1: every
status the specification names, answers checked with the independent C2SP reading in c2sp.py,
state unchanged by every refusal, and the refused log-signed checkpoints kept as evidence."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from broker.cli import main
from broker.crypto.cosignature import NOTE_TYPE, parse_vkey
from broker.witness import directory, protocol, server
from tests.integration import c2sp
from tests.integration.witness_log import EMPTY_ROOT, Tree, forked_trees

NAME = "witness.example/w1"
ORIGIN = "log.example/a"
OTHER = "log.example/b"  # a second log this witness accepts, never cosigned before a test


@dataclass
class Harness:
    url: str
    folder: Path
    session: aiohttp.ClientSession
    log: c2sp.Log
    other: c2sp.Log
    tree: Tree
    fork: Tree
    public: bytes
    running: server.Witness

    async def post(self, body: bytes) -> tuple[int, str, bytes]:
        async with self.session.post(f"{self.url}/add-checkpoint", data=body) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()

    async def submit(self, old: int, new: int, *, tree: Tree | None = None) -> tuple[int, str, bytes]:
        tree = tree or self.tree
        note = self.log.checkpoint(new, tree.root(new))
        return await self.post(c2sp.add_checkpoint_body(old, tree.proof(old, new), note))

    async def monitored(self, origin: str = ORIGIN) -> tuple[int, str]:
        path = hashlib.sha256(origin.encode()).hexdigest()
        async with self.session.get(f"{self.url}/{path}/checkpoint") as resp:
            return resp.status, await resp.text()


@pytest.fixture
async def witness(tmp_path: Path) -> AsyncIterator[Harness]:
    folder = tmp_path / "w1"
    identity = directory.init(folder, name=NAME)
    log, other = c2sp.Log(ORIGIN), c2sp.Log(OTHER)
    logs = protocol.logs_by_origin([parse_vkey(v, kind=NOTE_TYPE) for v in (log.vkey, other.vkey)])
    loaded, state = directory.load(folder)
    running = server.Witness(loaded, logs, state)
    runner, port = await server.start(running, host="127.0.0.1", port=0, ssl_context=None)
    tree, fork = forked_trees(shared=3, size=40, seed=b"server")
    _, _, public = c2sp.parse_vkey(identity.vkey)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            harness = Harness(
                f"http://127.0.0.1:{port}", folder, session, log, other, tree, fork, public, running
            )
            assert (await harness.submit(0, 5))[0] == 200  # every test starts from size 5 cosigned
            yield harness
    finally:
        await runner.cleanup()
        running.close()


def _show(folder: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert main(["witness", "show", "--dir", str(folder), "--json"]) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


async def test_the_cosignature_and_the_monitoring_checkpoint_verify_independently(witness: Harness) -> None:
    status, kind, body = await witness.submit(5, 9)
    assert (status, kind) == (200, "text/plain; charset=utf-8")
    line = body.decode()
    assert line.count("\n") == 1 and line.endswith("\n")
    text = c2sp.checkpoint_text(ORIGIN, 9, witness.tree.root(9))
    assert c2sp.verify_cosignature(line, text=text, name=NAME, public=witness.public) > 1_600_000_000
    status, note = await witness.monitored()
    assert status == 200
    signed_text, lines = c2sp.split_note(note)
    assert signed_text == text and lines[-1] + "\n" == line
    c2sp.verify_note_signature(lines[0], text=text, name=ORIGIN, public=witness.log.public)
    # the same checkpoint again (old size = its size, same root) is cosigned anew
    assert (await witness.submit(9, 9))[0] == 200
    assert (await witness.monitored(OTHER))[0] == 404


async def test_extension_lines_are_cosigned_as_part_of_the_note_text(witness: Harness) -> None:
    text = c2sp.checkpoint_text(ORIGIN, 6, witness.tree.root(6)) + "extension line\n"
    note = text + "\n" + witness.log.signature_line(text)
    status, _, body = await witness.post(c2sp.add_checkpoint_body(5, witness.tree.proof(5, 6), note))
    assert status == 200
    c2sp.verify_cosignature(body.decode(), text=text, name=NAME, public=witness.public)


def _signed(h: Harness, old: int, size: int, root: bytes, proof: list[bytes]) -> bytes:
    return c2sp.add_checkpoint_body(old, proof, h.log.checkpoint(size, root))


def _tampered(h: Harness) -> bytes:
    note = h.log.checkpoint(9, h.tree.root(9))
    head, sig = note.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    return c2sp.add_checkpoint_body(
        5, h.tree.proof(5, 9), f"{head} {base64.b64encode(bytes(raw)).decode()}\n"
    )


def _foreign_key(h: Harness) -> bytes:
    impostor = c2sp.Log(ORIGIN)  # same name, another key: its line is ignored, none is left
    return c2sp.add_checkpoint_body(5, h.tree.proof(5, 9), impostor.checkpoint(9, h.tree.root(9)))


def _good_and_bad_line(h: Harness) -> bytes:
    note = h.log.checkpoint(9, h.tree.root(9))
    _, lines = c2sp.split_note(note)
    raw = bytearray(base64.b64decode(lines[0].split(" ")[2]))
    raw[10] ^= 1
    bad = f"{c2sp.EM_DASH} {ORIGIN} {base64.b64encode(bytes(raw)).decode()}\n"
    return c2sp.add_checkpoint_body(5, h.tree.proof(5, 9), note + bad)


Case = Callable[[Harness], bytes]
# (what, body, status, kept as evidence)
REFUSALS: list[tuple[str, Case, int, bool]] = [
    ("replayed first request", lambda h: _signed(h, 0, 5, h.tree.root(5), []), 409, True),
    ("stale old size", lambda h: _signed(h, 3, 9, h.tree.root(9), h.tree.proof(3, 9)), 409, True),
    ("old size ahead", lambda h: _signed(h, 7, 9, h.tree.root(9), h.tree.proof(7, 9)), 409, True),
    ("old above size", lambda h: _signed(h, 6, 4, h.tree.root(4), []), 400, True),
    ("forked tree", lambda h: _signed(h, 5, 9, h.fork.root(9), h.fork.proof(5, 9)), 422, True),
    ("fork with the true proof", lambda h: _signed(h, 5, 9, h.fork.root(9), h.tree.proof(5, 9)), 422, True),
    ("same size other root", lambda h: _signed(h, 5, 5, h.fork.root(5), []), 409, True),
    ("same size with a proof", lambda h: _signed(h, 5, 5, h.tree.root(5), [h.tree.root(1)]), 422, True),
    ("truncated proof", lambda h: _signed(h, 5, 9, h.tree.root(9), h.tree.proof(5, 9)[:-1]), 422, True),
    ("no proof", lambda h: _signed(h, 5, 9, h.tree.root(9), []), 422, True),
    (
        "unknown origin",
        lambda h: c2sp.add_checkpoint_body(0, [], c2sp.Log("nope.example").checkpoint(0, EMPTY_ROOT)),
        404,
        False,
    ),
    ("trusted line fails", _tampered, 403, False),
    ("a good and a failing trusted line", _good_and_bad_line, 403, False),
    ("only a foreign key", _foreign_key, 403, False),
]


@pytest.mark.parametrize(("what", "case", "status", "evidence"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_refusals_answer_the_protocol_status_and_change_nothing(
    witness: Harness, capsys: pytest.CaptureFixture[str], what: str, case: Case, status: int, evidence: bool
) -> None:
    before = await witness.monitored()
    body = case(witness)
    answer = await witness.post(body)
    assert answer[0] == status, (what, answer)
    if status == 409:
        assert answer[1:] == ("text/x.tlog.size", b"5\n")
    assert await witness.monitored() == before
    refused = _show(witness.folder, capsys)["refused"]
    assert isinstance(refused, list)
    kept = [r for r in refused if base64.b64decode(r["body"]) == body]
    assert len(kept) == (1 if evidence else 0)
    if evidence:
        assert kept[0]["status"] == status and kept[0]["origin"] == ORIGIN
    assert (await witness.submit(5, 9))[0] == 200  # the state is still size 5 of the true tree


async def test_a_new_log_size_zero_and_proofs_from_zero(witness: Harness) -> None:
    other = witness.other
    cases = [
        (
            c2sp.add_checkpoint_body(0, [], other.checkpoint(0, witness.tree.root(1))),
            422,
        ),  # 0: empty root only
        (c2sp.add_checkpoint_body(0, [witness.tree.root(1)], other.checkpoint(3, witness.tree.root(3))), 422),
        (c2sp.add_checkpoint_body(0, [], other.checkpoint(0, EMPTY_ROOT)), 200),
        (c2sp.add_checkpoint_body(0, [], other.checkpoint(3, witness.tree.root(3))), 200),
    ]
    for body, status in cases:
        assert (await witness.post(body))[0] == status
    assert (await witness.monitored(OTHER))[1].startswith(f"{OTHER}\n3\n")


def _base(h: Harness) -> bytes:
    return _signed(h, 5, 9, h.tree.root(9), h.tree.proof(5, 9))


MALFORMED: list[tuple[str, Case]] = [
    ("empty", lambda h: b""),
    ("not utf-8", lambda h: b"\xff\xfe" + _base(h)),
    ("no old line", lambda h: _base(h).split(b"\n", 1)[1]),
    ("old with a leading zero", lambda h: _base(h).replace(b"old 5", b"old 05", 1)),
    ("old negative", lambda h: _base(h).replace(b"old 5", b"old -5", 1)),
    ("old with two spaces", lambda h: _base(h).replace(b"old 5", b"old  5", 1)),
    ("old in capitals", lambda h: _base(h).replace(b"old 5", b"OLD 5", 1)),
    ("crlf lines", lambda h: _base(h).replace(b"\n", b"\r\n")),
    ("proof line not base64", lambda h: _base(h).replace(b"\n", b"\n!!!!\n", 1)),
    (
        "proof line of 31 bytes",
        lambda h: _base(h).replace(b"\n", b"\n" + base64.b64encode(bytes(31)) + b"\n", 1),
    ),
    ("no empty line", lambda h: _base(h).replace(b"\n\n", b"\n", 1)),
    ("64 proof lines", lambda h: _signed(h, 5, 9, h.tree.root(9), [bytes(32)] * 64)),
    (
        "checkpoint without signatures",
        lambda h: b"old 5\n\n" + c2sp.checkpoint_text(ORIGIN, 9, h.tree.root(9)).encode(),
    ),
    ("size with a leading zero", lambda h: _base(h).replace(b"\n9\n", b"\n09\n", 1)),
    ("root of 16 bytes", lambda h: _signed(h, 5, 9, bytes(16), h.tree.proof(5, 9))),
    ("control character", lambda h: _base(h).replace(ORIGIN.encode(), ORIGIN.encode() + b"\x01", 1)),
    ("nul bytes", lambda h: bytes(1000)),
]


@pytest.mark.parametrize("case", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
async def test_malformed_bodies_are_400_and_not_evidence(
    witness: Harness, capsys: pytest.CaptureFixture[str], case: Case
) -> None:
    before = await witness.monitored()
    status, kind, _ = await witness.post(case(witness))
    assert (status, kind) == (400, "text/plain; charset=utf-8")
    assert await witness.monitored() == before
    assert _show(witness.folder, capsys)["refused"] == []
    assert (await witness.submit(5, 9))[0] == 200


async def test_63_proof_lines_are_read_and_an_oversized_body_is_413(witness: Harness) -> None:
    # 63 lines is the most a client may send: read, and refused only because the proof is wrong
    assert (await witness.post(_signed(witness, 5, 9, witness.tree.root(9), [bytes(32)] * 63)))[0] == 422
    assert (await witness.post(_base(witness) + b"x" * (64 * 1024)))[0] == 413
    async with witness.session.get(f"{witness.url}/add-checkpoint") as resp:
        assert resp.status == 405
    async with witness.session.get(f"{witness.url}/{'A' * 64}/checkpoint") as resp:
        assert resp.status == 404  # the origin hash is lowercase hex
    assert (await witness.submit(5, 9))[0] == 200


async def test_concurrent_requests_from_one_old_size_cosign_exactly_one(witness: Harness) -> None:
    answers = await asyncio.gather(*(witness.submit(5, size) for size in range(6, 26)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] + [409] * 19
    won = next(size for size, answer in zip(range(6, 26), answers, strict=True) if answer[0] == 200)
    assert {body for status, _, body in answers if status == 409} == {f"{won}\n".encode()}
    assert (await witness.monitored())[1].startswith(f"{ORIGIN}\n{won}\n")


async def test_mutated_requests_never_get_a_500_nor_move_the_state_off_the_true_tree(
    witness: Harness,
) -> None:
    rng = random.Random(24)
    base = _base(witness)
    for _ in range(300):
        body = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(body))
            choice = rng.random()
            if choice < 0.4:
                body[at] = rng.randrange(256)
            elif choice < 0.7:
                del body[at : at + rng.randint(1, 8)]
            else:
                body[at:at] = bytes(rng.choice(b"\n 0=+A\xe2\x80\x94") for _ in range(rng.randint(1, 4)))
        status, _, _ = await witness.post(bytes(body))
        assert status in (200, 400, 403, 404, 409, 422), (status, bytes(body))
    _, note = await witness.monitored()
    size, root = note.split("\n")[1:3]
    assert base64.b64decode(root) == witness.tree.root(int(size))


async def _closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed the connection (bounded: the test's own deadline)."""
    async with asyncio.timeout(5):
        return await reader.read()


async def test_slow_heads_and_bodies_are_cut_off_and_connections_are_kept_alive(witness: Harness) -> None:
    runner, port = await server.start(
        witness.running, host="127.0.0.1", port=0, ssl_context=None, head_seconds=0.3, body_seconds=0.3
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\n")  # and never the rest
        assert await _closed(reader) == b""
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: 100\r\n\r\nold 5\n")
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 408 ")
        assert await _closed(reader)  # the rest of the answer, then the end (no more body read)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = _base(witness)
        for _ in range(2):  # two requests, one connection
            writer.write(
                b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            writer.write(body)
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 409 "))
        writer.close()
    finally:
        await runner.cleanup()
