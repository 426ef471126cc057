"""RFC 8785 canonical bytes and audit event hashing."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.crypto import merkle
from broker.crypto.chain import GENESIS, event_hash
from broker.domain.canonical import canonical
from broker.domain.records import AuditDraft, Head, event_document
from broker.errors import InvalidInput
from broker.services.audit import chain

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(max_size=10)
    | st.floats(min_value=-(2.0**52), max_value=2.0**52),  # I-JSON range, as RFC 8785 requires
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def test_rfc8785_examples() -> None:
    # RFC 8785 section 3.2.2 style: sorted keys by UTF-16 code units, shortest numbers, no spaces.
    assert canonical({"b": 2, "a": 1}) == b'{"a":1,"b":2}'
    assert canonical({"numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001]}) == (
        b'{"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27]}'
    )
    assert canonical({"\u20ac": 1, "\r": 2, "1": 3}) == '{"\\r":2,"1":3,"\u20ac":1}'.encode()
    assert canonical({"literals": [None, True, False]}) == b'{"literals":[null,true,false]}'


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**64, 2**53])
def test_uncanonicalisable_values_are_invalid_input(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        canonical({"x": bad})


@given(JSON)
def test_canonical_is_stable_under_reparse(value: Any) -> None:
    once = canonical(value)
    assert canonical(json.loads(once)) == once


# Every kind of value the fast path must get right or hand over: floats, integers at and beyond
# the exact range, control characters, non-BMP text and keys (UTF-16 order differs from code-point
# order there), lone surrogates, booleans (an int subclass).
ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**54), 2**54)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None), max_size=8)
    | st.sampled_from(["\ud800", "\u2028", "\x7f", "\x00\x1f", "\U0001f600", "\ue000"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(codec=None), max_size=4)
            | st.sampled_from(["\U0001f600", "\ue000", "\uffff", "a", "\ud7ff"]),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@given(ANY_JSON)
@settings(max_examples=500)
def test_canonical_equals_the_reference_implementation(value: Any) -> None:
    try:
        expected: bytes | None = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError):
        expected = None
    if expected is None:
        with pytest.raises(InvalidInput):
            canonical(value)
    else:
        assert canonical(value) == expected


def test_deep_nesting_is_invalid_input_not_a_crash() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidInput):
        canonical(deep)


def test_event_hash_is_rfc6962_leaf_of_canonical_event() -> None:
    draft = AuditDraft(action="read", actor="n1", report="r", decision="allow", reason="allowed")
    doc = event_document(seq=1, time=datetime(2026, 1, 1, tzinfo=UTC), draft=draft, prev_hash=GENESIS)
    assert event_hash(doc) == hashlib.sha256(b"\x00" + canonical(doc)).hexdigest()
    assert event_hash({**doc, "hash": "ignored"}) == event_hash(doc)


@given(st.lists(st.sampled_from(["publish", "read", "recall"]), min_size=1, max_size=20))
def test_chain_links_each_event_to_the_previous(actions: list[str]) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    head = Head(report_seq=0, audit_seq=0, audit_hash=GENESIS, change_counter=0)
    events, nodes, new_head = chain(head, [AuditDraft(action=a) for a in actions], now=now)
    assert merkle.root_of(new_head.frontier) == merkle.range_root(
        0, len(actions), {(lvl, idx): h for lvl, idx, h in nodes}
    )
    assert [e.seq for e in events] == list(range(1, len(actions) + 1))
    assert events[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
    assert new_head.audit_hash == events[-1].hash
    assert new_head.audit_seq == len(actions)
    altered = event_document(seq=1, time=now, draft=AuditDraft(action="tampered"), prev_hash=GENESIS)
    assert event_hash(altered) != events[0].hash
