"""The last report's stamp on the head row.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

``log_head.report_created``: the ``created`` of the last report stored. A report is stamped under
the head lock and never below it, so ``created`` follows the sequence even when two brokers'
clocks disagree or one steps back (TAXII ``added_after`` and retention rely on it). Filled here
from the reports already stored.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)  # as 0001: models.UTCDateTime stores UTC on both engines


def upgrade() -> None:
    with op.batch_alter_table("log_head") as batch:
        batch.add_column(sa.Column("report_created", TS, nullable=True))
    op.execute("UPDATE log_head SET report_created = (SELECT max(created_at) FROM reports)")


def downgrade() -> None:
    with op.batch_alter_table("log_head") as batch:
        batch.drop_column("report_created")
