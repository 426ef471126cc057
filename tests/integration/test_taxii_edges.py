"""TAXII's date parameters at the ends of what a date can hold, sent to every read endpoint on both
engines. The fuzzer (test_taxii_fuzz.py) draws such values only now and then; these are where
arithmetic on a parsed date (a microsecond added to the end of year 9999, an hour taken from the
start of year 1) or a comparison in the database would answer 500 instead of 400 or a page."""

from __future__ import annotations

from urllib.parse import quote

from tests.integration.conftest import Api
from tests.integration.test_taxii import collection_id, indicator, publish, raw

EDGE_DATES = (
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59.999Z",
    "9999-12-31",
    "9999-12-31T23:59:59-01:00",  # past the end once in UTC: refused
    "0001-01-01T00:00:00Z",
    "0001-01-01",
    "0001-01-01T00:00:00+01:00",  # before the start once in UTC: refused
    "2026-11-25T12:00:00.000Z",
)
# Once converted to UTC these leave years 1-9999: no moment a datetime holds.
UNREPRESENTABLE = {"9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"}


async def test_edge_dates_answer_a_page_or_400_on_every_taxii_read(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    cid = await collection_id(api)
    stored = indicator(1)  # its version (modified) is 2026-01-01; it is added at the test clock's now
    await publish(api, usa, stored)
    base = f"/taxii2/api/collections/{cid}/"
    paths = {
        "objects": base + "objects/",
        "manifest": base + "manifest/",
        "by id": base + f"objects/{stored['id']}/",
        "versions": base + f"objects/{stored['id']}/versions/",
    }
    for name, path in paths.items():
        # The versions endpoint takes no match[version]; the object's own version is the control
        # that shows match[version] finds what it names.
        tried = [("added_after", date) for date in EDGE_DATES]
        if name != "versions":
            tried += [("match[version]", date) for date in (*EDGE_DATES, stored["modified"])]
        for parameter, date in tried:
            status, _headers, answer = await raw(api, "GET", f"{path}?{parameter}={quote(date)}", token=usa)
            if date in UNREPRESENTABLE:
                assert status == 400, (name, parameter, date, status, answer)
                continue
            assert status == 200, (name, parameter, date, status, answer)
            shown = bool(answer.get("objects") or answer.get("versions"))
            # Only dates in year 1 come before the report was added; only its own version matches.
            expected = date.startswith("0001") if parameter == "added_after" else date == stored["modified"]
            assert shown == expected, (name, parameter, date, answer)
