"""Random worlds for the access rule's reference-model tests: alliances with membership periods,
a report and a moment, drawn from one seed.

Hypothesis draws only the seed, and a seeded ``random.Random`` builds the world: drawing each
membership, label entry and date through Hypothesis cost most of those tests' time. The worlds
lean towards the cases where rules differ: a denial for revocation, recall or a missing role is
drawn rarely (each still some hundred times a run), so most examples get as far as membership,
and the moments and creation dates fall often on a day the subject's nation joined or left an
alliance, where a rule off by one differs (uniform days meet those boundaries too rarely to
notice). A failure shows the seed's world, unshrunk."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from hypothesis import strategies as st

from broker.domain.access import ReportFacts
from broker.domain.alliances import Alliance, Directory, Membership

T = TypeVar("T")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ALLIANCES = ["A1", "A2"]
CAVEATS = ["X", "Y"]
MAX_DAYS = 60  # membership and creation dates: days after T0
MAX_NOW = 130  # the moment of decision: days after T0
SEEDS = st.integers(min_value=0, max_value=2**64 - 1).map(random.Random)


def rarely(rng: random.Random) -> bool:
    return rng.random() < 0.1


def clearance(rng: random.Random, levels: Sequence[str]) -> str:
    """Mostly the highest of ``levels`` (so that the other gates are reached), else any."""
    return rng.choice(levels) if rng.random() < 0.4 else levels[-1]


def subset(rng: random.Random, items: Sequence[T]) -> list[T]:
    """A random subset of ``items`` (empty and whole included), in a random order."""
    return rng.sample(list(items), rng.randint(0, len(items)))


def roles(rng: random.Random, needed: str, others: Sequence[str]) -> frozenset[str]:
    """Some of ``others``, and ``needed`` unless rarely."""
    return frozenset(subset(rng, others)) | (frozenset() if rarely(rng) else {needed})


def directory(rng: random.Random, nations: Sequence[str]) -> Directory:
    """Alliances A1 and A2 (``full`` or ``since-join`` history), each with some of ``nations`` as
    members, each joined on some day and left a day or more later, or never."""
    alliances = {a: Alliance(a, a, history=rng.choice(["full", "since-join"])) for a in ALLIANCES}
    memberships: dict[str, tuple[Membership, ...]] = {}
    for a in ALLIANCES:
        rows = []
        for nation in subset(rng, nations):
            joined = T0 + timedelta(days=rng.randint(0, MAX_DAYS))
            left = None if rng.random() < 0.5 else joined + timedelta(days=rng.randint(1, MAX_DAYS + 1))
            rows.append(Membership(a, nation, joined, left))
        memberships[a] = tuple(rows)
    return Directory(alliances=alliances, memberships=memberships)


def report(
    rng: random.Random, nations: Sequence[str], levels: Sequence[str], directory: Directory, nation: str
) -> ReportFacts:
    """A report from one of ``nations`` with a valid label naming nations and alliances (with no
    caveat half the time), created mostly on a day ``nation`` joined an alliance (where
    ``since-join`` history begins)."""
    label = {
        "classification": rng.choice(levels),
        "releasable_to": subset(rng, [*nations, *ALLIANCES]),
        "caveats": [] if rng.random() < 0.5 else subset(rng, CAVEATS),
    }
    return ReportFacts(
        originator_nation=rng.choice(nations),
        label=label,
        created=day(rng, [m.joined for m in memberships_of(directory, nation)], MAX_DAYS),
        recalled=rarely(rng),
    )


def day(rng: random.Random, edges: list[datetime], most: int) -> datetime:
    """Mostly one of ``edges``, else any day up to ``most`` days after T0."""
    if edges and rng.random() < 0.7:
        return rng.choice(edges)
    return T0 + timedelta(days=rng.randint(0, most))


def memberships_of(directory: Directory, nation: str) -> list[Membership]:
    """``nation``'s membership periods (every nation's, if it has none)."""
    rows = [m for ms in directory.memberships.values() for m in ms]
    return [m for m in rows if m.nation == nation] or rows


def moment(rng: random.Random, directory: Directory, nation: str) -> datetime:
    """The moment of decision: mostly a day ``nation`` joined or left an alliance."""
    rows = memberships_of(directory, nation)
    return day(rng, [d for m in rows for d in (m.joined, m.left) if d], MAX_NOW)
