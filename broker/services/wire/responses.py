"""Response bodies, declared once for the OpenAPI document. Services build these answers as
plain dicts (the hot paths stay free of model construction); every answer the integration tests
receive is checked against the schemas generated from here, and ``extra="forbid"`` closes each
object, so an answer that grows a field not declared here fails those tests."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from broker.services.wire.decode import Wire
from broker.services.wire.requests import Label


class Problem(Wire):
    """RFC 9457 problem document: ``type`` is ``urn:alliance-broker:problem:<code>``, stable."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None


class Links(Wire):
    service: str
    audit_page: str
    openapi: str
    health: str


class PeerHealth(Wire):
    state: Literal["connected", "connecting", "refused", "error"]
    lag: float


class Health(Wire):
    status: str
    witnessed: bool | None = None
    witness_quorum: int | None = None
    cosigners: int | None = None
    refused_by: list[str] | None = None
    peers: Annotated[
        dict[str, PeerHealth] | None,
        Field(description="each upstream peer's link: state and lag only, never a URL or a credential"),
    ] = None


class Receipt(Wire):
    id: str
    sequence: int
    created: str
    notice: Annotated[
        str | None,
        Field(
            description="present when the label releases the report to nobody (releasable_to empty): "
            "only the originator's nation can read it"
        ),
    ] = None


class Originator(Wire):
    node: str
    nation: str


class Sealed(Wire):
    enc: str
    ct: str


class Hop(Wire):
    broker: str
    sequence: int
    event_hash: str


class Report(Wire):
    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["payload"]}, {"required": ["sealed"]}]}
    )

    id: str
    sequence: int
    originator: Originator
    label: Label
    topics: list[str]
    created: str
    signature: str | None
    payload: dict[str, Any] | None = None
    sealed: Sealed | None = None
    provenance: Annotated[
        list[Hop] | None, Field(description="an imported report's path, origin first, this broker last")
    ] = None


class ReportPage(Wire):
    reports: list[Report]
    next_after: int


class Recalled(Wire):
    id: str
    recalled: bool


class NodeKeys(Wire):
    id: str
    nation: str
    ed25519_public_key: str | None
    x25519_public_key: str | None


class Node(Wire):
    """A node as admins see it: never the token hash."""

    id: str
    nation: str
    clearance: str
    caveats: list[str]
    roles: list[str]
    ed25519_public_key: str | None
    x25519_public_key: str | None
    created: str
    revoked: str | None
    certificate_sha256: str | None
    token_expires: str | None
    audience: list[str]
    origins: list[str]
    # Another broker's originator of imported reports (never authenticates), and its peer.
    foreign: bool
    peer: str | None


class NodeList(Wire):
    nodes: list[Node]


class NodeToken(Wire):
    """A node's token, shown once."""

    id: str
    token: str
    expires: str | None = None


class Revoked(Wire):
    id: str
    revoked: bool


class Cursor(Wire):
    name: str
    sequence: int
    updated: str


class Cursors(Wire):
    node: str
    cursors: list[Cursor]


class CursorReset(Wire):
    node: str
    name: str
    reset: bool
    sequence: int


class Membership(Wire):
    alliance: str
    nation: str
    joined: str | None = None
    left: str | None = None


class Period(Wire):
    nation: str
    joined: str
    left: str | None


class Alliance(Wire):
    id: str
    name: str
    history: Literal["full", "since-join"]
    members: list[str]
    memberships: list[Period]


class AllianceList(Wire):
    alliances: list[Alliance]


class Event(Wire):
    seq: int
    time: str
    actor: str | None
    action: str
    report: str | None
    node: str | None
    nation: str | None
    decision: str | None
    reason: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class EventPage(Wire):
    events: list[Event]
    next_after: int


class Cosigner(Wire):
    name: str
    timestamp: int


class Checkpoint(Wire):
    size: int
    head: str
    root: str
    time: str
    key_id: str
    signature: str
    origin: str
    note: Annotated[str, Field(description="the signed note with every witness cosignature line")]
    cosigners: list[Cosigner]
    witness_quorum: int


class CheckpointKey(Wire):
    name: str
    public_key: str
    key_id: str
    vkey: str


class InclusionProof(Wire):
    seq: int
    leaf_index: int
    tree_size: int
    leaf_hash: str
    root: str
    path: list[str]


class ConsistencyProof(Wire):
    first: int
    second: int
    first_root: str
    second_root: str
    path: list[str]


class Whoami(Wire):
    id: str
    nation: str
    roles: list[str]


class SignatureStatus(Wire):
    present: bool
    verified: bool | None
    detail: str
    value: str | None


class ReportMetadata(Wire):
    """What an auditor may know about a report: never the payload."""

    id: str
    sequence: int
    originator: Originator
    label: Label
    label_hash: str
    topics: list[str]
    created: str
    recalled: str | None
    erased: str | None
    payload_sha256: str | None
    signature: SignatureStatus


class Collection(Wire):
    id: str
    title: str
    description: str | None
    topics: list[str]
    label: Label
    created: str


class CollectionList(Wire):
    collections: list[Collection]


class Created(Wire):
    id: str


class Removed(Wire):
    id: str
    removed: bool


class Peer(Wire):
    """An upstream broker this one pulls from, as admins see it: never a secret."""

    name: str
    url: str
    origins: list[str]
    broker_key: str
    state: Literal["connected", "connecting", "refused", "error"]
    lag: float | None
    last_error: str | None
    cursor: int
    created: str


class PeerList(Wire):
    peers: list[Peer]


class PeerRemoved(Wire):
    name: str
    removed: bool
