"""C2SP tlog-witness: "If the old size matches the checkpoint size, the witness MUST check that
the root hashes are also identical. If they don't match, the witness MUST respond with a 409
Conflict" (with the size it holds, as ``text/x.tlog.size``). A log-signed checkpoint of the size
the witness cosigned, with another root, is a fork the witness refuses this way, and keeps."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from broker.witness import directory
from tests.integration import c2sp, witnesses
from tests.integration.witness_log import forked_trees

ORIGIN = "log.example/same"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, c2sp.Log, aiohttp.ClientSession, Path]]:
    async with witnesses.in_process(tmp_path / "w", ORIGIN) as (url, log, session):
        yield url, log, session, tmp_path / "w"


async def test_the_cosigned_size_with_another_root_is_a_409_naming_that_size(
    served: tuple[str, c2sp.Log, aiohttp.ClientSession, Path],
) -> None:
    url, log, session, folder = served
    tree, fork = forked_trees(shared=3, size=10, seed=b"same")
    first = c2sp.add_checkpoint_body(0, [], log.checkpoint(7, tree.root(7)))
    async with session.post(f"{url}/add-checkpoint", data=first) as resp:
        assert resp.status == 200
    forked = c2sp.add_checkpoint_body(7, [], log.checkpoint(7, fork.root(7)))
    async with session.post(f"{url}/add-checkpoint", data=forked) as resp:
        answer = (resp.status, resp.content_type, await resp.read())
    assert answer == (409, "text/x.tlog.size", b"7\n")
    _, state = directory.load(folder)
    try:
        kept = state.evidence(10)
        assert [(e.status, e.body) for e in kept] == [(409, forked)]
        assert [log_["root"] for log_ in state.logs()] == [base64.b64encode(tree.root(7)).decode()]
    finally:
        state.close()


async def test_a_flood_of_stale_requests_does_not_push_a_fork_out_of_the_evidence(
    served: tuple[str, c2sp.Log, aiohttp.ClientSession, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log itself can send ever new signed checkpoints with a stale old size (each refused
    409 and kept): past the bound on kept refusals they must push out other stale ones, never the
    proof that the log signed two histories."""
    from broker.witness import state

    monkeypatch.setattr(state, "MAX_EVIDENCE", 5)  # the bound, small enough to pass in a test
    url, log, session, folder = served
    tree, fork = forked_trees(shared=3, size=40, seed=b"flood")
    sent = [
        c2sp.add_checkpoint_body(0, [], log.checkpoint(7, tree.root(7))),
        forked := c2sp.add_checkpoint_body(7, [], log.checkpoint(7, fork.root(7))),
        *(c2sp.add_checkpoint_body(3, [], log.checkpoint(n, tree.root(n))) for n in range(8, 40)),
    ]
    statuses = []
    for request in sent:
        async with session.post(f"{url}/add-checkpoint", data=request) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 409] + [409] * 32
    _, kept = directory.load(folder)
    try:
        bodies = [e.body for e in kept.evidence(100)]
        first = kept.evidence(1)  # what `broker witness show --refused 1` shows
    finally:
        kept.close()
    assert forked in bodies, "the fork's evidence was pushed out by stale requests"
    assert len(bodies) == 5 + 1  # the newest stale ones within the bound, and the fork
    assert [(e.body, e.fork) for e in first] == [(forked, True)]  # a proof of a fork comes first


def test_a_state_database_made_before_forks_were_kept_apart_gains_them_when_opened(
    tmp_path: Path,
) -> None:
    import sqlite3

    directory.init(tmp_path / "w", name="witness.example/old")
    made = tmp_path / "w" / directory.STATE_FILE
    with sqlite3.connect(made) as old:  # the schema before, holding one refusal
        old.execute("DROP INDEX refused_by_kind")
        old.execute("ALTER TABLE refused DROP COLUMN fork")
        old.execute(
            "INSERT INTO refused (origin, checkpoint, received_at, status, reason, body)"
            " VALUES ('o', x'00', 1, 409, 'old size 3 is not 7', x'00')"
        )
    for _ in range(2):  # opened again: nothing more to add
        directory.load(tmp_path / "w")[1].close()
    with sqlite3.connect(made) as reopened:
        assert reopened.execute("SELECT status, fork FROM refused").fetchall() == [(409, 0)]
        indexes = reopened.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
        assert ("refused_by_kind",) in indexes
