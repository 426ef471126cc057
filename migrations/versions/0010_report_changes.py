"""A counter of report-scoped changes beside the global change counter.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

A recall or an erasure concerns one report. It used to move the global change counter, which
made every decision in flight on every broker stale (one node recalling in a loop made other
nodes' listings answer 503 and closed their streams). It now moves ``report_changes`` instead:
a decision made before it is decided again only if it allowed a report that was withdrawn
meanwhile (services.audit), and streams refresh only the recall and erasure flags they hold.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("log_head") as batch:
        batch.add_column(sa.Column("report_changes", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("log_head") as batch:
        batch.drop_column("report_changes")
