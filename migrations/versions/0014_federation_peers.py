"""Federation, receiving side: peers, the provenance of imported reports, foreign originators.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06

``peers``: the upstream brokers this broker pulls from (``broker peer add``). The link's client
key and token are secrets the broker must present, not verify, so they are stored sealed under a
key derived from the keyring (crypto/secrets_at_rest.py), never in the clear; the CA and certificate are
public. ``broker_key`` pins the upstream's checkpoint vkey; ``cursor`` is the last upstream
sequence imported, written in the import's own transaction so a restart resumes exactly there.
``state``, ``lag`` and ``last_error`` let ``broker peer list`` (another process) show the link.

``report_provenance``: for an imported report, its path (origin first, this broker last) and the
attestation chain that came with it (forwarded on by a hub), the origin broker's vkey (only
that broker may recall it) and, once recalled, the recall statement chain (forwarded on too).

``foreign_originators``: the originators of imported reports are rows of ``nodes`` (reports
reference their originator) holding no role and no usable credential; this table says which
nodes are such, so an import never takes over a local node of the same id.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)  # as 0001: models.UTCDateTime stores UTC on both engines


def upgrade() -> None:
    op.create_table(
        "peers",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("ca_pem", sa.Text(), nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("key_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("token_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("origins", sa.JSON(), nullable=False),
        sa.Column("broker_key", sa.String(300), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lag", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_peers"),
    )
    op.create_table(
        "report_provenance",
        sa.Column("report_seq", sa.BigInteger(), nullable=False),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("attestations", sa.JSON(), nullable=False),
        sa.Column("origin_signer", sa.String(300), nullable=False),
        sa.Column("recall", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["report_seq"], ["reports.seq"], name="fk_report_provenance_report_seq_reports"
        ),
        sa.PrimaryKeyConstraint("report_seq", name="pk_report_provenance"),
    )
    op.create_table(
        "foreign_originators",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_foreign_originators_node_id_nodes"),
        sa.PrimaryKeyConstraint("node_id", name="pk_foreign_originators"),
    )


def downgrade() -> None:
    op.drop_table("foreign_originators")
    op.drop_table("report_provenance")
    op.drop_table("peers")
