"""TAXII's object index, and the last report's stamp on the head row.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

``taxii_objects``: one row per object a report's payload carries, named by a keyed digest of its
STIX id (HMAC-SHA-256 under a key derived from the keyring's stable secret), with its version and
spec_version, so TAXII answers latest, first, by-id and versions per object, exactly, without
decrypting every report and without a plaintext id in the database; ``excluded_at`` marks a
version its originator removed by a TAXII DELETE with ``match[version]`` (the report itself, one
signed and encrypted unit, stays as it was). Reports stored before this
revision cannot be indexed here (a migration holds no keyring): ``taxii_index_state`` names the
sequence below which the broker indexes them, once, on the first TAXII request.

``log_head.report_created``: the ``created`` of the last report stored. A report is stamped under
the head lock and strictly after it, so ``created`` follows the sequence even when two brokers'
clocks disagree or one steps back (TAXII ``added_after`` and retention rely on it).
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
    op.create_table(
        "taxii_objects",
        sa.Column("report_seq", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("version", TS, nullable=False),
        sa.Column("spec_version", sa.String(8), nullable=False),
        sa.Column("excluded_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["report_seq"], ["reports.seq"], name="fk_taxii_objects_report_seq_reports"),
        sa.PrimaryKeyConstraint("report_seq", "position", name="pk_taxii_objects"),
    )
    op.create_index("ix_taxii_objects_digest", "taxii_objects", ["digest", "version"])
    op.create_table(
        "taxii_index_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("pending_below", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_taxii_index_state"),
    )
    op.execute(
        "INSERT INTO taxii_index_state (id, pending_below) "
        "SELECT 1, CASE WHEN count(*) = 0 THEN 0 ELSE max(seq) + 1 END FROM reports"
    )


def downgrade() -> None:
    op.drop_table("taxii_index_state")
    op.drop_index("ix_taxii_objects_digest", table_name="taxii_objects")
    op.drop_table("taxii_objects")
    with op.batch_alter_table("log_head") as batch:
        batch.drop_column("report_created")
