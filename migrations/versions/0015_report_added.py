"""Each report's local ``added_at``: when this broker stored it, following its sequence.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

A report published here is stamped ``created`` under the head lock, never below the previous
report's, so ``created`` followed the sequence and TAXII's ``date_added`` / ``added_after`` read
it. An imported report keeps the ``created`` its origin attested, which may be older than
reports this broker stored before it: a poller resuming by ``added_after`` would miss it. So
every report gets ``added_at``, stamped like ``created`` under the head lock (equal to it for a
local publish, the import's own stamp for an import), and TAXII reads that. Existing rows take
their ``created_at`` (what TAXII served them as); the ``added_after`` seek moves from
``ix_reports_created`` to ``ix_reports_added``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)  # as 0001: models.UTCDateTime stores UTC on both engines


def upgrade() -> None:
    # Nullable, and added without a batch rebuild: SQLite cannot rebuild ``reports`` under the
    # foreign keys that point at it. Every row is filled here and every insert writes it.
    op.add_column("reports", sa.Column("added_at", TS, nullable=True))
    op.execute("UPDATE reports SET added_at = created_at")
    op.drop_index("ix_reports_created", table_name="reports")
    op.create_index("ix_reports_added", "reports", ["added_at"])


def downgrade() -> None:
    op.drop_index("ix_reports_added", table_name="reports")
    op.create_index("ix_reports_created", "reports", ["created_at"])
    op.drop_column("reports", "added_at")
