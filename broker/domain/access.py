"""The access rule: one pure function deciding whether a node may receive a report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.domain.alliances import Directory
from broker.domain.labels import Policy, SecurityLabel, parse_label
from broker.domain.nations import is_nation
from broker.errors import InvalidInput

# Stable reason codes. Auditors filter on these; never rename one.
ALLOWED = "allowed"
MISSING_ROLE = "missing_role"
NODE_REVOKED = "node_revoked"
UNKNOWN_LABEL_POLICY = "unknown_label_policy"
INVALID_LABEL = "invalid_label"
INSUFFICIENT_CLEARANCE = "insufficient_clearance"
MISSING_CAVEAT = "missing_caveat"
NOT_RELEASABLE = "not_releasable"
RECALLED = "recalled"
SEALING_REQUIRED = "sealing_required"
ORIGIN_NOT_CARRIED = "origin_not_carried"

FEDERATE = "federate"
ROLES = frozenset({"publish", "subscribe", "audit", "admin", FEDERATE})


@dataclass(frozen=True)
class Subject:
    """A node as the access rule sees it."""

    id: str
    nation: str
    clearance: str
    caveats: frozenset[str]
    roles: frozenset[str]
    revoked: bool = False
    can_open_sealed: bool = False  # has an X25519 key
    # A federation link (role ``federate``): the nations and alliance ids it receives for, and
    # the originator nations it may carry. Empty for every other node.
    audience: frozenset[str] = frozenset()
    origins: frozenset[str] = frozenset()


def receiving_role(roles: frozenset[str] | tuple[str, ...]) -> str:
    """The role a node receives reports under: ``federate`` for a link, else ``subscribe``."""
    return FEDERATE if FEDERATE in roles else "subscribe"


@dataclass(frozen=True)
class ReportFacts:
    """What the access rule needs of a report: its raw stored label and a few facts."""

    originator_nation: str
    label: Mapping[str, Any]
    created: datetime
    recalled: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def _deny(reason: str) -> Decision:
    return Decision(allowed=False, reason=reason)


def _releasable(
    *, node: Subject, label: SecurityLabel, facts: ReportFacts, directory: Directory, now: datetime
) -> bool:
    if node.nation == facts.originator_nation:
        return True
    return _releasable_to_nation(node.nation, label=label, facts=facts, directory=directory, now=now)


def _releasable_to_nation(
    nation: str, *, label: SecurityLabel, facts: ReportFacts, directory: Directory, now: datetime
) -> bool:
    """Whether ``label`` names ``nation``, or an alliance it is a member of at ``now``
    (honouring ``since-join``); the originator's-own-nation clause is the caller's."""
    if nation in label.releasable_to:
        return True
    for entry in label.releasable_to:
        if is_nation(entry):  # a nation, never an alliance, even if one was stored under its code
            continue
        membership = directory.membership_at(entry, nation, now)
        if membership is None:
            continue
        alliance = directory.alliances.get(entry)
        if alliance is not None and alliance.history == "since-join" and membership.joined > facts.created:
            continue
        return True
    return False


def _releasable_to_audience(
    *, node: Subject, label: SecurityLabel, facts: ReportFacts, directory: Directory, now: datetime
) -> bool:
    """A link's audience covers the label when one entry does: a nation as an ordinary node of
    that nation would (never through the originator's-own-nation clause), an alliance only
    where the label names it literally (never through one of its members' nations)."""
    for entry in node.audience:
        if is_nation(entry):
            if _releasable_to_nation(entry, label=label, facts=facts, directory=directory, now=now):
                return True
        elif entry in label.releasable_to:
            return True
    return False


def decide(
    *,
    node: Subject,
    report: ReportFacts,
    directory: Directory,
    policy: Policy,
    now: datetime,
    role: str = "subscribe",
) -> Decision:
    """Decide whether ``node`` may receive ``report`` at ``now``.

    Allowed iff the node is not revoked and holds ``role``; the stored label still parses
    under ``policy`` (fail closed otherwise); the node's clearance ranks at or above the
    classification and it holds every caveat; its nation is the originator's, is named in
    ``releasable_to``, or is a member at ``now`` of an alliance named there (honouring an
    alliance's ``since-join`` history); the report is not recalled; and, where the policy
    requires sealing at the report's level, the node has a key to open it.
    Every denial carries a stable reason code.

    With ``role="federate"`` (a federation link) releasability is judged for the link's
    audience instead of its nation (``_releasable_to_audience``), and the originator's nation
    must be one of the link's ``origins`` (``origin_not_carried`` otherwise); levels the policy
    delivers only sealed never cross a link.
    """
    if node.revoked:
        return _deny(NODE_REVOKED)
    if role not in node.roles:
        return _deny(MISSING_ROLE)
    try:
        label = parse_label(report.label, policy=policy, known_alliances=None)
    except InvalidInput as exc:
        reason = (
            UNKNOWN_LABEL_POLICY
            if exc.code in {"unknown_label_policy", "unknown_classification"}
            else INVALID_LABEL
        )
        return _deny(reason)
    if not policy.is_level(node.clearance):
        return _deny(INSUFFICIENT_CLEARANCE)
    if policy.rank(node.clearance) < policy.rank(label.classification):
        return _deny(INSUFFICIENT_CLEARANCE)
    if not label.caveats <= node.caveats:
        return _deny(MISSING_CAVEAT)
    if role == FEDERATE:
        if report.originator_nation not in node.origins:
            return _deny(ORIGIN_NOT_CARRIED)
        if not _releasable_to_audience(node=node, label=label, facts=report, directory=directory, now=now):
            return _deny(NOT_RELEASABLE)
    elif not _releasable(node=node, label=label, facts=report, directory=directory, now=now):
        return _deny(NOT_RELEASABLE)
    if report.recalled:
        return _deny(RECALLED)
    # A link's frames carry the payload in clear (its broker re-encrypts and seals for its own
    # nodes), so a level that must only travel sealed never crosses a link, key or no key.
    sealed_only = policy.requires_sealing(label.classification)
    if sealed_only and (role == FEDERATE or not node.can_open_sealed):
        return _deny(SEALING_REQUIRED)
    return Decision(allowed=True, reason=ALLOWED)
