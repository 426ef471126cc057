"""Plain records that storage hands to services (no ORM objects leave storage)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.domain.access import ReportFacts, Subject

# Why a credential no longer authorises its holder (stable reason codes, audited).
NODE_REVOKED = "node_revoked"
TOKEN_REPLACED = "token_replaced"  # noqa: S105 (a reason code, not a secret)
TOKEN_EXPIRED = "token_expired"  # noqa: S105 (a reason code, not a secret)
CERTIFICATE_NOT_PINNED = "certificate_not_pinned"
CERTIFICATE_EXPIRED = "certificate_expired"


@dataclass(frozen=True)
class Credential:
    """What a request or stream authenticated with: the hash of the token it presented and the
    SHA-256 (hex) of its client certificate (and when that certificate stops being valid), either
    or both. Every later act of the same request or stream is decided against this, not against
    whatever the node holds now."""

    token_hash: str | None = None
    certificate: str | None = None
    certificate_expires_at: datetime | None = None  # its notAfter: the handshake checked it once


def credential_lapsed(node: NodeRecord, credential: Credential | None, *, now: datetime) -> str | None:
    """Why ``credential`` no longer authenticates ``node`` (the node's current record) at
    ``now``, or None while it still does.

    A token stops at revocation, rotation (the node's hash is another) and expiry; a certificate
    at revocation, when the node is pinned to another certificate, and at its own expiry (a
    connection outlives the handshake that checked it). ``credential`` None (a record not
    obtained by authentication) is held to revocation and expiry only."""
    if node.revoked_at is not None:
        return NODE_REVOKED
    if credential is None:
        expired = node.token_expires_at is not None and now >= node.token_expires_at
        return TOKEN_EXPIRED if expired else None
    if credential.token_hash is not None:
        if not hmac.compare_digest(credential.token_hash, node.token_hash):
            return TOKEN_REPLACED
        if node.token_expires_at is not None and now >= node.token_expires_at:
            return TOKEN_EXPIRED
    pin, presented = node.tls_fingerprint, credential.certificate
    if pin is not None and presented is not None and not hmac.compare_digest(pin, presented):
        return CERTIFICATE_NOT_PINNED
    ends = credential.certificate_expires_at
    if presented is not None and ends is not None and now >= ends:
        return CERTIFICATE_EXPIRED
    return None


@dataclass(frozen=True)
class NodeRecord:
    id: str
    nation: str
    clearance: str
    caveats: tuple[str, ...]
    roles: tuple[str, ...]
    token_hash: str
    created_at: datetime
    ed25519_public_key: str | None = None
    x25519_public_key: str | None = None
    revoked_at: datetime | None = None
    # SHA-256 (hex) of the one TLS client certificate this node may authenticate with, if pinned.
    tls_fingerprint: str | None = None
    # When the token stops authenticating the node (None: never).
    token_expires_at: datetime | None = None
    # A federation link's audience (nations and alliance ids) and the origins it may carry.
    audience: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    # Another broker's originator, stored for the reports imported from it (the peer it came
    # from): it holds the attested key and nothing else, and never authenticates.
    foreign_peer: str | None = None
    # The database's change counter when this record was read (-1: unknown). Every change to a
    # node bumps the counter, so an act whose transaction still reads this value may trust the
    # record; any other value means "read it again" (services.auth.recheck).
    version: int = field(default=-1, compare=False)
    # The credential this record was authenticated with, when it came from authentication.
    credential: Credential | None = field(default=None, compare=False)

    def subject(self) -> Subject:
        """The node as the access rule sees it."""
        return Subject(
            id=self.id,
            nation=self.nation,
            clearance=self.clearance,
            caveats=frozenset(self.caveats),
            roles=frozenset(self.roles),
            revoked=self.revoked_at is not None,
            can_open_sealed=self.x25519_public_key is not None,
            audience=frozenset(self.audience),
            origins=frozenset(self.origins),
        )

    def public(self) -> dict[str, Any]:
        """The node as admins see it: never the token hash."""
        return {
            "id": self.id,
            "nation": self.nation,
            "clearance": self.clearance,
            "caveats": list(self.caveats),
            "roles": list(self.roles),
            "ed25519_public_key": self.ed25519_public_key,
            "x25519_public_key": self.x25519_public_key,
            "created": self.created_at.isoformat(),
            "revoked": None if self.revoked_at is None else self.revoked_at.isoformat(),
            "certificate_sha256": self.tls_fingerprint,
            "token_expires": None if self.token_expires_at is None else self.token_expires_at.isoformat(),
            "audience": list(self.audience),
            "origins": list(self.origins),
            "foreign": self.foreign_peer is not None,
            "peer": self.foreign_peer,
        }


@dataclass(frozen=True)
class ReportRecord:
    seq: int
    id: str
    originator_node: str
    originator_nation: str
    label_json: str
    label: dict[str, Any]
    label_hash: str
    topics: tuple[str, ...]
    created_at: datetime
    payload_sha256: str
    signature: str | None
    request_hash: str
    recalled_at: datetime | None = None
    erased_at: datetime | None = None
    ciphertext: bytes | None = None
    wrapped_key: bytes | None = None
    kek_id: str | None = None
    added_at: datetime | None = None

    @property
    def added(self) -> datetime:
        """When this broker stored the report, following its sequence (TAXII's date_added): its
        ``created`` when published here; an import's own stamp, since the imported ``created``
        (covered by the origin's attestation) may be older than reports stored before it."""
        return self.created_at if self.added_at is None else self.added_at

    def facts(self) -> ReportFacts:
        return ReportFacts(
            originator_nation=self.originator_nation,
            label=self.label,
            created=self.created_at,
            recalled=self.recalled_at is not None,
        )


@dataclass(frozen=True)
class AuditDraft:
    """An audit event before it gets its sequence number, time and hashes."""

    action: str
    actor: str | None = None
    report: str | None = None
    node: str | None = None
    nation: str | None = None
    decision: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    time: datetime
    draft: AuditDraft
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Head:
    report_seq: int
    audit_seq: int
    audit_hash: str
    change_counter: int
    # The audit Merkle tree's frontier: (level, index, hash) of the perfect subtrees covering it.
    frontier: tuple[tuple[int, int, bytes], ...] = ()
    # Recalls and erasures: they change one report each, so they make stale only the decisions
    # that allowed that report (services.audit), where ``change_counter`` makes all stale.
    report_changes: int = 0
    # The last report's stamp, its ``added`` (None before the first): the next is never below it.
    report_created: datetime | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A signed checkpoint of the audit log: its first ``size`` events have Merkle ``root``."""

    size: int
    root: bytes
    time: datetime
    note: str


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds: the one time format hashed into audit events."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_document(*, seq: int, time: datetime, draft: AuditDraft, prev_hash: str) -> dict[str, Any]:
    """The JSON object an audit event is hashed as (and exported as, plus ``hash``)."""
    return {
        "seq": seq,
        "time": format_time(time),
        "actor": draft.actor,
        "action": draft.action,
        "report": draft.report,
        "node": draft.node,
        "nation": draft.nation,
        "decision": draft.decision,
        "reason": draft.reason,
        "details": draft.details,
        "prev_hash": prev_hash,
    }
