"""Fault injection: a database that stops answering or drops its connections, and a background
task that keeps failing. The broker answers 503 with Retry-After within its deadlines, never
hangs and never loses an acknowledged report; background work is restarted and counted.

PostgreSQL is reached through a TCP proxy (faultproxy.py) the test pauses or cuts; the deadlines
are set to 2 s (the defaults are at most 5 s) so the suite stays short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from broker.client.sdk import BrokerClient
from broker.services import admin
from broker.services.context import Context
from broker.settings import Settings
from broker.waiting import wait_event
from tests.integration.conftest import Api, StartServer
from tests.integration.faultproxy import FaultProxy
from tests.integration.helpers import body, cli_env, run_forked

DEADLINE = 2.0
MARGIN = 1.5  # scheduling, a checkout that waited behind a request at its own deadline
PUBLISHERS = 8
FAST = {
    "db_statement_timeout_seconds": DEADLINE,
    "db_connect_timeout_seconds": DEADLINE,
    "db_pool_timeout_seconds": DEADLINE,
    "db_transaction_timeout_seconds": DEADLINE,
    "health_timeout_seconds": 0.5,
}


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[FaultProxy]:
    if not database_url.startswith("postgresql"):
        pytest.skip("the proxy stands between the broker and a PostgreSQL server; SQLite has none")
    url = make_url(database_url)
    faults = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    await faults.start()
    yield faults
    await faults.close()


def through(database_url: str, proxy: FaultProxy) -> str:
    return make_url(database_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@dataclass
class Load:
    """Publishers that each publish under fresh idempotency keys, retrying a key after a 503
    until it is acknowledged."""

    api: Api
    token: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    outcomes: list[tuple[int, float, float]] = field(default_factory=list)  # status, start, seconds
    acked: dict[str, str] = field(default_factory=dict)  # idempotency key -> report id
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set by each answer
    after: float = 0.0  # ``recovered`` is set by the first acknowledgement of a request sent after this
    recovered: asyncio.Event = field(default_factory=asyncio.Event)

    async def publisher(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        i = 0
        while not self.stop.is_set():
            key = f"p{n}-{i}"
            i += 1
            while True:
                start = loop.time()
                status, answer = await self.api.publish(self.token, body(), headers={"Idempotency-Key": key})
                self.outcomes.append((status, start, loop.time() - start))
                self.progress.set()
                if status == 201:
                    self.acked[key] = answer["id"]
                    if self.after and start >= self.after:
                        self.recovered.set()
                    break
                assert status == 503, (status, answer)
                await asyncio.sleep(0.05)  # a client's pause before it retries

    async def wait_acks(self, count: int, seconds: float) -> None:
        await self.wait_for(lambda: len(self.acked) >= count, seconds)

    def refused(self) -> int:
        return len([status for status, _, _ in self.outcomes if status == 503])

    async def wait_for(self, done: Callable[[], bool], seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while not done():
                self.progress.clear()
                await self.progress.wait()


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    """Until ``check`` (an observation through a public interface: /metrics, the tables) holds;
    fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, f"not within {seconds} s"
        await asyncio.sleep(0.1)


async def stored_ids(ctx: Context) -> list[str]:
    async with ctx.db.read_transaction() as tx:
        return [report.id for report in await tx.reports_after(after=0, topics=[], limit=100_000)]


async def health(api: Api) -> tuple[int, float, str | None]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(5), api.client.get("/v1/health") as resp:  # a hang fails the test
        await resp.read()
        return resp.status, loop.time() - start, resp.headers.get("Retry-After")


async def run_fault(api: Api, fault: Any) -> Load:
    """8 publishers; ``fault(load)`` runs once 16 reports are acknowledged; then publishes must
    be acknowledged again within 2 s, and every acknowledged report is stored once."""
    load = Load(api, await api.node("pub-usa", "USA", roles=("publish",)))
    tasks = [asyncio.create_task(load.publisher(n)) for n in range(PUBLISHERS)]
    try:
        await load.wait_acks(16, 30)
        await fault(load)
        load.after = asyncio.get_running_loop().time()
        async with asyncio.timeout(2.0):
            await load.recovered.wait()
        await load.wait_acks(len(load.acked) + 16, 10)
    finally:
        load.stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    statuses = {status for status, _, _ in load.outcomes}
    assert statuses <= {201, 503}
    slowest = max(seconds for _, _, seconds in load.outcomes)
    assert slowest <= DEADLINE + MARGIN, f"a request took {slowest:.2f} s"
    assert sorted(await stored_ids(api.ctx)) == sorted(load.acked.values())  # none lost, none twice
    return load


async def test_a_paused_database_answers_503_in_time_and_publishing_resumes(
    start_server: StartServer, proxy: FaultProxy, database_url: str
) -> None:
    api = await start_server(database_url=through(database_url, proxy), **FAST)

    async def pause(load: Load) -> None:
        proxy.pause()
        try:
            status, seconds, retry_after = await health(api)
            assert (status, retry_after) == (503, "1") and seconds < 1.0, (status, seconds)
            refused = load.refused()  # every publisher is answered 503 in time
            await load.wait_for(lambda: load.refused() >= refused + PUBLISHERS, DEADLINE + MARGIN + 1)
            # The outage lasts until the retries sent into it are answered 503 in time too; the
            # retries sent after those are in flight when the database answers again.
            await load.wait_for(lambda: load.refused() >= refused + 2 * PUBLISHERS, DEADLINE + MARGIN + 1)
        finally:
            proxy.resume()

    load = await run_fault(api, pause)
    assert any(status == 503 for status, _, _ in load.outcomes)
    assert (await health(api))[0] == 200


async def test_cut_connections_answer_503_and_the_listener_reconnects(
    start_server: StartServer, proxy: FaultProxy, database_url: str
) -> None:
    api = await start_server(database_url=through(database_url, proxy), **FAST)
    auditor = await api.node("aud-usa", "USA", roles=("audit",))

    async def cut(_load: Load) -> None:
        for _ in range(4):
            proxy.arrived.clear()
            proxy.cut()
            async with asyncio.timeout(5):  # the broker connects again before the next cut
                await proxy.arrived.wait()

    await run_fault(api, cut)

    async def listening() -> bool:
        return await metric(api, auditor, "broker_change_listener_connected") == 1.0

    await eventually(listening, 10)


async def test_an_exhausted_pool_answers_503_with_retry_after(
    start_server: StartServer, proxy: FaultProxy, database_url: str
) -> None:
    """40 requests at once against a database that stopped answering: 20 hold every pooled and
    overflow connection, the others wait for one past the pool deadline; all answer 503."""
    # The checkout deadline shorter than the others: the pool's own TimeoutError is what most meet.
    api = await start_server(
        database_url=through(database_url, proxy), **{**FAST, "db_pool_timeout_seconds": 0.5}
    )
    token = await api.node("sub-usa", "USA", roles=("subscribe",))
    assert (await api.get("/v1/reports", token))[0] == 200

    async def listing() -> tuple[int, str | None, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        headers = {"Authorization": f"Bearer {token}"}
        async with api.client.get("/v1/reports", headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After"), loop.time() - start

    proxy.pause()
    try:
        async with asyncio.timeout(30):
            answers = await asyncio.gather(*(listing() for _ in range(40)))
    finally:
        proxy.resume()
    assert {(status, retry) for status, retry, _ in answers} == {(503, "1")}
    # One request in 40 has been seen to take two deadlines (two transactions in a row, each
    # ending at its own deadline); the bound asserted is that, not one deadline.
    assert max(seconds for _, _, seconds in answers) <= 2 * DEADLINE + MARGIN


async def metric(api: Api, token: str, name: str, labels: str = "") -> float | None:
    status, exposition = await api.get("/metrics", token)
    assert status == 200
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", exposition, re.MULTILINE)
    return None if found is None else float(found.group(1))


REFUSE = {
    "postgresql": [
        "CREATE FUNCTION refuse_checkpoint() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected checkpoint failure'; END $$",
        "CREATE TRIGGER refuse_checkpoint BEFORE INSERT ON checkpoints "
        "FOR EACH ROW EXECUTE FUNCTION refuse_checkpoint()",
    ],
    "sqlite": [
        "CREATE TRIGGER refuse_checkpoint BEFORE INSERT ON checkpoints "
        "BEGIN SELECT RAISE(ABORT, 'injected checkpoint failure'); END"
    ],
}


async def run_sql(ctx: Context, statements: list[str]) -> None:
    async with ctx.db.engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


async def test_checkpoint_signing_failures_are_logged_restarted_and_counted(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # Below the configurable 1 s, so the failures come sooner: the interval is not the point.
    api = await start_server(checkpoint_every_seconds=0.2, checkpoint_every_events=1)
    auditor = await api.node("aud-usa", "USA", roles=("audit",))
    publisher = await api.node("pub-usa", "USA", roles=("publish",))
    task = "checkpointer"
    restarts = f'broker_background_restarts_total{{task="{task}"}}'
    before = await metric(api, auditor, restarts) or 0.0
    dialect = api.ctx.db.engine.dialect.name
    await run_sql(api.ctx, REFUSE[dialect])
    assert (await api.publish(publisher, body()))[0] == 201

    # Three failures: the loop restarted after a failure that itself followed a restart.
    async def refused_three_times() -> bool:
        return (await metric(api, auditor, restarts) or 0.0) >= before + 3

    async def signed() -> bool:  # the newest checkpoint covers the log
        async with api.ctx.db.read_transaction() as tx:
            size, last = await tx.audit_size(), await tx.latest_checkpoint()
        return last is not None and last.size == size

    await eventually(refused_three_times, 30)
    drop = "DROP TRIGGER refuse_checkpoint"
    await run_sql(api.ctx, [drop + (" ON checkpoints" if dialect == "postgresql" else "")])
    assert (await api.publish(publisher, body()))[0] == 201
    await eventually(signed, 30)
    counted = (await metric(api, auditor, restarts) or 0.0) - before
    logged = f"background_task_failed task={task} "
    failures = [r for r in caplog.records if r.getMessage().startswith(logged)]
    assert len(failures) == counted >= 3  # each failure logged once, and counted
    assert all(r.levelno == logging.ERROR and r.exc_info for r in failures)


async def test_an_unexpected_database_error_is_logged_with_its_traceback_and_not_called_unavailable(
    settings: Settings, ctx: Context, database_url: str, tmp_path: Path
) -> None:
    """A schema problem (here a renamed table) is no outage: the command says what failed, and
    the log has the error at ERROR with its traceback."""
    await admin.add_node(
        ctx, {"id": "n-usa", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]}, actor="test"
    )
    await run_sql(ctx, ["ALTER TABLE nodes RENAME TO nodes_gone"])
    done = await asyncio.to_thread(
        run_forked, "-m", "broker", "node", "list", env=cli_env(database_url, settings.keyring_path)
    )
    assert done.returncode == 2
    assert "database unavailable" not in done.stderr
    assert "nodes" in done.stderr.splitlines()[-1]  # the one line names what is wrong
    assert re.search(r" ERROR \S+ command_failed\nTraceback", done.stderr)


async def test_a_restarted_database_under_load_and_streams_loses_nothing_and_every_stream_resumes(
    start_server: StartServer, proxy: FaultProxy, database_url: str
) -> None:
    """PostgreSQL restarted under 8 publishers and 3 streaming subscribers: every connection cut,
    none answered for 3 s (longer than the deadlines), then served again; at the same moment the
    subscribers' connections to the broker drop. Publishes answer 201 or 503, nothing
    acknowledged is lost or stored twice, each stream resumes from its cursor and receives every
    stored report once, in order, and the change listener is connected again."""
    api = await start_server(database_url=through(database_url, proxy), **FAST)
    auditor = await api.node("aud-usa", "USA", roles=("audit",))
    subscribers = [await api.node(f"sub-usa-{n}", "USA", roles=("subscribe",)) for n in range(3)]
    front = FaultProxy("127.0.0.1", make_url(api.base_url).port or 0)  # between subscribers and broker
    await front.start()
    received: list[list[tuple[int, str]]] = [[] for _ in subscribers]
    arrived = asyncio.Event()

    async def subscribe(n: int, token: str) -> None:
        async with BrokerClient(f"http://127.0.0.1:{front.port}", token, reconnect_delay=0.05) as client:
            async for report in client.stream(after=0, name=f"s{n}"):
                received[n].append((report.sequence, report.id))
                arrived.set()

    readers = [asyncio.create_task(subscribe(n, token)) for n, token in enumerate(subscribers)]

    async def restart(_load: Load) -> None:
        # No waiting for the streams: a report that reaches one while the database goes away
        # makes the SDK's fetch of its originator's key meet a 503, which must resume the stream
        # (it used to end stream() with ApiError 503).
        proxy.pause()  # the server is down: nothing answers while it restarts
        proxy.cut()
        front.cut()
        try:
            outage = asyncio.Event()
            await wait_event(outage, 3.0)  # the restart takes 3 s (a duration, not a synchronisation)
            proxy.cut()  # the connections held while down are refused
        finally:
            proxy.resume()

    try:
        load = await run_fault(api, restart)
        assert load.refused() > 0  # the outage was felt, and answered 503
        stored = await stored_reports(api.ctx)
        assert len(stored) >= 32

        def caught_up() -> bool:
            return all(len(got) >= len(stored) for got in received)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                while not caught_up():
                    arrived.clear()
                    await arrived.wait()
        missing = [sorted(set(stored) - set(got))[:5] for got in received]
        ended = [repr(r.exception()) for r in readers if r.done()]
        assert caught_up(), (len(stored), [len(got) for got in received], missing, ended)
        for got in received:
            assert got == stored  # every report once, in sequence order: no gap, no duplicate
        assert front.accepted > len(subscribers)  # the streams dropped and resumed from their cursors

        async def listening() -> bool:
            return await metric(api, auditor, "broker_change_listener_connected") == 1.0

        await eventually(listening, 10)
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await front.close()


async def stored_reports(ctx: Context) -> list[tuple[int, str]]:
    async with ctx.db.read_transaction() as tx:
        return [(r.seq, r.id) for r in await tx.reports_after(after=0, topics=[], limit=100_000)]
