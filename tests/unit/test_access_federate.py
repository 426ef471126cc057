"""The access rule for federation links (role ``federate``): a table of reasons, and a property
test against an independent reference model of federation-design's rule."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.access import ReportFacts, Subject, decide
from broker.domain.alliances import Alliance, Directory, Membership
from broker.domain.labels import DEFAULT_POLICY, Policy
from tests.unit import access_worlds as worlds

LEVELS = DEFAULT_POLICY.levels
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)

DIRECTORY = Directory(
    alliances={
        "NATO": Alliance("NATO", "NATO"),
        "FVEY": Alliance("FVEY", "Five Eyes"),
        "NEW": Alliance("NEW", "New", history="since-join"),
    },
    memberships={
        "NATO": (
            Membership("NATO", "USA", datetime(1949, 8, 24, tzinfo=UTC)),
            Membership("NATO", "FRA", datetime(1949, 8, 24, tzinfo=UTC)),
            Membership("NATO", "GBR", datetime(1949, 8, 24, tzinfo=UTC)),
            Membership(
                "NATO", "TUR", datetime(1952, 2, 18, tzinfo=UTC), left=datetime(2026, 3, 1, tzinfo=UTC)
            ),
        ),
        "FVEY": (
            Membership("FVEY", "USA", datetime(1946, 3, 5, tzinfo=UTC)),
            Membership("FVEY", "GBR", datetime(1946, 3, 5, tzinfo=UTC)),
        ),
        "NEW": (Membership("NEW", "FIN", datetime(2026, 2, 1, tzinfo=UTC)),),
    },
)


def link(
    audience: tuple[str, ...] = ("NATO",),
    *,
    nation: str = "BEL",
    clearance: str = "SECRET",
    caveats: tuple[str, ...] = (),
    origins: tuple[str, ...] = ("USA",),
    roles: tuple[str, ...] = ("federate",),
    revoked: bool = False,
    can_open_sealed: bool = False,
) -> Subject:
    return Subject(
        id="link",
        nation=nation,
        clearance=clearance,
        caveats=frozenset(caveats),
        roles=frozenset(roles),
        revoked=revoked,
        can_open_sealed=can_open_sealed,
        audience=frozenset(audience),
        origins=frozenset(origins),
    )


def report(
    classification: str = "SECRET",
    to: tuple[str, ...] = ("NATO",),
    caveats: tuple[str, ...] = (),
    *,
    origin: str = "USA",
    created: datetime = T0,
    recalled: bool = False,
) -> ReportFacts:
    label = {"classification": classification, "releasable_to": list(to), "caveats": list(caveats)}
    return ReportFacts(originator_nation=origin, label=label, created=created, recalled=recalled)


TABLE: list[tuple[str, Subject, ReportFacts, str]] = [
    ("alliance audience, alliance named", link(), report(), "allowed"),
    ("REL USA,GBR never reaches a NATO link", link(), report(to=("USA", "GBR")), "not_releasable"),
    ("alliance audience only by literal name", link(("NATO",)), report(to=("FRA",)), "not_releasable"),
    ("nation audience through an alliance", link(("FRA",)), report(to=("NATO",)), "allowed"),
    ("nation audience named directly", link(("FRA",)), report(to=("FRA",)), "allowed"),
    ("nation audience not a member", link(("FRA",)), report(to=("FVEY",)), "not_releasable"),
    ("one audience entry suffices", link(("FVEY", "FRA")), report(to=("FVEY",)), "allowed"),
    ("nation audience that left", link(("TUR",)), report(), "not_releasable"),
    ("since-join for a nation audience", link(("FIN",)), report(to=("NEW",)), "not_releasable"),
    ("since-join, created after", link(("FIN",)), report(to=("NEW",), created=NOW), "allowed"),
    (
        "no originator's-own-nation clause (link nation USA)",
        link(("FRA",), nation="USA"),
        report(to=("GBR",)),
        "not_releasable",
    ),
    (
        "no originator's-own-nation clause (audience USA)",
        link(("USA",)),
        report(to=(), origin="USA"),
        "not_releasable",
    ),
    (
        "the link's own nation does not count",
        link(("FRA",), nation="GBR"),
        report(to=("GBR",)),
        "not_releasable",
    ),
    ("TOP_SECRET not to a SECRET link", link(), report("TOP_SECRET"), "insufficient_clearance"),
    ("caveat not held", link(), report(caveats=("CT-OPS",)), "missing_caveat"),
    ("caveat held", link(caveats=("CT-OPS",)), report(caveats=("CT-OPS",)), "allowed"),
    ("origin not carried", link(origins=("USA",)), report(origin="GBR"), "origin_not_carried"),
    ("revoked", link(revoked=True), report(), "node_revoked"),
    ("subscribe is not federate", link(roles=("subscribe",)), report(), "missing_role"),
    ("recalled", link(), report(recalled=True), "recalled"),
    ("empty audience", link(()), report(), "not_releasable"),
]


@pytest.mark.parametrize(("name", "subject", "facts", "reason"), TABLE, ids=[t[0] for t in TABLE])
def test_federate_reason_table(name: str, subject: Subject, facts: ReportFacts, reason: str) -> None:
    decision = decide(
        node=subject, report=facts, directory=DIRECTORY, policy=DEFAULT_POLICY, now=NOW, role="federate"
    )
    assert (decision.allowed, decision.reason) == (reason == "allowed", reason)


def test_sealed_only_levels_never_cross_a_link_key_or_no_key() -> None:
    policy = Policy(id="ALLIANCE-BROKER", levels=LEVELS, require_sealing_at_or_above="TOP_SECRET")
    for keyed in (False, True):
        subject = link(clearance="TOP_SECRET", can_open_sealed=keyed)
        for level, reason in (("SECRET", "allowed"), ("TOP_SECRET", "sealing_required")):
            decision = decide(
                node=subject,
                report=report(level),
                directory=DIRECTORY,
                policy=policy,
                now=NOW,
                role="federate",
            )
            assert decision.reason == reason


def test_an_ordinary_decision_ignores_audience_and_origins() -> None:
    """The same subject decided as a subscriber is judged by its nation (so a link node that
    also held subscribe would be an ordinary node of its nation: the CLI refuses the mix)."""
    subject = link(("NATO",), nation="USA", roles=("federate", "subscribe"))
    facts = report(to=("GBR",))
    assert decide(node=subject, report=facts, directory=DIRECTORY, policy=DEFAULT_POLICY, now=NOW).allowed
    federated = decide(
        node=subject, report=facts, directory=DIRECTORY, policy=DEFAULT_POLICY, now=NOW, role="federate"
    )
    assert federated.reason == "not_releasable"


# -- reference model ------------------------------------------------------------------------
NATIONS = ["USA", "GBR", "FRA", "FIN"]
ALLIANCES = worlds.ALLIANCES
CAVEATS = worlds.CAVEATS


def members_at(directory: Directory, alliance: str, now: datetime, created: datetime) -> set[str]:
    found = set()
    for m in directory.memberships.get(alliance, ()):
        current = m.joined <= now and (m.left is None or now < m.left)
        history_ok = directory.alliances[alliance].history == "full" or m.joined <= created
        if current and history_ok:
            found.add(m.nation)
    return found


def reference(subject: Subject, facts: ReportFacts, directory: Directory, now: datetime) -> str:
    """federation-design.md's rule, stated independently (valid labels, policy without sealing)."""
    label: dict[str, Any] = dict(facts.label)
    if subject.revoked or "federate" not in subject.roles:
        return "deny"
    if LEVELS.index(subject.clearance) < LEVELS.index(label["classification"]):
        return "deny"
    if not set(label["caveats"]) <= subject.caveats:
        return "deny"
    if facts.originator_nation not in subject.origins:
        return "deny"
    named = set(label["releasable_to"])
    reached = set(named)  # nations named, and alliances named literally
    for alliance in named & set(directory.alliances):
        reached |= members_at(directory, alliance, now, facts.created)
    if not subject.audience & reached:
        return "deny"
    return "deny" if facts.recalled else "allow"


def world(rng: random.Random) -> tuple[Subject, ReportFacts, Directory, datetime]:
    subject = Subject(
        id="link",
        nation=rng.choice(NATIONS),
        clearance=worlds.clearance(rng, LEVELS[:-1]),
        caveats=frozenset(worlds.subset(rng, CAVEATS)),
        roles=worlds.roles(rng, "federate", ["subscribe"]),
        revoked=worlds.rarely(rng),
        # A link's audience is usually a nation or two: a wide one reaches most labels directly.
        audience=frozenset(rng.sample(NATIONS + ALLIANCES, rng.randint(0, 2))),
        origins=frozenset(NATIONS if rng.random() < 0.6 else worlds.subset(rng, NATIONS)),
    )
    directory = worlds.directory(rng, NATIONS)
    # The boundaries that matter are those of the nations the link's audience reaches.
    reached = sorted(subject.audience & set(NATIONS)) or NATIONS
    facts = worlds.report(rng, NATIONS, LEVELS[:-1], directory, rng.choice(reached))
    return subject, facts, directory, worlds.moment(rng, directory, rng.choice(reached))


WORLDS = worlds.SEEDS.map(world)


# More examples than the node rule's test: a link's boundaries matter only when its audience is
# reached through an alliance, so an off-by-one at a membership's end shows in fewer examples.
@settings(max_examples=6000, deadline=None)
@given(WORLDS)
def test_federate_decide_matches_reference_model(
    world: tuple[Subject, ReportFacts, Directory, datetime],
) -> None:
    subject, facts, directory, now = world
    decision = decide(
        node=subject, report=facts, directory=directory, policy=DEFAULT_POLICY, now=now, role="federate"
    )
    assert ("allow" if decision.allowed else "deny") == reference(subject, facts, directory, now)
    assert decision.allowed == (decision.reason == "allowed")


@settings(max_examples=500, deadline=None)
@given(WORLDS, st.sampled_from(NATIONS + ALLIANCES))
def test_widening_the_audience_never_removes_access(
    world: tuple[Subject, ReportFacts, Directory, datetime], extra: str
) -> None:
    subject, facts, directory, now = world
    wider = Subject(**{**subject.__dict__, "audience": subject.audience | {extra}})
    before = decide(
        node=subject, report=facts, directory=directory, policy=DEFAULT_POLICY, now=now, role="federate"
    )
    after = decide(
        node=wider, report=facts, directory=directory, policy=DEFAULT_POLICY, now=now, role="federate"
    )
    assert after.allowed or not before.allowed
