"""Four brokers as processes on loopback, each with its own database, linked over mutual TLS
with certificates from the development PKI: `usa` and `fra` national brokers, a `nato` hub and a
`fvey` hub. nato and fvey pull from usa; fra pulls from nato.

One federation per engine (module scope); each test leaves it as it found it, except the last,
which revokes a link."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from broker.cli import main as broker_main
from broker.client import BrokerClient, Recall, Received
from broker.crypto.keys import new_signing_key, public_b64
from broker.services import admin, reports
from broker.services.context import Context
from broker.waiting import wait_event
from tests.conftest import PG_DEFAULT, PgClones
from tests.integration.federation import BrokerProcess, Pki, add_link, add_peer, make_pki, stop_all
from tests.integration.helpers import Cli

NAMES = ("usa", "fra", "nato", "fvey")
SECRET_NATO = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}
WAIT = 15.0


@dataclass
class Federation:
    brokers: dict[str, BrokerProcess]
    found: Pki
    tokens: dict[str, str] = field(default_factory=dict)
    usa_key: Any = field(default_factory=new_signing_key)

    def client(self, broker: str, node: str, **kw: Any) -> BrokerClient:
        return BrokerClient(self.brokers[broker].url, self.tokens[node], tls=_ssl(self.found), **kw)

    @contextlib.asynccontextmanager
    async def ctx(self, broker: str) -> AsyncIterator[Context]:
        context = Context.open(self.brokers[broker].settings())
        try:
            yield context
        finally:
            await context.close()


def _ssl(found: Pki) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(found.ca))


def _databases(
    engine: str, request: pytest.FixtureRequest, folder: Path
) -> tuple[dict[str, str], Callable[[], None]]:
    """A database for each broker, and what drops them afterwards."""
    urls = {}
    if engine == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        for name in NAMES:
            shutil.copyfile(template, folder / f"{name}.db")
            urls[name] = f"sqlite+aiosqlite:///{folder / f'{name}.db'}"
        return urls, lambda: None
    clones: PgClones = request.getfixturevalue("pg_clones")  # cloned ahead, dropped behind
    server = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
    taken = [clones.take() for _ in NAMES]
    for name, db in zip(NAMES, taken, strict=True):
        urls[name] = make_url(server).set(database=db).render_as_string(hide_password=False)

    def drop() -> None:
        for db in taken:
            clones.drop(db)

    return urls, drop


async def _nodes(fed: Federation) -> None:
    """Nodes and links at each broker (before the processes start: this makes the keyrings)."""
    found, b = fed.found, fed.brokers
    async with fed.ctx("usa") as usa:
        spec = {"id": "usa-1", "nation": "USA", "clearance": "TOP_SECRET", "roles": ["publish", "subscribe"]}
        fed.tokens["usa-1"] = (
            await admin.add_node(usa, {**spec, "ed25519_public_key": public_b64(fed.usa_key)}, actor="t")
        )["token"]
        fed.links = {  # type: ignore[attr-defined]
            "nato": await add_link(usa, found, "nato-link", nation="BEL", audience=["NATO"], origins=["USA"]),
            "fvey": await add_link(usa, found, "fvey-link", nation="GBR", audience=["FVEY"], origins=["USA"]),
        }
    async with fed.ctx("nato") as nato:
        fed.links["fra"] = await add_link(
            nato, found, "fra-link", nation="FRA", audience=["FRA"], origins=["USA", "FRA"]
        )  # type: ignore[attr-defined]
        spec = {"id": "nato-1", "nation": "BEL", "clearance": "SECRET", "roles": ["subscribe"]}
        fed.tokens["nato-1"] = (await admin.add_node(nato, spec, actor="t"))["token"]
    for broker, node, nation in (("fra", "fra-1", "FRA"), ("fvey", "fvey-1", "GBR")):
        async with fed.ctx(broker) as ctx:
            spec = {"id": node, "nation": nation, "clearance": "SECRET", "roles": ["subscribe"]}
            fed.tokens[node] = (await admin.add_node(ctx, spec, actor="t"))["token"]
    del b


def _cli(env: dict[str, str], *argv: str) -> tuple[int, str]:
    """`broker ARGV` in this process with the ``BROKER_*`` variables of ``env`` (the ``cli``
    fixture's way, for a module's fixture): its exit status and what it printed."""
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        for name in [n for n in os.environ if n.startswith("BROKER_")]:
            patch.delenv(name)
        for name, value in env.items():
            if name.startswith("BROKER_"):
                patch.setenv(name, value)
        code = broker_main(list(argv))
    return code, out.getvalue()


async def _peers(fed: Federation) -> None:
    links = fed.links  # type: ignore[attr-defined]
    b = fed.brokers
    # nato pulls from usa through the CLI, as an operator would.
    cert, key = links["nato"]
    code, out = await asyncio.to_thread(
        _cli,
        b["nato"].env,
        *("peer", "add", "usa", "--url", b["usa"].url, "--ca", str(fed.found.ca)),
        *("--cert", str(cert), "--key", str(key), "--origins", "USA", "--json"),
    )
    assert code == 0, out
    assert json.loads(out)["broker_key"].startswith(b["usa"].origin + "+")
    async with fed.ctx("fvey") as fvey:
        await add_peer(fvey, fed.found, b["usa"], links["fvey"], ["USA"])
    async with fed.ctx("fra") as fra:
        await add_peer(fra, fed.found, b["nato"], links["fra"], ["USA", "FRA"])


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def federation(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    folder = tmp_path_factory.mktemp("federation")
    found = make_pki(folder / "pki")
    urls, drop_databases = _databases(request.param, request, folder)
    brokers = {n: BrokerProcess(n, folder / n, urls[n], found) for n in NAMES}
    fed = Federation(brokers, found)
    try:
        for broker in brokers.values():
            broker.prepare()
        asyncio.run(_nodes(fed))
        for broker in brokers.values():
            broker.start()

        async def up() -> None:
            await asyncio.gather(*(b.healthy() for b in brokers.values()))
            await _peers(fed)

        asyncio.run(up())
        yield fed
    finally:
        stop_all(brokers.values())
        drop_databases()


class Inbox:
    """What one node's SDK stream yields, with an event per arrival."""

    def __init__(self) -> None:
        self.reports: dict[str, Received] = {}
        self.recalls: dict[str, float] = {}
        self.arrived = asyncio.Event()

    def recalled(self, notice: Recall) -> None:
        self.recalls[notice.id] = asyncio.get_running_loop().time()
        self.arrived.set()

    async def until(self, predicate: Any, seconds: float = WAIT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not predicate():
            self.arrived.clear()
            if predicate():
                return
            assert await wait_event(self.arrived, max(deadline - loop.time(), 0.0)), "nothing arrived in time"


@contextlib.asynccontextmanager
async def inbox(fed: Federation, broker: str, node: str) -> AsyncIterator[Inbox]:
    box = Inbox()
    async with fed.client(broker, node) as client:

        async def consume() -> None:
            async for received in client.stream(
                name=f"t-{secrets.token_hex(3)}", after=0, on_recall=box.recalled
            ):
                box.reports[received.id] = received
                box.arrived.set()

        task = asyncio.create_task(consume())
        try:
            yield box
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish(fed: Federation, label: dict[str, Any], n: int = 0) -> str:
    async with fed.client("usa", "usa-1", signing_key=fed.usa_key) as usa:
        receipt = await usa.publish(label=label, payload={"type": "note", "n": n}, topics=["ransomware"])
    return str(receipt["id"])


async def held(fed: Federation, broker: str, report_id: str) -> tuple[bool, bool]:
    """(stored at ``broker``, named in its audit log)."""
    async with fed.ctx(broker) as ctx, ctx.db.read_transaction() as tx:
        stored = await tx.report(report_id) is not None
        logged = bool(await tx.events(limit=5, report=report_id))
    return stored, logged


async def test_a_nato_report_reaches_fra_through_the_hub_as_published(federation: Federation) -> None:
    fed = federation
    async with inbox(fed, "fra", "fra-1") as fra:
        report_id = await publish(fed, SECRET_NATO)
        await fra.until(lambda: report_id in fra.reports)
    got = fra.reports[report_id]
    assert got.verified and got.label == SECRET_NATO and got.originator == {"node": "usa-1", "nation": "USA"}
    async with fed.client("fra", "fra-1") as client:
        doc = await client._call("GET", f"/v1/reports/{report_id}")
    b = fed.brokers
    assert [h["broker"] for h in doc["provenance"]] == [b["usa"].origin, b["nato"].origin, b["fra"].origin]
    labels = []
    for broker in ("usa", "nato", "fra"):
        async with fed.ctx(broker) as ctx, ctx.db.read_transaction() as tx:
            stored = await tx.report(report_id)
            assert stored is not None
            labels.append(stored.label_json)
    assert labels[0] == labels[1] == labels[2]  # byte-identical at every hop


async def test_labels_decide_what_crosses_each_link(federation: Federation) -> None:
    fed = federation
    usa_gbr = {"classification": "SECRET", "releasable_to": ["USA", "GBR"], "caveats": []}
    top = {"classification": "TOP_SECRET", "releasable_to": ["NATO"], "caveats": []}
    fvey_only = {"classification": "SECRET", "releasable_to": ["FVEY"], "caveats": []}
    both = {"classification": "SECRET", "releasable_to": ["NATO", "FVEY"], "caveats": []}
    async with inbox(fed, "fra", "fra-1") as fra, inbox(fed, "fvey", "fvey-1") as fvey:
        refused = [await publish(fed, usa_gbr), await publish(fed, top)]
        to_fvey = await publish(fed, fvey_only)
        marker = await publish(fed, both)  # streams are in order: once it is in, the rest was decided
        await fra.until(lambda: marker in fra.reports)
        await fvey.until(lambda: marker in fvey.reports and to_fvey in fvey.reports)
    for report_id in refused:
        assert await held(fed, "nato", report_id) == (False, False)  # not stored, not even in its log
        assert await held(fed, "fra", report_id) == (False, False)
    assert await held(fed, "fvey", to_fvey) == (True, True)
    assert await held(fed, "nato", to_fvey) == (False, False)
    assert await held(fed, "fra", to_fvey) == (False, False)
    async with fed.ctx("usa") as usa, usa.db.read_transaction() as tx:  # each refusal audited at the sender
        denied = {
            (e.draft.report, e.draft.node, e.draft.reason)
            for e in await tx.events(limit=50, action="deliver", decision="deny")
        }
    assert (refused[0], "nato-link", "not_releasable") in denied
    assert (refused[1], "nato-link", "insufficient_clearance") in denied


async def test_a_recall_at_usa_removes_the_report_at_nato_and_fra_within_a_second(
    federation: Federation,
) -> None:
    fed = federation
    async with inbox(fed, "fra", "fra-1") as fra, inbox(fed, "nato", "nato-1") as nato:
        report_id = await publish(fed, SECRET_NATO)
        await fra.until(lambda: report_id in fra.reports)
        loop = asyncio.get_running_loop()
        async with fed.client("usa", "usa-1") as usa:
            await usa.recall(report_id)
        recalled_at = loop.time()
        await fra.until(lambda: report_id in fra.recalls, seconds=5)
        await nato.until(lambda: report_id in nato.recalls, seconds=5)
    assert fra.recalls[report_id] - recalled_at <= 1.0
    assert nato.recalls[report_id] - recalled_at <= 1.0
    for broker, node in (("nato", "nato-1"), ("fra", "fra-1")):
        async with fed.client(broker, node) as client:
            status, _ = await _status(client, f"/v1/reports/{report_id}")
        assert status == 404


async def test_an_erasure_at_the_hub_stays_at_the_hub(federation: Federation) -> None:
    """Erasure is local: fra keeps its copy of a report the hub erased, and is sent no recall
    for it (which it would refuse and audit), even when its puller reconnects and so is owed
    every notice since it left."""
    fed = federation
    async with inbox(fed, "fra", "fra-1") as fra:
        report_id = await publish(fed, SECRET_NATO)
        await fra.until(lambda: report_id in fra.reports)
    async with fed.ctx("nato") as nato:
        await reports.erase(nato, report_id, actor="test")
    fed.brokers["fra"].kill()
    fed.brokers["fra"].start()
    await fed.brokers["fra"].healthy()
    async with inbox(fed, "fra", "fra-1") as fra:
        for n in (1, 2):  # the second is sent after any notice the stream owed with the first
            marker = await publish(fed, SECRET_NATO, n)
            await fra.until(lambda: marker in fra.reports)  # noqa: B023 (awaited in the loop)
    async with fed.ctx("fra") as ctx, ctx.db.read_transaction() as tx:
        kept = await tx.report(report_id)
        recalls = await tx.events(limit=10, action="recall", report=report_id)
    assert kept is not None and kept.recalled_at is None and kept.erased_at is None
    assert recalls == []


async def _status(client: BrokerClient, path: str) -> tuple[int, Any]:
    from broker.client import ApiError

    try:
        return 200, await client._call("GET", path)
    except ApiError as exc:
        return exc.status, None


async def test_fra_leaving_nato_at_the_hub_stops_the_flow_to_fra(federation: Federation, cli: Cli) -> None:
    fed = federation
    cli.like(fed.brokers["nato"].env)
    await cli.run_ok("alliance", "leave", "NATO", "FRA", "--json")
    try:
        async with inbox(fed, "fra", "fra-1") as fra:
            stopped = await publish(fed, SECRET_NATO)
            marker = await publish(
                fed, {"classification": "SECRET", "releasable_to": ["NATO", "FRA"], "caveats": []}
            )
            await fra.until(lambda: marker in fra.reports)
        assert stopped not in fra.reports
        assert await held(fed, "fra", stopped) == (False, False)
        assert (await held(fed, "nato", stopped))[0]
    finally:
        await cli.like(fed.brokers["nato"].env).run_ok("alliance", "join", "NATO", "FRA", "--json")


async def test_a_second_path_delivers_once_and_nothing_returns_to_its_origin(
    federation: Federation, cli: Cli
) -> None:
    fed = federation
    found, b = fed.found, fed.brokers
    async with fed.ctx("usa") as usa:
        direct = await add_link(usa, found, "fra-direct", nation="FRA", audience=["FRA"], origins=["USA"])
    async with fed.ctx("nato") as nato:
        back = await add_link(nato, found, "usa-link", nation="USA", audience=["USA"], origins=["USA", "FRA"])
    async with fed.ctx("fra") as fra_ctx:
        await add_peer(fra_ctx, found, b["usa"], direct, ["USA"])
    async with fed.ctx("usa") as usa:
        await add_peer(usa, found, b["nato"], back, ["USA", "FRA"])
    try:
        async with inbox(fed, "fra", "fra-1") as fra:
            sent = [await publish(fed, SECRET_NATO, n) for n in range(5)]
            await fra.until(lambda: all(s in fra.reports for s in sent))
        async with fed.ctx("fra") as fra_ctx, fra_ctx.db.read_transaction() as tx:
            imported = [e.draft.report for e in await tx.events(limit=500, action="import", decision="allow")]
        assert all(imported.count(s) == 1 for s in sent)
        async with fed.ctx("usa") as usa, usa.db.read_transaction() as tx:
            back_home = [e for e in await tx.events(limit=500, action="import") if e.draft.report in sent]
        assert back_home == []  # nato never offered usa its own reports
    finally:
        await cli.like(b["fra"].env).run_ok("peer", "remove", "usa", "--json")
        await cli.like(b["usa"].env).run_ok("peer", "remove", "nato", "--json")


async def test_kill_9_of_the_hub_under_8_publishers_loses_and_repeats_nothing(federation: Federation) -> None:
    fed = federation
    acknowledged: list[str] = []
    half = asyncio.Event()

    async def publisher(k: int) -> None:
        async with fed.client("usa", "usa-1", signing_key=fed.usa_key) as usa:
            for n in range(12):
                receipt = await usa.publish(
                    label=SECRET_NATO, payload={"p": k, "n": n}, topics=["ransomware"]
                )
                acknowledged.append(str(receipt["id"]))
                if len(acknowledged) >= 40:
                    half.set()

    async with inbox(fed, "fra", "fra-1") as fra:
        tasks = [asyncio.create_task(publisher(k)) for k in range(8)]
        assert await wait_event(half, WAIT)
        fed.brokers["nato"].kill()
        fed.brokers["nato"].start()
        await fed.brokers["nato"].healthy()
        await asyncio.gather(*tasks)
        await fra.until(lambda: all(a in fra.reports for a in acknowledged), seconds=60)
    async with fed.ctx("fra") as fra_ctx, fra_ctx.db.read_transaction() as tx:
        imported = [e.draft.report for e in await tx.events(limit=5000, action="import", decision="allow")]
    assert len(acknowledged) == 96
    assert all(imported.count(a) == 1 for a in acknowledged)


async def test_audit_trace_follows_a_report_across_the_four_exports(
    federation: Federation, tmp_path: Path, cli: Cli
) -> None:
    fed = federation
    async with inbox(fed, "fra", "fra-1") as fra:
        report_id = await publish(fed, SECRET_NATO)
        await fra.until(lambda: report_id in fra.reports)
    files, keys = [], []
    from broker.services import ledger

    for name in NAMES:
        async with fed.ctx(name) as ctx:
            path = tmp_path / f"{name}.ndjson"
            with path.open("w") as fh:
                async for line in ledger.export(ctx):
                    fh.write(line)
            files.append(str(path))
            keys += ["--key", ledger.public_key(ctx)["vkey"]]
    cli.like(fed.brokers["fra"].env)
    traced = await cli.run("audit", "trace", report_id, *files, *keys, "--json")
    assert traced.returncode == 0, traced.stdout + traced.stderr
    hops = json.loads(traced.stdout)["hops"]
    assert [(h["broker"], h["action"]) for h in hops] == [
        (fed.brokers["usa"].origin, "publish"),
        (fed.brokers["nato"].origin, "import"),
        (fed.brokers["fra"].origin, "import"),
    ]
    tampered = Path(files[1]).read_text().replace('"action":"import"', '"action":"imp0rt"', 1)
    Path(files[1]).write_text(tampered)
    again = await cli.run("audit", "trace", report_id, *files, *keys)
    assert again.returncode == 1 and "does not verify" in again.stdout


async def test_a_revoked_link_closes_at_once(federation: Federation, cli: Cli) -> None:
    fed = federation
    await cli.like(fed.brokers["nato"].env).run_ok("node", "revoke", "fra-link", "--json")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        health = await fed.brokers["fra"].healthy()
        if health.get("peers", {}).get("nato", {}).get("state") == "refused":
            break
        assert loop.time() < deadline, health
        await asyncio.sleep(0.05)  # another process's state: nothing to wait on but its answer
    # It stays refused while the puller retries (backoff 0.1 s doubling: several attempts here).
    until = loop.time() + 1.5
    while loop.time() < until:
        health = await fed.brokers["fra"].healthy()
        assert health["peers"]["nato"]["state"] == "refused", health
        await asyncio.sleep(0.02)  # sampling another process's state across its retries
    listed = await cli.like(fed.brokers["fra"].env).run_ok("peer", "list", "--json")
    [nato] = json.loads(listed.stdout)
    assert nato["state"] == "refused" and nato["last_error"]
