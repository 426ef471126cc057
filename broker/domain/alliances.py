"""Alliances and their membership history, as the access rule sees them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

History = Literal["full", "since-join"]
HISTORY_VALUES: tuple[History, ...] = ("full", "since-join")


@dataclass(frozen=True)
class Membership:
    """One period of membership: from ``joined`` (inclusive) to ``left`` (exclusive)."""

    alliance: str
    nation: str
    joined: datetime
    left: datetime | None = None

    def active_at(self, moment: datetime) -> bool:
        """True when the nation was a member at ``moment``."""
        return self.joined <= moment and (self.left is None or moment < self.left)


@dataclass(frozen=True)
class Alliance:
    id: str
    name: str
    history: History = "full"


@dataclass(frozen=True)
class Directory:
    """All alliances and every membership period, past and present."""

    alliances: Mapping[str, Alliance] = field(default_factory=dict)
    memberships: Mapping[str, tuple[Membership, ...]] = field(default_factory=dict)

    def membership_at(self, alliance: str, nation: str, moment: datetime) -> Membership | None:
        """The membership period of ``nation`` in ``alliance`` active at ``moment``, if any."""
        for membership in self.memberships.get(alliance, ()):
            if membership.nation == nation and membership.active_at(moment):
                return membership
        return None

    def members_at(self, alliance: str, moment: datetime) -> frozenset[str]:
        """Nations that are members of ``alliance`` at ``moment``."""
        return frozenset(m.nation for m in self.memberships.get(alliance, ()) if m.active_at(moment))
