"""Durable stream cursors: the last sequence each node acknowledged, per stream name.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

A reconnect without ``after`` resumes after the acknowledged sequence, so the cursor must
survive restarts; one row per (node, stream name), updated in place on each ack.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stream_cursors",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_stream_cursors_node_id_nodes"),
        sa.PrimaryKeyConstraint("node_id", "name", name="pk_stream_cursors"),
    )


def downgrade() -> None:
    op.drop_table("stream_cursors")
