"""Random interleavings of revocations, token rotations, role changes, departures and recall
storms with reads, listings, publishes and open streams, on two broker instances sharing one
database. (Certificate pins need TLS: test_tls covers a moved pin on an open stream.)

The audit log is the witness: each act appends its event in its own transaction under the head
lock, so the log's order is the order in which acts took effect. The property: no act that a
change forbids is recorded as allowed after that change's event. Seeds make each run
reproducible; the schedule (which act, which instance, when) is drawn from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

import aiohttp
import pytest

from broker.domain.records import AuditEvent
from broker.services import admin
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body

PUBLISHERS = {"usa-1": "USA", "usa-2": "USA", "can-1": "CAN"}
READERS = {"tur-1": "TUR", "tur-2": "TUR", "nor-1": "NOR", "gbr-1": "GBR", "fra-1": "FRA"}
RUN_SECONDS = 2.0


@dataclass
class World:
    apis: list[Api]
    tokens: dict[str, str]
    rng: random.Random
    published: list[tuple[str, str]] = field(default_factory=list)  # (report id, originator)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def api(self) -> Api:
        return self.rng.choice(self.apis)


async def _actor(world: World) -> None:
    rng = world.rng
    while not world.stop.is_set():
        roll = rng.random()
        if roll < 0.3:
            node = rng.choice(list(PUBLISHERS))
            status, receipt = await world.api().publish(world.tokens[node], body(to=["NATO"]))
            if status == 201:
                world.published.append((receipt["id"], node))
        elif roll < 0.7 and world.published:
            report, _ = rng.choice(world.published)
            await world.api().get(f"/v1/reports/{report}", world.tokens[rng.choice(list(READERS))])
        else:
            await world.api().get("/v1/reports?limit=20", world.tokens[rng.choice(list(READERS))])
        await asyncio.sleep(rng.uniform(0, 0.01))


async def _stream(world: World, node: str, api: Api) -> None:
    """Read a stream until the broker closes it or the run ends, acking as it goes."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{api.base_url}/v1/stream?after=0", headers={"Authorization": f"Bearer {world.tokens[node]}"}
        )
        async with ws:
            while not world.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    message = await asyncio.wait_for(ws.receive(), 0.2)
                    if message.type != aiohttp.WSMsgType.TEXT:
                        return


async def _changes(world: World, root: str) -> None:
    rng = world.rng
    readers, publishers = rng.sample(list(READERS), 4), rng.sample(list(PUBLISHERS), 2)
    changes = [("revoke", readers[0]), ("revoke", readers[1]), ("revoke", publishers[0])]
    changes += [("rotate", readers[2]), ("demote", readers[3]), ("demote", publishers[1])]
    changes += [("leave", "TUR"), ("recall", ""), ("recall", ""), ("storm", "")]
    rng.shuffle(changes)
    for kind, target in changes:
        await asyncio.sleep(rng.uniform(0.1, RUN_SECONDS / (len(changes) + 1)))
        if kind == "revoke":
            await world.api().call("POST", f"/v1/admin/nodes/{target}/revoke", root)
        elif kind == "rotate":  # the test keeps the old token: it must stop working everywhere
            await world.api().call("POST", f"/v1/admin/nodes/{target}/rotate-token", root)
        elif kind == "demote":  # a reader keeps only publish, a publisher only subscribe
            roles = ["publish"] if target in READERS else ["subscribe"]
            await admin.update_node(world.apis[0].ctx, target, {"roles": roles}, actor="test")
        elif kind == "leave":
            await world.api().call("DELETE", f"/v1/admin/alliances/NATO/members/{target}", root)
        elif kind == "storm":  # a burst of recalls, each report twice (the repeats change nothing)
            for report, originator in rng.sample(world.published, min(5, len(world.published))) * 2:
                await world.api().call("POST", f"/v1/reports/{report}/recall", world.tokens[originator])
        elif world.published:
            report, originator = rng.choice(world.published)
            await world.api().call("POST", f"/v1/reports/{report}/recall", world.tokens[originator])


def violations(log: list[AuditEvent], nations: dict[str, str]) -> list[str]:
    """Allowed acts recorded after the change that forbids them."""
    revoked: dict[str, int] = {}  # revoked, or its token (the one the test holds) replaced
    demoted: dict[str, tuple[int, list[str]]] = {}
    left: dict[str, int] = {}
    recalled: dict[str, int] = {}
    found = []
    for event in log:
        d = event.draft
        if d.action in ("node_revoke", "token_rotate") and d.node is not None:
            revoked.setdefault(d.node, event.seq)
        elif d.action == "node_update" and d.node is not None and "roles" in d.details:
            demoted.setdefault(d.node, (event.seq, list(d.details["roles"])))
        elif d.action == "membership_leave" and d.nation is not None:
            left.setdefault(d.nation, event.seq)
        elif d.action == "recall" and d.decision == "allow" and d.report is not None:
            recalled.setdefault(d.report, event.seq)
        if (
            d.decision != "allow"
            or d.actor not in nations
            or d.action not in ("publish", "read", "deliver", "recall")
        ):
            continue
        if d.actor in revoked:
            found.append(f"{event.seq}: {d.actor} {d.action} after its revocation at {revoked[d.actor]}")
        needs = "publish" if d.action in ("publish", "recall") else "subscribe"
        if d.actor in demoted and needs not in demoted[d.actor][1]:
            found.append(f"{event.seq}: {d.actor} {d.action} after losing {needs} at {demoted[d.actor][0]}")
        if d.action in ("read", "deliver") and d.report in recalled:
            found.append(
                f"{event.seq}: {d.actor} {d.action} {d.report} after its recall at {recalled[d.report]}"
            )
        nation = nations[d.actor]
        if d.action in ("read", "deliver") and nation in left and nation not in ("USA", "CAN"):
            found.append(
                f"{event.seq}: {d.actor} ({nation}) {d.action} after {nation} left at {left[nation]}"
            )
    return found


@pytest.mark.parametrize("seed", [7, 2026])
async def test_no_act_is_accepted_after_the_change_that_forbids_it(
    start_server: StartServer, seed: int
) -> None:
    a, b = await start_server(), await start_server()  # two brokers, one database
    rng = random.Random(seed)
    nations = {**PUBLISHERS, **READERS}
    tokens = {node: await a.node(node, nation) for node, nation in nations.items()}
    root = await a.node("root", "BEL", roles=("admin",))
    world = World(apis=[a, b], tokens=tokens, rng=rng)
    for node in PUBLISHERS:
        world.published.append(((await a.publish(tokens[node], body(to=["NATO"])))[1]["id"], node))
    tasks = [asyncio.create_task(_actor(world)) for _ in range(6)]
    tasks += [asyncio.create_task(_stream(world, node, rng.choice([a, b]))) for node in READERS]
    changer = asyncio.create_task(_changes(world, root))
    await asyncio.sleep(RUN_SECONDS)
    await changer
    world.stop.set()
    await asyncio.gather(*tasks)
    async with a.ctx.db.transaction() as tx:
        log = await tx.events(limit=1_000_000)
    acts = [
        e for e in log if e.draft.decision == "allow" and e.draft.action in ("read", "deliver", "publish")
    ]
    kinds = ("node_revoke", "token_rotate", "node_update", "membership_leave", "recall")
    changes = [e for e in log if e.draft.action in kinds]
    # The run exercised both sides: three revocations, a rotation, two role changes and a
    # departure always happen (a recall may be refused when its originator was revoked first).
    assert len(acts) > 50 and len(changes) >= 7
    assert violations(log, nations) == []
