"""Report ids: parsed once at the edge into the one canonical form the store and the log use.

``uuid.UUID`` accepts many spellings of one id (upper case, braces, ``urn:uuid:``, dashes
anywhere or nowhere). Every spelling must name the same report *and* the same audit entry, or a
denied probe could hide which report it probed; so the edge canonicalises, and everything after
it sees only the canonical lower-case, dashed form.
"""

from __future__ import annotations

import uuid

# Client-chosen ids are scoped to their node (see ``scoped_report_id``).
_SCOPE = uuid.UUID("8d1f6f5e-2f0a-5c43-9d4e-6a0b7c1e2f30")
MAX_ID_TEXT = 64


def canonical_report_id(value: str) -> str | None:
    """The canonical form of a report id, or None when ``value`` is not a UUID."""
    if len(value) > MAX_ID_TEXT:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def scoped_report_id(*, node_id: str, client_id: str) -> str:
    """The id under which a report published with a client-chosen ``client_id`` is stored.

    Deterministic per (node, client id), so a node that sends the same id again finds its own
    report (idempotency), and distinct across nodes, so a node can never collide with, and so
    never learn of, another node's report by choosing its id."""
    return str(uuid.uuid5(_SCOPE, f"{node_id}\n{client_id}"))
