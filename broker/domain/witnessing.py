"""Witness cosignatures as the broker keeps them, and the one rule saying whether the log is
witnessed (stdlib only, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

# Stable reason codes of a witness's refusal (audit events, metrics, /v1/health).
REFUSALS = {
    400: "witness_bad_request",
    403: "witness_unverified_log_signature",
    404: "witness_unknown_log",
    409: "witness_ahead_of_log",
    422: "witness_inconsistent",
}
UNEXPECTED = "witness_unexpected_answer"


def refusal_reason(status: int, *, proof_failed: bool = False) -> str:
    """The reason code of an answer that is a refusal (a 409 whose size we cannot prove from
    is one: the witness remembers a log this broker's does not extend)."""
    if status == 409 and proof_failed:
        return "witness_remembers_another_log"
    return REFUSALS.get(status, UNEXPECTED)


@dataclass(frozen=True)
class Cosignature:
    """One witness's cosignature line on the checkpoint of ``size`` events."""

    size: int
    witness: str
    line: str  # ends in a newline
    timestamp: int
    received_at: datetime


@dataclass(frozen=True)
class WitnessState:
    """What the broker knows of one witness: the size it last cosigned, its standing refusal."""

    witness: str
    cosigned_size: int
    updated_at: datetime
    refused_size: int | None = None
    refused_status: int | None = None
    refused_reason: str | None = None


@dataclass(frozen=True)
class Witnessing:
    """The log's witnessing as /v1/health reports it."""

    quorum: int
    cosigners: int  # on the latest checkpoint
    refused_by: tuple[str, ...]

    @property
    def witnessed(self) -> bool:
        """Witnessed: the latest checkpoint carries the quorum and no witness stands refusing."""
        return self.cosigners >= self.quorum and not self.refused_by


def witnessing(*, quorum: int, latest: Sequence[Cosignature], states: Sequence[WitnessState]) -> Witnessing:
    """The verdict from the latest checkpoint's cosignatures and the witnesses' states."""
    return Witnessing(
        quorum=quorum,
        cosigners=len({c.witness for c in latest}),
        refused_by=tuple(sorted(s.witness for s in states if s.refused_status is not None)),
    )
