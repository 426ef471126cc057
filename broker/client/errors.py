"""The SDK's errors (the tree is drawn in ``broker.client``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.crypto import quorum


class ClientError(Exception):
    """Base of the SDK's errors."""


class ApiError(ClientError):
    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.code = str(problem.get("type", "")).rsplit(":", 1)[-1]
        self.problem = dict(problem)
        super().__init__(f"{status} {self.code}: {problem.get('detail', '')}")


class SignatureError(ClientError):
    pass


class SealedError(ClientError):
    pass


class WitnessError(ClientError):
    """A checkpoint is not signed by the pinned log key, is another log's (its origin is not the
    key's name), lacks the quorum of witness cosignatures (``verdict`` says which witnesses are
    missing), or does not extend the checkpoint the client verified before (a rollback, a fork)."""

    def __init__(self, message: str, verdict: quorum.QuorumVerdict | None = None) -> None:
        self.verdict = verdict
        super().__init__(message)


class StreamClosed(ClientError):
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        super().__init__(f"stream closed by the broker: {code} {reason}")


class Unreachable(ClientError):
    """The broker could not be reached (connection refused, TLS failure, timeout); for a stream,
    not within ``give_up_after`` seconds of trying."""
