"""Status resources and date headers as TAXII 2.1 states them (issue 22 findings 7 and 8)."""

from __future__ import annotations

import json
import re
import uuid

from sqlalchemy import text

from broker.domain import stix as ours
from tests.conftest import FakeClock
from tests.integration.conftest import Api
from tests.integration.helpers import report_count
from tests.integration.test_taxii import TAXII, collection_id, indicator, raw

MICROSECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


async def test_status_failures_carry_versions_no_empty_lists_and_one_version_per_object(
    api: Api, clock: FakeClock
) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    base = f"/taxii2/api/collections/{cid}/"
    address = {
        "type": "ipv4-addr",
        "spec_version": "2.1",
        "id": f"ipv4-addr--{uuid.uuid4()}",
        "value": "198.51.100.9",
    }
    broken = indicator(2) | {"pattern_type": 5}
    headers = {"Content-Type": TAXII}
    # A report before: this one is stamped just after it while the clock stands still.
    for envelope in ({"objects": [indicator(1)]}, {"objects": [address, broken]}):
        data = json.dumps(envelope).encode()
        status, _, answer = await raw(api, "POST", base + "objects/", token=usa, headers=headers, data=data)
        assert status == 202, answer
    clock.advance(seconds=3)  # the status is read later: its versions must not move with the clock
    status, _, polled = await raw(api, "GET", f"/taxii2/api/status/{answer['id']}/", token=usa)
    assert status == 200
    for outcome in (answer, polled):
        assert "pendings" not in outcome and outcome["pending_count"] == 0
        assert all(value != [] for value in outcome.values())
        assert [f["id"] for f in outcome["failures"]] == [broken["id"]]
        assert all(isinstance(f["version"], str) and f["version"] for f in outcome["failures"])
        assert [s["id"] for s in outcome["successes"]] == [address["id"]]
    version = polled["successes"][0]["version"]
    status, _, manifest = await raw(api, "GET", f"{base}manifest/?match[id]={address['id']}", token=usa)
    assert [m["version"] for m in manifest["objects"]] == [version]
    status, _, versions = await raw(api, "GET", f"{base}objects/{address['id']}/versions/", token=usa)
    assert versions["versions"] == [version]


async def test_every_date_header_has_microseconds(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    base = f"/taxii2/api/collections/{cid}/objects/"
    for fixed in (ours.TLP_IDS["RED"], ours.BROKER_IDENTITY_ID, ours.LABEL_EXTENSION_ID):
        status, headers, _ = await raw(api, "GET", f"{base}{fixed}/", token=usa)
        assert status == 200
        for name in ("X-TAXII-Date-Added-First", "X-TAXII-Date-Added-Last"):
            assert MICROSECONDS.fullmatch(headers[name]), (fixed, headers[name])


REFUSE_STATUS = {
    "postgresql": [
        "CREATE FUNCTION refuse_status() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected status failure'; END $$",
        "CREATE TRIGGER refuse_status BEFORE INSERT ON taxii_statuses "
        "FOR EACH ROW EXECUTE FUNCTION refuse_status()",
    ],
    "sqlite": [
        "CREATE TRIGGER refuse_status BEFORE INSERT ON taxii_statuses "
        "BEGIN SELECT RAISE(ABORT, 'injected status failure'); END"
    ],
}


async def test_a_status_that_cannot_be_stored_stores_no_report_either(api: Api) -> None:
    """The status resource is written in the publish's transaction (issue 21, finding 6): when
    it fails, the report is not stored either, and the POST is not answered 202."""
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    path = f"/taxii2/api/collections/{cid}/objects/"
    data = json.dumps({"objects": [indicator(1)]}).encode()
    before = await report_count(api.ctx)
    dialect = api.ctx.db.engine.dialect.name
    async with api.ctx.db.engine.begin() as connection:
        for statement in REFUSE_STATUS[dialect]:
            await connection.execute(text(statement))
    status, _, _ = await raw(api, "POST", path, token=usa, headers={"Content-Type": TAXII}, data=data)
    assert status >= 500
    assert await report_count(api.ctx) == before  # no report without its status
    async with api.ctx.db.engine.begin() as connection:
        await connection.execute(
            text("DROP TRIGGER refuse_status" + (" ON taxii_statuses" if dialect == "postgresql" else ""))
        )
    status, _, answer = await raw(api, "POST", path, token=usa, headers={"Content-Type": TAXII}, data=data)
    assert status == 202, answer
    assert await report_count(api.ctx) == before + 1
    status, _, polled = await raw(api, "GET", f"/taxii2/api/status/{answer['id']}/", token=usa)
    assert (status, polled) == (200, answer)
