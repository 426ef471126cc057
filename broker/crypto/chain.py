"""Audit event hashes: RFC 6962 leaf hashes that also chain each event to the one before.

hash = SHA-256(0x00 || canonical(event)), where the canonical event includes ``prev_hash``;
so each hash is both the event's Merkle leaf and a link of a simple linear chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from broker.domain.canonical import canonical

GENESIS = "0" * 64


def event_hash(event: Mapping[str, Any]) -> str:
    """Leaf hash of an event given as a JSON object (its ``hash`` field, if any, left out)."""
    body = {k: v for k, v in event.items() if k != "hash"}
    return hashlib.sha256(b"\x00" + canonical(body)).hexdigest()
