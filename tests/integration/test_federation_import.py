"""What an imported report is at the receiving broker, beyond the import itself: its place in
TAXII's time (``date_added`` follows this broker's sequence, whatever ``created`` the origin
attested), and its originator (shown as foreign, never able to authenticate).

The upstream is a test double speaking the stream protocol over mutual TLS, signing as an origin
broker would (tests/integration/federation.py), so the test chooses each report's ``created``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from tests.integration.conftest import Api
from tests.integration.federation import Originator, Upstream, import_frames, report_frame
from tests.integration.test_taxii import bundle, collection_id, indicator, raw

NATO = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}
UPSTREAM = Upstream("usa.example/broker")


async def _objects(api: Api, token: str, cid: str, query: str) -> tuple[list[str], str | None]:
    status, headers, answer = await raw(
        api, "GET", f"/taxii2/api/collections/{cid}/objects/{query}", token=token
    )
    assert status == 200, answer
    return [o["id"] for o in answer.get("objects", []) if o["type"] == "indicator"], headers.get(
        "X-TAXII-Date-Added-Last"
    )


async def test_a_taxii_poller_resuming_by_added_after_sees_an_import_older_than_what_it_saw(
    api: Api, tmp_path: Path
) -> None:
    """The origin attested ``created`` for each report; the second is an hour older than the
    first (published at the origin earlier, or by a broker whose clock is behind). A poller that
    read the first and resumes with ``added_after`` = its ``date_added`` still gets the second,
    and each report keeps the ``created`` its origin attested."""
    cid = await collection_id(api)
    fra = await api.node("fra-1", "FRA", roles=("subscribe",))
    usa = Originator("usa-analyst", "USA")
    first, second = indicator(1), indicator(2)
    newer = report_frame(
        UPSTREAM, usa, sequence=1, label=NATO, payload=bundle(first), created="2026-11-25T12:10:00+00:00"
    )
    older = report_frame(
        UPSTREAM, usa, sequence=2, label=NATO, payload=bundle(second), created="2026-11-25T11:00:00+00:00"
    )
    await import_frames(api.ctx, tmp_path, [newer], vkey=UPSTREAM.vkey)
    seen, last = await _objects(api, fra, cid, "")
    assert seen == [first["id"]] and last is not None
    await import_frames(api.ctx, tmp_path / "again", [newer, older], vkey=UPSTREAM.vkey, name="usa-again")

    resumed, after = await _objects(api, fra, cid, f"?added_after={quote(last)}")
    assert resumed == [second["id"]]
    assert after is not None and after > last
    status, _, manifest = await raw(api, "GET", f"/taxii2/api/collections/{cid}/manifest/", token=fra)
    assert status == 200, manifest
    added = {m["id"]: m["date_added"] for m in manifest["objects"]}
    assert added[second["id"]] > added[first["id"]]
    for frame in (newer, older):  # the report itself keeps what its origin attested
        status, doc = await api.get(f"/v1/reports/{frame['report']['id']}", fra)
        assert status == 200 and doc["created"].startswith(frame["report"]["created"][:19])
