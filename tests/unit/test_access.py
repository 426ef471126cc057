"""The access rule: one table row per reason code, and properties against a reference model."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.access import ReportFacts, Subject, decide
from broker.domain.alliances import Alliance, Directory, Membership
from broker.domain.labels import DEFAULT_POLICY
from tests.unit import access_worlds as worlds

LEVELS = DEFAULT_POLICY.levels
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def node(
    nation: str = "SWE",
    clearance: str = "SECRET",
    caveats: tuple[str, ...] = (),
    roles: tuple[str, ...] = ("subscribe",),
    revoked: bool = False,
) -> Subject:
    return Subject(
        id="n",
        nation=nation,
        clearance=clearance,
        caveats=frozenset(caveats),
        roles=frozenset(roles),
        revoked=revoked,
    )


def report(
    label: dict[str, Any], *, origin: str = "USA", created: datetime = T0, recalled: bool = False
) -> ReportFacts:
    return ReportFacts(originator_nation=origin, label=label, created=created, recalled=recalled)


def lab(
    classification: str = "SECRET",
    to: tuple[str, ...] = ("NATO",),
    caveats: tuple[str, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    return {"classification": classification, "releasable_to": list(to), "caveats": list(caveats), **extra}


NATO = Directory(
    alliances={"NATO": Alliance("NATO", "NATO"), "NEW": Alliance("NEW", "New", history="since-join")},
    memberships={
        "NATO": (
            Membership("NATO", "USA", datetime(1949, 8, 24, tzinfo=UTC)),
            Membership("NATO", "SWE", datetime(2024, 3, 7, tzinfo=UTC)),
            Membership(
                "NATO", "TUR", datetime(1952, 2, 18, tzinfo=UTC), left=datetime(2026, 3, 1, tzinfo=UTC)
            ),
            Membership("NATO", "UKR", datetime(2026, 5, 1, tzinfo=UTC)),
        ),
        "NEW": (Membership("NEW", "FIN", datetime(2026, 2, 1, tzinfo=UTC)),),
    },
)

TABLE = [
    ("allowed", node(), report(lab()), True, "allowed"),
    ("originator nation, not named", node("USA"), report(lab(to=())), True, "allowed"),
    ("nation named directly", node("NGA"), report(lab(to=("NGA",))), True, "allowed"),
    ("missing_role", node(roles=("publish",)), report(lab()), False, "missing_role"),
    ("node_revoked", node(revoked=True), report(lab()), False, "node_revoked"),
    (
        "insufficient_clearance",
        node(clearance="CONFIDENTIAL"),
        report(lab()),
        False,
        "insufficient_clearance",
    ),
    (
        "unknown clearance fails closed",
        node(clearance="COSMIC"),
        report(lab()),
        False,
        "insufficient_clearance",
    ),
    ("missing_caveat", node(caveats=("A",)), report(lab(caveats=("A", "B"))), False, "missing_caveat"),
    ("all caveats held", node(caveats=("A", "B", "C")), report(lab(caveats=("A", "B"))), True, "allowed"),
    ("not_releasable", node("NGA"), report(lab()), False, "not_releasable"),
    ("left the alliance", node("TUR"), report(lab()), False, "not_releasable"),
    ("joined later, full history", node("UKR"), report(lab()), True, "allowed"),
    ("joined later, since-join", node("FIN"), report(lab(to=("NEW",))), False, "not_releasable"),
    ("since-join, created after join", node("FIN"), report(lab(to=("NEW",)), created=NOW), True, "allowed"),
    ("recalled", node(), report(lab(), recalled=True), False, "recalled"),
    ("unknown_label_policy", node(), report(lab(policy="OTHER")), False, "unknown_label_policy"),
    ("unknown level", node(), report(lab(classification="COSMIC")), False, "unknown_label_policy"),
    ("invalid_label (extra key)", node(), report(lab(handling="x")), False, "invalid_label"),
    (
        "invalid_label (not a list)",
        node(),
        report({"classification": "SECRET", "releasable_to": "NATO"}),
        False,
        "invalid_label",
    ),
]


@pytest.mark.parametrize(("name", "subject", "facts", "allowed", "reason"), TABLE, ids=[t[0] for t in TABLE])
def test_reason_table(name: str, subject: Subject, facts: ReportFacts, allowed: bool, reason: str) -> None:
    decision = decide(node=subject, report=facts, directory=NATO, policy=DEFAULT_POLICY, now=NOW)
    assert (decision.allowed, decision.reason) == (allowed, reason)


def test_membership_is_judged_at_the_moment_of_decision() -> None:
    before_leaving = datetime(2026, 2, 1, tzinfo=UTC)
    facts = report(lab())
    assert decide(
        node=node("TUR"), report=facts, directory=NATO, policy=DEFAULT_POLICY, now=before_leaving
    ).allowed
    assert not decide(node=node("TUR"), report=facts, directory=NATO, policy=DEFAULT_POLICY, now=NOW).allowed
    before_joining = datetime(2026, 4, 1, tzinfo=UTC)
    assert not decide(
        node=node("UKR"), report=facts, directory=NATO, policy=DEFAULT_POLICY, now=before_joining
    ).allowed


# -- reference model ------------------------------------------------------------------------
NATIONS = ["USA", "GBR", "SWE", "FIN", "NGA"]
ALLIANCES = worlds.ALLIANCES
CAVEATS = worlds.CAVEATS


def reference(subject: Subject, facts: ReportFacts, directory: Directory, now: datetime) -> str:
    """An independent statement of DESIGN.md's rule (valid labels only)."""
    if subject.revoked or "subscribe" not in subject.roles:
        return "deny"
    if LEVELS.index(subject.clearance) < LEVELS.index(facts.label["classification"]):
        return "deny"
    if any(c not in subject.caveats for c in facts.label["caveats"]):
        return "deny"
    eligible = {facts.originator_nation} | set(facts.label["releasable_to"])
    for alliance in set(facts.label["releasable_to"]) & set(directory.alliances):
        for m in directory.memberships[alliance]:
            current = m.joined <= now and (m.left is None or now < m.left)
            history_ok = directory.alliances[alliance].history == "full" or m.joined <= facts.created
            if current and history_ok:
                eligible.add(m.nation)
    if subject.nation not in eligible:
        return "deny"
    return "deny" if facts.recalled else "allow"


def world(rng: random.Random) -> tuple[Subject, ReportFacts, Directory, datetime]:
    subject = Subject(
        id="n",
        nation=rng.choice(NATIONS),
        clearance=worlds.clearance(rng, LEVELS),
        caveats=frozenset(worlds.subset(rng, CAVEATS)),
        roles=worlds.roles(rng, "subscribe", ["publish", "audit"]),
        revoked=worlds.rarely(rng),
    )
    directory = worlds.directory(rng, NATIONS)
    facts = worlds.report(rng, NATIONS, LEVELS, directory, subject.nation)
    return subject, facts, directory, worlds.moment(rng, directory, subject.nation)


WORLDS = worlds.SEEDS.map(world)


@settings(max_examples=2000, deadline=None)
@given(WORLDS)
def test_decide_matches_reference_model(world: tuple[Subject, ReportFacts, Directory, datetime]) -> None:
    subject, facts, directory, now = world
    decision = decide(node=subject, report=facts, directory=directory, policy=DEFAULT_POLICY, now=now)
    assert ("allow" if decision.allowed else "deny") == reference(subject, facts, directory, now)
    assert decision.allowed == (decision.reason == "allowed")


@settings(max_examples=500, deadline=None)
@given(WORLDS, st.sampled_from(LEVELS))
def test_raising_clearance_never_removes_access(
    world: tuple[Subject, ReportFacts, Directory, datetime], higher: str
) -> None:
    subject, facts, directory, now = world
    if LEVELS.index(higher) < LEVELS.index(subject.clearance):
        return
    before = decide(node=subject, report=facts, directory=directory, policy=DEFAULT_POLICY, now=now)
    raised = Subject(**{**subject.__dict__, "clearance": higher})
    after = decide(node=raised, report=facts, directory=directory, policy=DEFAULT_POLICY, now=now)
    assert after.allowed or not before.allowed


def test_policy_can_require_sealing_at_or_above_a_level() -> None:
    from broker.domain.labels import Policy

    policy = Policy(id="ALLIANCE-BROKER", levels=LEVELS, require_sealing_at_or_above="SECRET")
    keyless = node(clearance="TOP_SECRET")
    keyed = Subject(**{**keyless.__dict__, "can_open_sealed": True})
    for level, keyless_reason in (
        ("CONFIDENTIAL", "allowed"),
        ("SECRET", "sealing_required"),
        ("TOP_SECRET", "sealing_required"),
    ):
        facts = report(lab(level))
        assert (
            decide(node=keyless, report=facts, directory=NATO, policy=policy, now=NOW).reason
            == keyless_reason
        )
        assert decide(node=keyed, report=facts, directory=NATO, policy=policy, now=NOW).allowed
