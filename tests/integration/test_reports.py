"""Publish, read, list and recall over a real server, with every decision audited."""

from __future__ import annotations

import itertools
import uuid

import pytest

from broker.domain.ids import scoped_report_id
from tests.conftest import FakeClock
from tests.integration.conftest import Api
from tests.integration.helpers import body, events, report_count


async def test_publish_then_read_by_an_ally(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    sent = body(to=["NATO", "SWE"])
    sent["label"]["tlp"] = "AMBER"
    status, receipt = await api.publish(usa, sent)
    assert status == 201
    assert set(receipt) == {"id", "sequence", "created"}
    assert receipt["sequence"] == 1
    status, got = await api.get(f"/v1/reports/{receipt['id']}", swe)
    assert status == 200
    assert got["label"] == sent["label"]  # kept exactly as sent
    assert list(got["label"]) == list(sent["label"])
    assert got["payload"] == sent["payload"]
    assert got["originator"] == {"node": "usa-1", "nation": "USA"}
    assert got["sequence"] == 1
    assert got["topics"] == ["ransomware"]
    assert got["signature"] is None
    log = await events(api.ctx, report=receipt["id"])
    assert [(e["action"], e["decision"], e["node"]) for e in log] == [
        ("publish", "allow", "usa-1"),
        ("read", "allow", "swe-1"),
    ]


async def test_a_node_that_may_not_see_gets_404_and_the_denial_is_audited(api: Api) -> None:
    usa, nga = await api.node("usa-1", "USA"), await api.node("nga-1", "NGA")
    _, receipt = await api.publish(usa, body())
    missing = str(uuid.uuid4())
    denied = await api.get(f"/v1/reports/{receipt['id']}", nga)
    absent = await api.get(f"/v1/reports/{missing}", nga)
    assert denied[0] == absent[0] == 404
    assert denied[1]["type"] == absent[1]["type"] == "urn:alliance-broker:problem:not_found"
    assert denied[1]["detail"] == absent[1]["detail"]  # nothing tells the two apart
    log = await events(api.ctx, node="nga-1", action="read")
    assert [(e["report"], e["decision"], e["reason"]) for e in log] == [
        (receipt["id"], "deny", "not_releasable"),
        (missing, "deny", "not_found"),
    ]


NATIONS = {"USA": "originator", "SWE": "NATO member", "NGA": "not in NATO"}
LEVELS = ["CONFIDENTIAL", "SECRET"]
CAVEAT_SETS: list[list[str]] = [[], ["CT-OPS"]]
RELEASES: list[list[str]] = [["NATO"], ["NGA"], []]


async def test_clearance_caveat_releasability_matrix(api: Api) -> None:
    publisher = await api.node("usa-pub", "USA", clearance="TOP_SECRET", caveats=("CT-OPS",))
    reports = {}
    for level, caveats, release in itertools.product(LEVELS, CAVEAT_SETS, RELEASES):
        status, receipt = await api.publish(publisher, body(level, release, caveats))
        assert status == 201
        reports[receipt["id"]] = (level, caveats, release)
    for nation, clearance, held in itertools.product(NATIONS, LEVELS, CAVEAT_SETS):
        node_id = f"{nation}-{clearance}-{len(held)}".lower()
        token = await api.node(node_id, nation, clearance=clearance, caveats=tuple(held))
        for report_id, (level, caveats, release) in reports.items():
            cleared = LEVELS.index(clearance) >= LEVELS.index(level) and set(caveats) <= set(held)
            releasable = nation == "USA" or nation in release or ("NATO" in release and nation == "SWE")
            status, _ = await api.get(f"/v1/reports/{report_id}", token)
            assert status == (200 if cleared and releasable else 404), (node_id, level, caveats, release)
        _, page = await api.get("/v1/reports?limit=100", token)
        expected = {
            rid
            for rid, (level, caveats, release) in reports.items()
            if LEVELS.index(clearance) >= LEVELS.index(level)
            and set(caveats) <= set(held)
            and (nation == "USA" or nation in release or ("NATO" in release and nation == "SWE"))
        }
        assert {r["id"] for r in page["reports"]} == expected


async def test_membership_changes_apply_to_the_next_decision(api: Api, clock: FakeClock) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    admin = await api.node("admin", "BEL", roles=("admin",))
    _, receipt = await api.publish(usa, body())
    path = f"/v1/reports/{receipt['id']}"
    assert (await api.get(path, swe))[0] == 200
    assert (await api.call("DELETE", "/v1/admin/alliances/NATO/members/SWE", admin))[0] == 200
    assert (await api.get(path, swe))[0] == 404
    status, joined = await api.call("PUT", "/v1/admin/alliances/NATO/members/SWE", admin)
    assert status == 201
    assert joined["nation"] == "SWE"
    assert (await api.get(path, swe))[0] == 200  # full history: sees what was released before
    assert (await api.call("PUT", "/v1/admin/alliances/NATO/members/SWE", admin))[0] == 409
    assert (await api.call("PUT", "/v1/admin/alliances/NATO/members/XXX", admin))[0] == 422
    assert (await api.call("PUT", "/v1/admin/alliances/NOPE/members/SWE", admin))[0] == 404
    assert (await api.call("DELETE", "/v1/admin/alliances/NATO/members/NGA", admin))[0] == 404
    actions = [e["action"] for e in await events(api.ctx) if e["action"].startswith("membership")]
    assert actions == ["membership_leave", "membership_join"]


async def test_since_join_alliance_hides_earlier_reports(api: Api, clock: FakeClock) -> None:
    from broker.services import alliances

    await alliances.create_alliance(api.ctx, "NORDEFCO", name="Nordic", history="since-join", actor="t")
    await alliances.join(api.ctx, "NORDEFCO", "NOR", at=None, actor="t")
    nor, fin = await api.node("nor-1", "NOR"), await api.node("fin-1", "FIN")
    _, before = await api.publish(nor, body(to=["NORDEFCO"]))
    clock.advance(minutes=1)
    await alliances.join(api.ctx, "NORDEFCO", "FIN", at=None, actor="t")
    clock.advance(minutes=1)
    _, after = await api.publish(nor, body(to=["NORDEFCO"]))
    assert (await api.get(f"/v1/reports/{before['id']}", fin))[0] == 404
    assert (await api.get(f"/v1/reports/{after['id']}", fin))[0] == 200


async def test_recall_by_originator_only(api: Api) -> None:
    usa, gbr, nga = (
        await api.node("usa-1", "USA"),
        await api.node("gbr-1", "GBR"),
        await api.node("nga-1", "NGA"),
    )
    _, receipt = await api.publish(usa, body())
    recall = f"/v1/reports/{receipt['id']}/recall"
    assert (await api.call("POST", recall, gbr))[0] == 403  # can see it, is not the originator
    assert (await api.call("POST", recall, nga))[0] == 404  # cannot see it: existence not revealed
    assert await api.call("POST", recall, usa) == (200, {"id": receipt["id"], "recalled": True})
    assert (await api.get(f"/v1/reports/{receipt['id']}", gbr))[0] == 404
    assert (await api.get(f"/v1/reports/{receipt['id']}", usa))[0] == 404
    reasons = [
        (e["node"], e["reason"])
        for e in await events(api.ctx, report=receipt["id"])
        if e["decision"] == "deny"
    ]
    assert ("gbr-1", "not_originator") in reasons
    assert ("nga-1", "not_found") in reasons
    assert ("gbr-1", "recalled") in reasons


async def test_listing_pages_by_sequence_and_filters_topics(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    ids = []
    for i in range(7):
        topic = "phishing" if i % 2 else "ransomware"
        release = ["NATO"] if i != 3 else ["USA"]
        ids.append((await api.publish(usa, body(to=release, topics=[topic])))[1]["id"])
    seen, after = [], 0
    while True:
        status, page = await api.get(f"/v1/reports?after={after}&limit=2", swe)
        assert status == 200
        seen += [r["id"] for r in page["reports"]]
        if not page["reports"] and page["next_after"] == after:
            break
        after = page["next_after"]
    assert seen == [rid for i, rid in enumerate(ids) if i != 3]
    _, phishing = await api.get("/v1/reports?topics=phishing&limit=50", swe)
    assert [r["id"] for r in phishing["reports"]] == [ids[1], ids[5]]
    for bad in ("after=-1", "limit=0", "limit=100000", "after=x", "topics=BAD TOPIC"):
        status, problem = await api.get(f"/v1/reports?{bad}", swe)
        assert status == 400 and problem["type"].endswith("invalid_parameter"), bad


@pytest.mark.parametrize(
    ("label", "status", "code"),
    [
        ({"classification": "TOP_SECRET", "releasable_to": ["NATO"]}, 403, "label_above_clearance"),
        ({"classification": "SECRET", "caveats": ["CT-OPS"]}, 403, "caveat_not_held"),
        ({"classification": "SECRET", "releasable_to": ["XXX"]}, 422, "unknown_releasability"),
        ({"classification": "SECRET", "releasable_to": ["SEATO"]}, 422, "unknown_releasability"),
        ({"classification": "COSMIC"}, 422, "unknown_classification"),
        ({"classification": "SECRET", "policy": "OTHER"}, 422, "unknown_label_policy"),
    ],
)
async def test_publish_refusals_store_nothing_and_are_audited(
    api: Api, label: dict[str, object], status: int, code: str
) -> None:
    usa = await api.node("usa-1", "USA")
    got_status, problem = await api.publish(usa, {"label": label, "payload": {"x": 1}})
    assert (got_status, problem["type"]) == (status, f"urn:alliance-broker:problem:{code}")
    assert await report_count(api.ctx) == 0
    assert [(e["action"], e["decision"], e["reason"]) for e in await events(api.ctx, action="publish")] == [
        ("publish", "deny", code)
    ]


async def test_idempotency_key_and_client_ids(api: Api) -> None:
    usa, gbr = await api.node("usa-1", "USA"), await api.node("gbr-1", "GBR")
    key = {"Idempotency-Key": "abc-1"}
    first = await api.publish(usa, body(), headers=key)
    again = await api.publish(usa, body(), headers=key)
    assert first == again
    assert first[0] == 201
    other = await api.publish(usa, body(topics=["other"]), headers=key)
    assert other[0] == 409
    assert other[1]["type"].endswith("idempotency_key_reused")
    assert (await api.publish(gbr, body(), headers=key))[0] == 201  # keys are per node
    denied = await events(api.ctx, action="publish", decision="deny")
    assert [e["reason"] for e in denied] == ["idempotency_key_reused"]  # conflicts are audited
    chosen = str(uuid.uuid4()).upper()  # any spelling of the UUID: the node's scope of its canonical form
    with_id = {**body(), "id": chosen}
    stored = scoped_report_id(node_id="usa-1", client_id=chosen.lower())
    assert (await api.publish(usa, with_id))[1]["id"] == stored
    assert (await api.publish(usa, with_id))[1]["id"] == stored
    # Another node choosing the same id gets a report of its own: no 409 that would reveal usa-1's.
    status, theirs = await api.publish(gbr, with_id)
    assert status == 201 and theirs["id"] not in (stored, chosen.lower())
    assert await report_count(api.ctx) == 4
