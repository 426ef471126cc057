"""A function that reads the head as committed now, for guarded statements (PostgreSQL).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26

A guarded statement (``repos.GuardedTx``) that waited for the head row while another process
committed finds the head moved and writes nothing. Its own snapshot predates the wait, so it
cannot say what the head is now; ``broker_current_head()`` can: a VOLATILE function takes a
fresh snapshot for each query it runs (READ COMMITTED), so called once the statement's update
has waited for the row, it sees the commit that moved it. The statement returns that head, and
the batch is decided again against it at once, instead of waiting for the other process's
NOTIFY or falling back to an ordinary transaction. SQLite has no such statement: nothing to add.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE FUNCTION broker_current_head() RETURNS text LANGUAGE sql VOLATILE AS $$"
        " SELECT json_build_object("
        "'report_seq', report_seq, 'audit_seq', audit_seq, 'audit_hash', audit_hash,"
        " 'change_counter', change_counter, 'audit_frontier', audit_frontier)::text"
        " FROM log_head WHERE id = 1 $$"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS broker_current_head()")
