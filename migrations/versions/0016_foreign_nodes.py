"""A foreign originator is marked on its node row: ``nodes.foreign_peer``.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06

The originator of an imported report is a row of ``nodes`` (reports reference their
originator), holding the Ed25519 key its origin broker attested and no role. 0014 listed such
rows in ``foreign_originators``, apart from the node record every act reads, so nothing that
authenticates or lists nodes saw the difference: such a node showed in ``broker node list`` as if
local, and a client certificate naming it authenticated. The mark now lives on the row itself
(the peer it was first imported from), every read of a node carries it, authentication refuses
it, and the separate table goes. Added nullable, without a batch rebuild: SQLite cannot rebuild
``nodes`` under the foreign keys that point at it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("foreign_peer", sa.String(64), nullable=True))
    op.execute(
        "UPDATE nodes SET foreign_peer = "
        "(SELECT peer FROM foreign_originators WHERE foreign_originators.node_id = nodes.id)"
    )
    op.drop_table("foreign_originators")


def downgrade() -> None:
    op.create_table(
        "foreign_originators",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name="fk_foreign_originators_node_id_nodes"),
        sa.PrimaryKeyConstraint("node_id", name="pk_foreign_originators"),
    )
    op.execute(
        "INSERT INTO foreign_originators (node_id, peer) "
        "SELECT id, foreign_peer FROM nodes WHERE foreign_peer IS NOT NULL"
    )
    op.drop_column("nodes", "foreign_peer")
