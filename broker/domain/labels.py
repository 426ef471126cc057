"""Security labels (after NATO ADatP-4774) and the classification policy they are judged by.

A label is kept exactly as the publisher sent it; this module parses it into a
``SecurityLabel`` whose invariants hold from then on. Parsing fails closed: a key we do not
understand might be a restriction we would ignore, so it is refused rather than dropped.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.domain.nations import ALLIANCE_ID, is_nation
from broker.errors import InvalidInput

TLP_VALUES = frozenset({"CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"})
# Match with ``fullmatch``: with ``match`` the ``$`` would also accept a trailing newline.
CAVEAT = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,31}$")
LABEL_KEYS = frozenset({"policy", "classification", "releasable_to", "caveats", "tlp"})
MAX_RELEASABLE = 300
MAX_CAVEATS = 32


@dataclass(frozen=True)
class Policy:
    """Ordered classification levels (lowest first) and the rules that hang off them."""

    id: str
    levels: tuple[str, ...]
    # At or above this level a payload is delivered only sealed: nodes without an X25519 key
    # are refused (reason ``sealing_required``). None: no such requirement. Nodes that have a
    # key always receive sealed payloads, whatever the level (contract v1).
    require_sealing_at_or_above: str | None = None
    # How long a report is kept, by its label's classification: once a report is this old it is
    # crypto-shredded (services.retention). A level not listed is kept forever. Pairs (level,
    # period), not a dict, so that the policy stays immutable and hashable.
    retention: tuple[tuple[str, timedelta], ...] = ()

    def __post_init__(self) -> None:
        if not self.levels or len(set(self.levels)) != len(self.levels):
            raise ValueError("levels must be a non-empty list without repeats")
        threshold = self.require_sealing_at_or_above
        if threshold is not None and threshold not in self.levels:
            raise ValueError(f"require_sealing_at_or_above {threshold!r} is not a level")
        seen: set[str] = set()
        for level, period in self.retention:
            if level not in self.levels:
                raise ValueError(f"retention names {level!r}, which is not a level")
            if level in seen:
                raise ValueError(f"retention names {level!r} twice")
            if period <= timedelta(0):
                raise ValueError(f"the retention period of {level!r} must be positive")
            seen.add(level)

    def is_level(self, level: str) -> bool:
        """True when ``level`` is one of the policy's classifications."""
        return level in self.levels

    def rank(self, level: str) -> int:
        """Position of ``level`` (0 = lowest). Raises KeyError for an unknown level."""
        try:
            return self.levels.index(level)
        except ValueError:
            raise KeyError(level) from None

    def requires_sealing(self, level: str) -> bool:
        """True when payloads at ``level`` may only be delivered sealed."""
        threshold = self.require_sealing_at_or_above
        return threshold is not None and self.rank(level) >= self.rank(threshold)

    def retention_of(self, level: str) -> timedelta | None:
        """How long reports at ``level`` are kept; None: forever (also for an unknown level)."""
        for known, period in self.retention:
            if known == level:
                return period
        return None

    def expires_at(self, level: str, created: datetime) -> datetime | None:
        """When a report at ``level`` created at ``created`` expires; None: never (no retention
        period for the level, or a moment past the end of the calendar)."""
        period = self.retention_of(level)
        if period is None:
            return None
        try:
            return created + period
        except OverflowError:
            return None

    def is_expired(self, level: str, created: datetime, now: datetime) -> bool:
        """True when a report at ``level`` created at ``created`` is due for erasure at ``now``
        (its expiry moment included)."""
        expiry = self.expires_at(level, created)
        return expiry is not None and now >= expiry


DEFAULT_POLICY = Policy(
    id="ALLIANCE-BROKER",
    levels=("UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET", "TOP_SECRET"),
    require_sealing_at_or_above=None,
)


@dataclass(frozen=True)
class SecurityLabel:
    """A parsed label. ``releasable_to`` is permissive (one match suffices), ``caveats``
    restrictive (the recipient must hold every one)."""

    classification: str
    releasable_to: frozenset[str]
    caveats: frozenset[str]
    policy: str | None = None
    tlp: str | None = None


def _string_list(raw: Mapping[str, Any], key: str, limit: int) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"label.{key} must be a list of strings", code="invalid_label")
    if len(value) > limit:
        raise InvalidInput(f"label.{key} has more than {limit} entries", code="invalid_label")
    return value


def parse_label(
    raw: object,
    *,
    policy: Policy,
    known_alliances: Collection[str] | None,
) -> SecurityLabel:
    """Parse and validate a label against ``policy``.

    ``known_alliances`` is the set of alliance ids a new label may name; every entry of
    ``releasable_to`` must be an ISO 3166-1 alpha-3 nation or one of them. Pass ``None`` when
    re-reading a stored label, whose entries were checked when it was published.
    Raises InvalidInput (HTTP 422) with a specific code for every kind of problem.
    """
    if not isinstance(raw, Mapping):
        raise InvalidInput("label must be a JSON object", code="invalid_label")
    unknown = set(raw) - LABEL_KEYS
    if unknown:
        raise InvalidInput(f"label has unknown keys: {sorted(unknown)}", code="invalid_label")
    label_policy = raw.get("policy")
    if label_policy is not None and label_policy != policy.id:
        raise InvalidInput(f"label.policy must be {policy.id!r}", code="unknown_label_policy")
    classification = raw.get("classification")
    if not isinstance(classification, str) or not policy.is_level(classification):
        raise InvalidInput(
            f"label.classification must be one of {list(policy.levels)}",
            code="unknown_classification",
        )
    releasable = _string_list(raw, "releasable_to", MAX_RELEASABLE)
    for entry in releasable:
        known = is_nation(entry) or (
            ALLIANCE_ID.fullmatch(entry) is not None and (known_alliances is None or entry in known_alliances)
        )
        if not known:
            raise InvalidInput(
                f"label.releasable_to names an unknown nation or alliance: {entry!r}",
                code="unknown_releasability",
            )
    caveats = _string_list(raw, "caveats", MAX_CAVEATS)
    for caveat in caveats:
        if CAVEAT.fullmatch(caveat) is None:
            raise InvalidInput(f"label.caveats has a malformed caveat: {caveat!r}", code="invalid_label")
    tlp = raw.get("tlp")
    if tlp is not None and tlp not in TLP_VALUES:
        raise InvalidInput(f"label.tlp must be one of {sorted(TLP_VALUES)}", code="invalid_label")
    return SecurityLabel(
        classification=classification,
        releasable_to=frozenset(releasable),
        caveats=frozenset(caveats),
        policy=label_policy,
        tlp=tlp,
    )
