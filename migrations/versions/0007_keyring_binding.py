"""The keyring a database is bound to.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26

One row (id = 1): the Ed25519 checkpoint public key of the keyring that first opened the
database through the command line or ``broker serve``, and when. The broker refuses to start,
and every command exits 2, when the keyring it is given holds another checkpoint key (or is
missing): a wrong keyring would sign checkpoints auditors cannot verify and could not unwrap
the stored reports' data keys. ``broker keys rotate`` adds key-encryption keys but keeps the
checkpoint key, so the binding outlives rotation. No row: not bound yet (bound on next start).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
TS = sa.DateTime(timezone=True)  # as 0001: models.UTCDateTime stores UTC on both engines


def upgrade() -> None:
    op.create_table(
        "keyring_binding",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("checkpoint_public_key", sa.String(64), nullable=False),
        sa.Column("bound_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_keyring_binding"),
    )


def downgrade() -> None:
    op.drop_table("keyring_binding")
