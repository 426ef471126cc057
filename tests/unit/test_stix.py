"""The pure STIX/TAXII helpers: markings, filters, versions, cursors."""

from __future__ import annotations

import pytest
import stix2
from hypothesis import given
from hypothesis import strategies as st

from broker.crypto import cursors
from broker.domain import stix
from broker.errors import BadRequest

LABEL = {"classification": "SECRET", "releasable_to": ["NATO", "SWE"], "caveats": ["CT-OPS"]}


def test_label_marking_is_deterministic_valid_stix_and_states_the_label() -> None:
    marking = stix.label_marking(LABEL)
    assert marking["id"] == stix.label_marking_id(dict(reversed(list(LABEL.items()))))
    assert marking["id"] != stix.label_marking_id({**LABEL, "caveats": []})
    statement = marking["extensions"][stix.LABEL_EXTENSION_ID]
    assert statement["releasable_to"] == ["NATO", "SWE"] and statement["caveats"] == ["CT-OPS"]
    for obj in [marking, *stix.fixed_objects(), *(stix.tlp_marking(t) for t in stix.TLP_ORDER)]:
        stix2.parse(obj, allow_custom=True)


@pytest.mark.parametrize(
    ("classification", "tlp", "expected"),
    [
        ("UNCLASSIFIED", None, "GREEN"),
        ("RESTRICTED", None, "AMBER"),
        ("CONFIDENTIAL", None, "AMBER+STRICT"),
        ("SECRET", None, "RED"),
        ("TOP_SECRET", "GREEN", "RED"),
        ("UNCLASSIFIED", "AMBER", "AMBER"),
        ("UNKNOWN", None, "RED"),
    ],
)
def test_tlp_map(classification: str, tlp: str | None, expected: str) -> None:
    assert stix.tlp_for({"classification": classification, "tlp": tlp}) == expected


def test_marked_keeps_existing_refs_once() -> None:
    obj = {
        "type": "indicator",
        "id": "indicator--" + "0" * 8 + "-0000-4000-8000-" + "0" * 12,
        "object_marking_refs": ["a"],
    }
    assert stix.marked(obj, ["a", "b"])["object_marking_refs"] == ["a", "b"]


def test_objects_of_bundles_single_objects_and_others() -> None:
    one = {"type": "indicator", "id": "indicator--11111111-1111-4111-8111-111111111111"}
    assert stix.objects_of({"type": "bundle", "id": "bundle--x", "objects": [one, {"type": "x"}]}) == [one]
    assert stix.objects_of(one) == [one]
    assert stix.objects_of({"type": "indicator", "pattern": "[x]"}) == []


def _entry(ident: str, version: str) -> stix.Entry:
    return stix.Entry({"id": ident, "type": "indicator"}, version, version, 1)


def test_select_versions() -> None:
    entries = [
        _entry("a", "2026-01-02T00:00:00Z"),
        _entry("a", "2026-01-01T00:00:00Z"),
        _entry("b", "2026-01-03T00:00:00Z"),
    ]
    assert [e.version for e in stix.select_versions(entries, ["last"])] == [
        entries[0].version,
        entries[2].version,
    ]
    assert [e.version for e in stix.select_versions(entries, ["first"])] == [
        entries[1].version,
        entries[2].version,
    ]
    assert len(stix.select_versions(entries, ["all"])) == 3
    assert stix.select_versions(entries, ["2026-01-01T00:00:00.000Z"]) == [entries[1]]


def test_filters_parse_and_refuse() -> None:
    filters = stix.parse_filters({"match[type]": "indicator,malware", "match[spec_version]": "2.1"})
    assert filters.types == {"indicator", "malware"} and filters.versions == ("last",)
    assert filters.matches({"type": "indicator", "id": "x"}) and not filters.matches({"type": "tool"})
    for bad in (
        {"match[id]": "nope"},
        {"match[version]": "later"},
        {"match[spec_version]": "3.0"},
        {"added_after": "x"},
    ):
        with pytest.raises(BadRequest):
            stix.parse_filters(bad)


KEY, OTHER_KEY = bytes(range(64)), bytes(range(1, 65))
BOUND = ("gbr", "c0ffee00-0000-4000-8000-000000000000")


@given(st.integers(0, stix.MAX_SEQ), st.integers(0, stix.MAX_INDEX))
def test_positions_round_trip(seq: int, index: int) -> None:
    position = stix.Position(seq, index)
    token = cursors.encode_position(position, key=KEY, bound=BOUND)
    assert cursors.decode_position(token, keys=[OTHER_KEY, KEY], bound=BOUND) == position
    assert token == cursors.encode_position(position, key=KEY, bound=BOUND)  # the same place, the same token


def test_a_cursor_is_bound_to_its_key_node_and_collection() -> None:
    token = cursors.encode_position(stix.Position(5, 1), key=KEY, bound=BOUND)
    for keys, bound in (([OTHER_KEY], BOUND), ([KEY], ("usa", BOUND[1])), ([KEY], (BOUND[0], "x"))):
        with pytest.raises(BadRequest):
            cursors.decode_position(token, keys=keys, bound=bound)


@pytest.mark.parametrize(
    "token",
    ["", "x", "djEuMS4", "djIuMS4y", "djEuLTEuMg", "a" * 100, "djEuOTIyMzM3MjAzNjg1NDc3NTgwOC4w", "=="],
)
def test_foreign_cursors_are_refused(token: str) -> None:
    with pytest.raises(BadRequest):
        cursors.decode_position(token, keys=[KEY], bound=BOUND)


def test_every_broker_marking_passes_the_oasis_validator_even_without_caveats() -> None:
    from stix2validator import ValidationOptions, validate_instance  # type: ignore[import-untyped]

    bare = {**LABEL, "caveats": []}
    assert "caveats" not in stix.label_marking(bare)["extensions"][stix.LABEL_EXTENSION_ID]
    for obj in [stix.label_marking(LABEL), stix.label_marking(bare), *stix.fixed_objects()]:
        result = validate_instance(obj, ValidationOptions(version="2.1"))
        assert result.is_valid, [str(e) for e in result.errors]
