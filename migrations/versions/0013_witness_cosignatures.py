"""Witness cosignatures of the audit log's checkpoints, and what each witness last cosigned.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

``witness_cosignatures``: one C2SP tlog-cosignature line per (checkpoint size, witness), as the
witness answered it and as verified before it was stored; the checkpoint served to auditors is
the broker's note with these lines appended. ``witness_state``: per witness, the size it last
cosigned (the ``old`` of the next add-checkpoint request) and the last refusal, if the latest
answer was one (``/v1/health`` reports the log as not witnessed while any is set). Both tables
are new and empty: no lock on an existing table is taken.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)  # as 0001: models.UTCDateTime stores UTC on both engines


def upgrade() -> None:
    op.create_table(
        "witness_cosignatures",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("witness", sa.String(200), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("size", "witness", name="pk_witness_cosignatures"),
    )
    op.create_table(
        "witness_state",
        sa.Column("witness", sa.String(200), nullable=False),
        sa.Column("cosigned_size", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("refused_size", sa.BigInteger(), nullable=True),
        sa.Column("refused_status", sa.Integer(), nullable=True),
        sa.Column("refused_reason", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("witness", name="pk_witness_state"),
    )


def downgrade() -> None:
    op.drop_table("witness_state")
    op.drop_table("witness_cosignatures")
