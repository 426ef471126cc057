"""Initial schema: alliances with membership history, nodes, encrypted reports, audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

The single ``log_head`` row is created here, not lazily, so that every writer can lock it
(SELECT ... FOR UPDATE on PostgreSQL) without racing to create it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alliances",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("history", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alliances"),
    )
    op.create_table(
        "memberships",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alliance_id", sa.String(32), nullable=False),
        sa.Column("nation", sa.String(3), nullable=False),
        sa.Column("joined", TS, nullable=False),
        sa.Column("left", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["alliance_id"], ["alliances.id"], name="fk_memberships_alliance_id_alliances"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_memberships"),
    )
    op.create_index("ix_memberships_alliance_nation", "memberships", ["alliance_id", "nation"])
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("nation", sa.String(3), nullable=False),
        sa.Column("clearance", sa.String(64), nullable=False),
        sa.Column("caveats", sa.JSON(), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("ed25519_public_key", sa.String(64), nullable=True),
        sa.Column("x25519_public_key", sa.String(64), nullable=True),
        sa.Column("tls_fingerprint", sa.String(128), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
        sa.UniqueConstraint("token_hash", name="uq_nodes_token_hash"),
    )
    op.create_table(
        "reports",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("originator_node", sa.String(64), nullable=False),
        sa.Column("originator_nation", sa.String(3), nullable=False),
        sa.Column("label_json", sa.Text(), nullable=False),
        sa.Column("label_hash", sa.String(64), nullable=False),
        sa.Column("topics", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("payload_sha256", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.Column("recalled_at", TS, nullable=True),
        sa.Column("erased_at", TS, nullable=True),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("kek_id", sa.String(64), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["originator_node"], ["nodes.id"], name="fk_reports_originator_node_nodes"),
        sa.PrimaryKeyConstraint("seq", name="pk_reports"),
        sa.UniqueConstraint("id", name="uq_reports_id"),
        sa.UniqueConstraint("originator_node", "idempotency_key", name="uq_reports_idempotency"),
    )
    op.create_index("ix_reports_kek_id", "reports", ["kek_id"])
    op.create_table(
        "report_topics",
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("report_seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["report_seq"], ["reports.seq"], name="fk_report_topics_report_seq_reports"),
        sa.PrimaryKeyConstraint("topic", "report_seq", name="pk_report_topics"),
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("report", sa.String(36), nullable=True),
        sa.Column("node", sa.String(64), nullable=True),
        sa.Column("nation", sa.String(3), nullable=True),
        sa.Column("decision", sa.String(8), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
    )
    for column in ("report", "node", "action", "time"):
        op.create_index(f"ix_audit_events_{column}", "audit_events", [column])
    head = op.create_table(
        "log_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("report_seq", sa.BigInteger(), nullable=False),
        sa.Column("audit_seq", sa.BigInteger(), nullable=False),
        sa.Column("audit_hash", sa.String(64), nullable=False),
        sa.Column("change_counter", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_log_head"),
    )
    op.bulk_insert(
        head,
        [{"id": 1, "report_seq": 0, "audit_seq": 0, "audit_hash": "0" * 64, "change_counter": 0}],
    )


def downgrade() -> None:
    for table in ("log_head", "audit_events", "report_topics", "reports", "nodes", "memberships"):
        op.drop_table(table)
    op.drop_table("alliances")
