"""Federation records on the receiving side: the peers pulled from, and what an imported report
keeps of its journey. Plain data, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

PEER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # always fullmatch
PEER_STATES = ("connected", "connecting", "refused", "error")

# Why an import was refused (stable audit reason codes).
ATTESTATION_INVALID = "attestation_invalid"
ATTESTATION_MISMATCH = "attestation_mismatch"
ORIGIN_NOT_CARRIED = "origin_not_carried"
LOOP = "loop"
DUPLICATE = "duplicate"
ORIGINATOR_CONFLICT = "originator_conflict"
MALFORMED = "malformed_frame"


@dataclass(frozen=True)
class PeerRecord:
    """An upstream broker: where it is, the link's credentials (sealed), the origins it may
    speak for, its pinned checkpoint vkey, and how far this broker has imported."""

    name: str
    url: str
    ca_pem: str
    cert_pem: str
    key_sealed: bytes
    token_sealed: bytes | None
    origins: tuple[str, ...]
    broker_key: str
    cursor: int
    state: str
    lag: float
    last_error: str | None
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """The peer as an admin sees it: never a secret."""
        return {
            "name": self.name,
            "url": self.url,
            "origins": list(self.origins),
            "broker_key": self.broker_key,
            "state": self.state,
            "lag": self.lag,
            "last_error": self.last_error,
            "cursor": self.cursor,
            "created": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Imported:
    """An imported report's path (hops ``{"broker", "sequence", "event_hash"}``, origin first,
    this broker last), the attestation chain it arrived with, and the origin broker's vkey."""

    report_seq: int
    peer: str
    provenance: tuple[dict[str, Any], ...]
    attestations: tuple[dict[str, Any], ...]
    origin_signer: str
    recall: tuple[dict[str, Any], ...] | None = None  # the recall statement chain, once recalled

    @property
    def brokers(self) -> frozenset[str]:
        """Every broker on the report's path, this one included."""
        return frozenset(str(hop["broker"]) for hop in self.provenance)
