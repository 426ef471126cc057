"""TAXII 2.1: collections, status resources, and an index on reports.created_at.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Collections are defined by admins (a title, topics and a label). A status resource records the
outcome of one TAXII write (STIX ids and versions, never content). ``added_after`` finds where
its scan starts through ix_reports_created instead of reading every older report.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
TS = sa.DateTime(timezone=True)  # as 0001: models.UTCDateTime stores UTC on both engines


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("topics", sa.JSON(), nullable=False),
        sa.Column("label_json", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_collections"),
    )
    op.create_table(
        "taxii_statuses",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("report_id", sa.String(36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("outcome", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_taxii_statuses_node_id_nodes"),
        sa.PrimaryKeyConstraint("id", name="pk_taxii_statuses"),
    )
    op.create_index("ix_reports_created", "reports", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_reports_created", table_name="reports")
    op.drop_table("taxii_statuses")
    op.drop_table("collections")
