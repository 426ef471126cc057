"""SQLAlchemy 2 models. The alembic migrations are the source of the schema; a test checks that
these models and the migrations agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every engine (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # it would be stored shifted by the server's time zone
            raise ValueError("naive datetime refused: the broker stores UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AllianceRow(Base):
    __tablename__ = "alliances"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    history: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MembershipRow(Base):
    """One membership period; leaving fills ``left``, rejoining adds a new row."""

    __tablename__ = "memberships"
    __table_args__ = (Index("ix_memberships_alliance_nation", "alliance_id", "nation"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alliance_id: Mapped[str] = mapped_column(ForeignKey("alliances.id"))
    nation: Mapped[str] = mapped_column(String(3))
    joined: Mapped[datetime] = mapped_column(UTCDateTime)
    left: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class NodeRow(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nation: Mapped[str] = mapped_column(String(3))
    clearance: Mapped[str] = mapped_column(String(64))
    caveats: Mapped[list[str]] = mapped_column(JSON)
    roles: Mapped[list[str]] = mapped_column(JSON)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    ed25519_public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    x25519_public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tls_fingerprint: Mapped[str | None] = mapped_column(String(128), nullable=True)
    token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A federation link's audience (nations, alliance ids) and the originator nations it carries.
    audience: Mapped[list[str]] = mapped_column(JSON, server_default="[]")
    origins: Mapped[list[str]] = mapped_column(JSON, server_default="[]")
    # Set on the row standing for another broker's originator (imported reports reference it):
    # the peer it was first imported from. Such a node never authenticates (services/auth.py).
    foreign_peer: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ReportRow(Base):
    """A report. The payload exists only as ciphertext; erasing nulls the wrapped key."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("originator_node", "idempotency_key", name="uq_reports_idempotency"),
        Index("ix_reports_kek_id", "kek_id"),
        # A node's recent reports (publish rate limits shared by every broker instance).
        Index("ix_reports_originator_created", "originator_node", "created_at"),
        # Where a TAXII ``added_after`` starts (storage/collections.py).
        Index("ix_reports_added", "added_at"),
        # Which reports a stream must send recall notices for (services/deliver.py).
        Index("ix_reports_recalled_at", "recalled_at"),
        Index("ix_reports_erased_at", "erased_at"),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    originator_node: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    originator_nation: Mapped[str] = mapped_column(String(3))
    label_json: Mapped[str] = mapped_column(Text)
    label_hash: Mapped[str] = mapped_column(String(64))
    topics: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When this broker stored it, never below an earlier report's (= created_at unless imported).
    # Always written; nullable only so that migration 0015 needs no table rebuild on SQLite.
    added_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    recalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    kek_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))


class ReportTopicRow(Base):
    __tablename__ = "report_topics"
    topic: Mapped[str] = mapped_column(String(64), primary_key=True)
    report_seq: Mapped[int] = mapped_column(ForeignKey("reports.seq"), primary_key=True)


class AuditEventRow(Base):
    """An audit event: metadata only, never payload content."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_report", "report"),
        Index("ix_audit_events_node", "node"),
        Index("ix_audit_events_action", "action"),
        Index("ix_audit_events_time", "time"),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    report: Mapped[str | None] = mapped_column(String(36), nullable=True)
    node: Mapped[str | None] = mapped_column(String(64), nullable=True)
    nation: Mapped[str | None] = mapped_column(String(3), nullable=True)
    decision: Mapped[str | None] = mapped_column(String(8), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class LogHeadRow(Base):
    """The single row (id = 1) that serialises appends: next report sequence, audit chain head,
    and the change counter other processes watch to drop their caches."""

    __tablename__ = "log_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    report_seq: Mapped[int] = mapped_column(BigInteger)
    audit_seq: Mapped[int] = mapped_column(BigInteger)
    audit_hash: Mapped[str] = mapped_column(String(64))
    change_counter: Mapped[int] = mapped_column(BigInteger)
    # Moved by a recall or an erasure (one report's change), not by the global change counter.
    report_changes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # JSON [[level, index, hex hash], ...]: the Merkle tree's frontier (see crypto/merkle.py).
    audit_frontier: Mapped[str] = mapped_column(Text, server_default="[]")
    # The last report's ``created``: the next one is stamped no earlier (services.reports).
    report_created: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StreamCursorRow(Base):
    """The last sequence a node acknowledged on a named stream."""

    __tablename__ = "stream_cursors"
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MerkleNodeRow(Base):
    """A complete perfect subtree of the audit log's Merkle tree."""

    __tablename__ = "merkle_nodes"
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))


class CheckpointRow(Base):
    """A signed checkpoint (C2SP signed note) of the audit log at ``size`` events."""

    __tablename__ = "checkpoints"
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    note: Mapped[str] = mapped_column(Text)


class WitnessCosignatureRow(Base):
    """A witness's C2SP cosignature line on the checkpoint of ``size`` events (verified first)."""

    __tablename__ = "witness_cosignatures"
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    witness: Mapped[str] = mapped_column(String(200), primary_key=True)
    line: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[int] = mapped_column(BigInteger)  # the witness's, inside the line
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WitnessStateRow(Base):
    """Per witness: the size it last cosigned, and its latest refusal while that stands."""

    __tablename__ = "witness_state"
    witness: Mapped[str] = mapped_column(String(200), primary_key=True)
    cosigned_size: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    refused_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    refused_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    refused_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)


class CollectionRow(Base):
    """A TAXII collection defined by an admin: the reports carrying one of ``topics``, and the
    label (as given, JSON) that writes through it get."""

    __tablename__ = "collections"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    topics: Mapped[list[str]] = mapped_column(JSON)
    label_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TaxiiStatusRow(Base):
    """The status resource of a TAXII ``POST .../objects/``: STIX ids and versions with their
    outcome (no object content), readable by the node that posted."""

    __tablename__ = "taxii_statuses"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    collection_id: Mapped[str] = mapped_column(String(36))
    report_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[dict[str, Any]] = mapped_column(JSON)


class TaxiiObjectRow(Base):
    """One object a report's payload carries, for TAXII's per-object versions: a keyed digest of
    its STIX id (``domain.stix.id_digest``), never the id, so the table tells someone holding the
    database alone which reports share an object, not which objects they are."""

    __tablename__ = "taxii_objects"
    __table_args__ = (Index("ix_taxii_objects_digest", "digest", "version"),)
    report_seq: Mapped[int] = mapped_column(ForeignKey("reports.seq"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    digest: Mapped[str] = mapped_column(String(64))
    version: Mapped[datetime] = mapped_column(UTCDateTime)
    spec_version: Mapped[str] = mapped_column(String(8))
    # Set when the originator removed this version alone (TAXII DELETE with match[version]).
    excluded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TaxiiIndexStateRow(Base):
    """One row (id = 1): the reports below ``pending_below`` were stored before the object index
    existed and are indexed by the first TAXII request that finds them so (0: none left)."""

    __tablename__ = "taxii_index_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pending_below: Mapped[int] = mapped_column(BigInteger)


class KeyringBindingRow(Base):
    """The keyring the database is bound to (one row, id = 1): the raw Ed25519 checkpoint public
    key, base64, of the keyring that first opened it (storage/keyringcheck.py)."""

    __tablename__ = "keyring_binding"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    checkpoint_public_key: Mapped[str] = mapped_column(String(64))
    bound_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PeerRow(Base):
    """An upstream broker this one pulls reports from (migration 0012 says why each column)."""

    __tablename__ = "peers"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    ca_pem: Mapped[str] = mapped_column(Text)
    cert_pem: Mapped[str] = mapped_column(Text)
    key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    token_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    origins: Mapped[list[str]] = mapped_column(JSON)
    broker_key: Mapped[str] = mapped_column(String(300))
    cursor: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    lag: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReportProvenanceRow(Base):
    """An imported report's path (origin first, this broker last) and attestation chain."""

    __tablename__ = "report_provenance"
    report_seq: Mapped[int] = mapped_column(ForeignKey("reports.seq"), primary_key=True)
    peer: Mapped[str] = mapped_column(String(64))
    provenance: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    attestations: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    origin_signer: Mapped[str] = mapped_column(String(300))
    recall: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
