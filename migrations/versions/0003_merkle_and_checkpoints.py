"""Merkle tree nodes, the tree's frontier, and signed checkpoints.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Every complete perfect subtree of the audit log's Merkle tree is stored once, so inclusion and
consistency proofs read O(log n) rows. The frontier (the perfect subtrees covering the whole
tree) lives on the head row that appends already lock, so an append needs no extra read. Events
written before this revision are folded into the tree here.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from broker.crypto import merkle

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    nodes = op.create_table(
        "merkle_nodes",
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name="pk_merkle_nodes"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("size", name="pk_checkpoints"),
    )
    with op.batch_alter_table("log_head") as batch:
        batch.add_column(sa.Column("audit_frontier", sa.Text(), nullable=False, server_default="[]"))
    connection = op.get_bind()
    hashes = [
        bytes.fromhex(row[0])
        for row in connection.execute(sa.text("SELECT hash FROM audit_events ORDER BY seq"))
    ]
    if hashes:
        frontier, created = merkle.append([], hashes, 0)
        op.bulk_insert(nodes, [{"level": lvl, "idx": idx, "hash": h.hex()} for lvl, idx, h in created])
        encoded = json.dumps([[lvl, idx, h.hex()] for lvl, idx, h in frontier])
        connection.execute(sa.text("UPDATE log_head SET audit_frontier = :f WHERE id = 1"), {"f": encoded})


def downgrade() -> None:
    with op.batch_alter_table("log_head") as batch:
        batch.drop_column("audit_frontier")
    op.drop_table("checkpoints")
    op.drop_table("merkle_nodes")
