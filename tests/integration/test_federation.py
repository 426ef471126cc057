"""Four brokers as processes on loopback, each with its own database, linked over mutual TLS
with certificates from the development PKI: `usa` and `fra` national brokers, a `nato` hub and a
`fvey` hub. nato and fvey pull from usa; fra pulls from nato.

One federation per engine (module scope); each test leaves it as it found it, except the last,
which revokes a link."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from broker.client import BrokerClient, Received, Recall
from broker.crypto.keys import new_signing_key, public_b64
from broker.services import admin
from broker.services.context import Context
from broker.waiting import wait_event
from tests.conftest import PG_DEFAULT, _pg_exec
from tests.integration.federation import BrokerProcess, Pki, add_link, add_peer, make_pki
from tests.integration.helpers import run_cli

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


def _databases(engine: str, request: pytest.FixtureRequest, folder: Path) -> tuple[dict[str, str], list[str]]:
    urls, dropped = {}, []
    if engine == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        for name in NAMES:
            shutil.copyfile(template, folder / f"{name}.db")
            urls[name] = f"sqlite+aiosqlite:///{folder / f'{name}.db'}"
        return urls, dropped
    template_name: str = request.getfixturevalue("pg_template")
    server = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
    for name in NAMES:
        db = f"broker_f_{name}_{secrets.token_hex(4)}"
        asyncio.run(_pg_exec(server, f'CREATE DATABASE "{db}" TEMPLATE "{template_name}"'))
        urls[name] = make_url(server).set(database=db).render_as_string(hide_password=False)
        dropped.append(db)
    return urls, dropped


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


async def _peers(fed: Federation) -> None:
    links = fed.links  # type: ignore[attr-defined]
    b = fed.brokers
    # nato pulls from usa through the CLI, as an operator would.
    cert, key = links["nato"]
    added = run_cli(
        "peer",
        "add",
        "usa",
        "--url",
        b["usa"].url,
        "--ca",
        str(fed.found.ca),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--origins",
        "USA",
        "--json",
        env=b["nato"].env,
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["broker_key"].startswith(b["usa"].origin + "+")
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
    urls, dropped = _databases(request.param, request, folder)
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
        for broker in brokers.values():
            broker.stop()
        server = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
        for db in dropped:
            asyncio.run(_pg_exec(server, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


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
