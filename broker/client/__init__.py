"""Python SDK for Alliance Broker nodes: publish (signed), read, stream (sealed payloads opened,
signatures verified, reconnects resuming from the last sequence).

Errors::

    ClientError
    ├── ApiError          the broker answered with a problem document (``status``, ``code``)
    ├── SignatureError    a report's signature is missing or does not verify: never yielded
    ├── SealedError       a sealed payload cannot be opened with this node's key
    ├── StreamClosed      the broker closed the stream for good (revoked, bad message)
    ├── Unreachable       no connection (refused, TLS failure, timeout; a stream: past give_up_after)
    └── WitnessError      a checkpoint lacks the log's signature or the witness quorum, is another
                          log's, or does not extend the one verified before (rollback, fork)
"""

from broker.client.checkpoints import verify_witnessed
from broker.client.errors import (
    ApiError,
    ClientError,
    SealedError,
    SignatureError,
    StreamClosed,
    Unreachable,
    WitnessError,
)
from broker.client.sdk import BrokerClient, Recall, Received

__all__ = [
    "ApiError",
    "BrokerClient",
    "ClientError",
    "Recall",
    "Received",
    "SealedError",
    "SignatureError",
    "StreamClosed",
    "Unreachable",
    "WitnessError",
    "verify_witnessed",
]
