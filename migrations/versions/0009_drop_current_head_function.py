"""Drop ``broker_current_head()`` (PostgreSQL): nothing calls it any more.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Migration 0008 added it for guarded statements, which read the head as committed after waiting
for the head row. Those statements are gone: a publish batch is one ordinary transaction that
reads the head under its lock. SQLite never had the function: nothing to do there.

The downgrade recreates it with the text 0008 used, so a database taken back to 0008 is what
0008 left (and the code of that revision, which calls it, runs on it).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS broker_current_head()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE FUNCTION broker_current_head() RETURNS text LANGUAGE sql VOLATILE AS $$"
        " SELECT json_build_object("
        "'report_seq', report_seq, 'audit_seq', audit_seq, 'audit_hash', audit_hash,"
        " 'change_counter', change_counter, 'audit_frontier', audit_frontier)::text"
        " FROM log_head WHERE id = 1 $$"
    )
