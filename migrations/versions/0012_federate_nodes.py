"""Federation links: a node's audience and the origins it may carry.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

A node with the ``federate`` role is another broker's link. It is decided by its ``audience``
(the nations and alliance ids it receives for) instead of its nation, and receives only reports
whose originator nation is one of its ``origins``. Both are JSON lists, empty for every other
node; the server default fills existing rows without rewriting them under a long lock.

Two indexes let a stream find the reports recalled or erased since a moment (its recall
notices) without reading every report.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("audience", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("origins", sa.JSON(), nullable=False, server_default="[]"))
    op.create_index("ix_reports_recalled_at", "reports", ["recalled_at"])
    op.create_index("ix_reports_erased_at", "reports", ["erased_at"])


def downgrade() -> None:
    op.drop_index("ix_reports_erased_at", table_name="reports")
    op.drop_index("ix_reports_recalled_at", table_name="reports")
    # Plain ALTER TABLE DROP COLUMN (SQLite 3.35+), not a batch copy: rebuilding ``nodes`` would
    # drop the table reports refer to, which SQLite's enforced foreign keys refuse.
    op.drop_column("nodes", "origins")
    op.drop_column("nodes", "audience")
