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
