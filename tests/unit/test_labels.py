"""Label parsing fails closed and names the problem."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.domain.labels import DEFAULT_POLICY, Policy, parse_label
from broker.domain.nations import NATIONS
from broker.errors import InvalidInput

KNOWN = ["NATO", "FVEY"]


def parse(raw: Any) -> Any:
    return parse_label(raw, policy=DEFAULT_POLICY, known_alliances=KNOWN)


def test_valid_label() -> None:
    label = parse(
        {
            "policy": "ALLIANCE-BROKER",
            "classification": "SECRET",
            "releasable_to": ["NATO", "SWE"],
            "caveats": ["CT-OPS"],
            "tlp": "AMBER+STRICT",
        }
    )
    assert label.classification == "SECRET"
    assert label.releasable_to == {"NATO", "SWE"}
    assert label.caveats == {"CT-OPS"}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "invalid_label"),
        ([], "invalid_label"),
        ({}, "unknown_classification"),
        ({"classification": "secret"}, "unknown_classification"),
        ({"classification": "SECRET", "policy": "NATO-X"}, "unknown_label_policy"),
        ({"classification": "SECRET", "releasable_to": ["XXX"]}, "unknown_releasability"),
        ({"classification": "SECRET", "releasable_to": ["SEATO"]}, "unknown_releasability"),
        ({"classification": "SECRET", "releasable_to": ["nato"]}, "unknown_releasability"),
        ({"classification": "SECRET", "releasable_to": "NATO"}, "invalid_label"),
        ({"classification": "SECRET", "releasable_to": [1]}, "invalid_label"),
        ({"classification": "SECRET", "caveats": ["bad caveat"]}, "invalid_label"),
        ({"classification": "SECRET", "tlp": "WHITE"}, "invalid_label"),
        ({"classification": "SECRET", "handling": "eyes only"}, "invalid_label"),
        ({"classification": "SECRET", "releasable_to": ["USA"] * 301}, "invalid_label"),
    ],
)
def test_bad_labels(raw: Any, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(raw)
    assert info.value.code == code
    assert info.value.status == 422


@given(st.dictionaries(st.text(max_size=12), st.none() | st.text(max_size=8) | st.lists(st.text(max_size=4))))
def test_arbitrary_objects_parse_or_fail_with_422(raw: dict[str, Any]) -> None:
    try:
        label = parse(raw)
    except InvalidInput as exc:
        assert exc.status == 422  # noqa: PT017 -- a property: either outcome is fine, each checked
    else:
        assert label.classification in DEFAULT_POLICY.levels
        assert all(e in NATIONS or e in KNOWN for e in label.releasable_to)


def test_policy_rejects_bad_levels() -> None:
    with pytest.raises(ValueError, match="repeats"):
        Policy(id="p", levels=("A", "A"))
    with pytest.raises(ValueError, match="not a level"):
        Policy(id="p", levels=("A",), require_sealing_at_or_above="B")
    assert DEFAULT_POLICY.rank("TOP_SECRET") == 4
    with pytest.raises(KeyError):
        DEFAULT_POLICY.rank("COSMIC")
