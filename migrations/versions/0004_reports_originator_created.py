"""Index on reports (originator_node, created_at).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Finds a node's recent reports, which a publish rate limit shared by every broker instance counts.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_reports_originator_created", "reports", ["originator_node", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_reports_originator_created", table_name="reports")
