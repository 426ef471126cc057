"""Optional expiry of a node's token.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

A token may be issued for a limited time (``broker node add|rotate-token --token-days N``):
after ``token_expires_at`` it authenticates nobody. NULL: no expiry (every existing token).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("token_expires_at")
