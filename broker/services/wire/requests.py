"""Request bodies, declared once: the edge validates them with ``decode`` and the OpenAPI
document shows them. Checks that need more than a type (a nation, a label against the policy, a
public key) are the domain's and crypto's own functions, run as field validators.

The label is the one body part whose rules live in ``domain.labels``: stored labels are parsed
again at every access decision, by stdlib code. ``Label`` declares its shape for the document
from the same constants, and a unit test keeps the two in agreement."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, ConfigDict, Field, PlainValidator, StringConstraints, ValidationInfo
from pydantic import WithJsonSchema as Schema

from broker.crypto.signing import check_public_key
from broker.domain.access import ROLES
from broker.domain.labels import CAVEAT, MAX_CAVEATS, MAX_RELEASABLE, TLP_VALUES, SecurityLabel, parse_label
from broker.domain.nations import is_nation
from broker.domain.time import parse_time
from broker.errors import InvalidInput
from broker.services.wire.decode import Refusal, Wire, refused, refusing

TOPIC = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # always fullmatch
MAX_TOPICS = 16
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # always fullmatch
MAX_TOKEN_DAYS = 3650
MAX_OBJECTS_PER_POST = 1000
NATION_REFUSAL = "{name} {value!r} is not an ISO 3166-1 alpha-3 code (e.g. USA, GBR, SWE)"


def _ref(name: str) -> Schema:
    # Wrapped in allOf: pydantic resolves a bare $ref among the models it is generating, and the
    # document adds Label to its components itself (web.openapi).
    return Schema({"allOf": [{"$ref": f"#/components/schemas/{name}"}]})


# -- labels -----------------------------------------------------------------------------------------
class Label(Wire):
    """A security label as publishers write it (decided by ``domain.labels.parse_label``)."""

    policy: str | None = None
    classification: Annotated[str, Field(description="one of the policy's levels, lowest first")]
    releasable_to: Annotated[
        list[str],
        Field(max_length=MAX_RELEASABLE, description="ISO 3166-1 alpha-3 nations and alliance ids"),
    ] = Field(default_factory=list)
    caveats: Annotated[
        list[Annotated[str, StringConstraints(pattern=CAVEAT.pattern)]], Field(max_length=MAX_CAVEATS)
    ] = Field(default_factory=list)
    tlp: Annotated[str, Schema({"enum": sorted(TLP_VALUES)})] | None = None


@dataclass(frozen=True)
class ParsedLabel:
    """A label as sent (kept byte for byte) and as decided."""

    raw: dict[str, Any]
    label: SecurityLabel


def _label(value: object, info: ValidationInfo) -> ParsedLabel:
    """The label against the policy and the known alliances in the validation context."""
    context = info.context or {}
    try:
        label = parse_label(value, policy=context["policy"], known_alliances=context["known_alliances"])
    except InvalidInput as exc:
        raise refused(exc) from None
    assert isinstance(value, dict)  # parse_label refuses anything else
    return ParsedLabel(dict(value), label)


LabelField = Annotated[
    ParsedLabel,
    PlainValidator(_label),
    _ref("Label"),
    Refusal("invalid_label", "label must be a JSON object"),
]
Topic = Annotated[str, StringConstraints(pattern=TOPIC.pattern)]


# -- publish ----------------------------------------------------------------------------------------
def _uuid(value: str) -> str:
    return str(uuid.UUID(value))  # its ValueError is the field's refusal


class PublishRequest(Wire):
    """POST /v1/reports. Fields are declared in the order their refusals take precedence."""

    id: Annotated[
        Annotated[str, AfterValidator(_uuid), Schema({"type": "string", "format": "uuid"})] | None,
        Refusal("invalid_id", "id must be a UUID string"),
    ] = None
    label: LabelField
    payload: Annotated[dict[str, Any], Refusal("invalid_payload", "payload must be a JSON object")]
    signature: Annotated[
        str | None,
        Field(description="base64 Ed25519 signature; required from a node with an Ed25519 key"),
        Refusal("invalid_signature", "signature must be a base64 string"),
    ] = None
    topics: Annotated[
        list[Topic],
        Field(max_length=MAX_TOPICS),
        Refusal(
            "invalid_topics",
            f"topics must be a list of at most {MAX_TOPICS} tags",
            item="topic {value!r} must match " + TOPIC.pattern,
        ),
    ] = Field(default_factory=list)


# -- nodes ------------------------------------------------------------------------------------------
def _nation(value: str, *, name: str) -> str:
    if not is_nation(value):
        raise refused(InvalidInput(not_a_nation(value, name), code="unknown_nation"))
    return value


def not_a_nation(value: object, name: str) -> str:
    """Why ``value`` is no nation, with the code meant when only its case is wrong."""
    text = NATION_REFUSAL.replace("{name}", name).replace("{value!r}", repr(value))
    if isinstance(value, str) and is_nation(value.upper()):
        return f"{text}: codes are upper case, {value.upper()}"
    return text


def _clearance(value: str, info: ValidationInfo) -> str:
    policy = (info.context or {})["policy"]
    if not policy.is_level(value):
        raise refused(InvalidInput(f"clearance must be one of {list(policy.levels)}", code="invalid_node"))
    return value


def _role(value: str) -> str:
    if value not in ROLES:
        raise ValueError(value)
    return value


CLEARANCE = Refusal("invalid_node", "clearance must be one of the policy's levels")
ROLES_REFUSAL = Refusal("invalid_node", f"roles must be a non-empty subset of {sorted(ROLES)}")
CAVEATS_REFUSAL = Refusal("invalid_node", f"caveats must match {CAVEAT.pattern}")
AUDIENCE = Refusal("invalid_node", "audience must be a list of strings")
ORIGINS = Refusal("invalid_node", "origins must be a list of strings")
Clearance = Annotated[str, AfterValidator(_clearance), CLEARANCE]
Roles = Annotated[
    list[Annotated[str, AfterValidator(_role), Schema({"enum": sorted(ROLES)})]],
    Field(min_length=1),
    ROLES_REFUSAL,
]
Caveats = Annotated[
    list[Annotated[str, StringConstraints(pattern=CAVEAT.pattern)]],
    CAVEATS_REFUSAL,
]
Certificate = Annotated[
    str | None,
    Field(description="PEM client certificate to pin the node to (null: unpin)"),
    Refusal("invalid_certificate", "certificate must be a PEM string"),
]
TokenDays = Annotated[
    Annotated[int, Field(ge=1, le=MAX_TOKEN_DAYS)] | None,
    Refusal("invalid_node", f"token_days must be an integer from 1 to {MAX_TOKEN_DAYS}"),
]
Ed25519Key = Annotated[
    Annotated[
        str,
        AfterValidator(refusing(partial(check_public_key, what="ed25519_public_key"))),
        Field(description="base64 raw 32-byte Ed25519 public key: the node must sign what it publishes"),
    ]
    | None,
    Refusal("invalid_key", "ed25519_public_key must be base64"),
]
X25519Key = Annotated[
    Annotated[
        str,
        AfterValidator(refusing(partial(check_public_key, what="x25519_public_key"))),
        Field(description="base64 raw 32-byte X25519 public key: payloads are sealed to it"),
    ]
    | None,
    Refusal("invalid_key", "x25519_public_key must be base64"),
]
Audience = Annotated[
    list[str],
    Field(description="federate links: nations and alliance ids it receives for"),
    AUDIENCE,
]
Origins = Annotated[
    list[str],
    Field(description="federate links: originator nations it may carry"),
    ORIGINS,
]


class NodeSpec(Wire):
    """POST /v1/admin/nodes (and the CLI's ``node add``)."""

    UNKNOWN: ClassVar[Refusal] = Refusal("invalid_node", "unknown fields: {value}")

    id: Annotated[
        str,
        StringConstraints(pattern=NODE_ID.pattern),
        Refusal("invalid_node", f"id must match {NODE_ID.pattern}"),
    ]
    nation: Annotated[
        str,
        AfterValidator(partial(_nation, name="nation")),
        Refusal("unknown_nation", NATION_REFUSAL.replace("{name}", "nation")),
    ]
    clearance: Clearance
    roles: Roles
    caveats: Caveats = Field(default_factory=list)
    ed25519_public_key: Ed25519Key = None
    x25519_public_key: X25519Key = None
    certificate: Certificate = None
    token_days: TokenDays = None
    audience: Audience = Field(default_factory=list)
    origins: Origins = Field(default_factory=list)


class NodeUpdate(Wire):
    """PATCH /v1/admin/nodes/{id}: one or more of a node's changeable fields."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    clearance: Annotated[Clearance | None, CLEARANCE] = None
    caveats: Annotated[Caveats | None, CAVEATS_REFUSAL] = None
    roles: Annotated[Roles | None, ROLES_REFUSAL] = None
    ed25519_public_key: Ed25519Key = None
    x25519_public_key: X25519Key = None
    certificate: Certificate = None
    audience: Annotated[Audience | None, AUDIENCE] = None
    origins: Annotated[Origins | None, ORIGINS] = None


NodeUpdate.UNKNOWN = Refusal("invalid_node", f"give one or more of {sorted(NodeUpdate.model_fields)}")


class TokenRequest(Wire):
    """POST /v1/admin/nodes/{id}/rotate-token (optional body)."""

    NOT_OBJECT: ClassVar[Refusal] = Refusal("invalid_body", 'the body may only hold {"token_days": N}')
    UNKNOWN: ClassVar[Refusal] = NOT_OBJECT

    token_days: TokenDays = None


# -- alliances --------------------------------------------------------------------------------------
def _date(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("date must be an ISO-8601 string", code="invalid_date")
    return parse_time(value, name="date")


class MembershipRequest(Wire):
    """PUT and DELETE /v1/admin/alliances/{id}/members/{nation} (optional body)."""

    NOT_OBJECT: ClassVar[Refusal] = Refusal("invalid_body", 'the body may only hold {"date": ISO-8601}')
    UNKNOWN: ClassVar[Refusal] = NOT_OBJECT

    date: Annotated[
        datetime | None,
        PlainValidator(refusing(_date)),
        Schema({"type": ["string", "null"], "description": "ISO-8601 date or date-time (default: now)"}),
        Refusal("invalid_date", "date must be an ISO-8601 string"),
    ] = None


# -- TAXII ------------------------------------------------------------------------------------------
class CollectionSpec(Wire):
    """POST /v1/admin/collections (and the CLI's ``collection add``)."""

    UNKNOWN: ClassVar[Refusal] = Refusal("invalid_collection", "unknown fields: {value}")

    title: Annotated[
        str,
        StringConstraints(min_length=1, max_length=200),
        Refusal("invalid_collection", "title must be 1-200 characters"),
    ]
    description: Annotated[
        str | None,
        Field(max_length=2000),
        Refusal("invalid_collection", "description must be at most 2000 characters"),
    ] = None
    topics: Annotated[
        list[Topic],
        Field(min_length=1, max_length=MAX_TOPICS),
        Refusal("invalid_collection", f"topics must be 1-{MAX_TOPICS} tags matching {TOPIC.pattern}"),
    ]
    label: LabelField


class Envelope(Wire):
    """A TAXII 2.1 envelope POSTed to a collection's objects; each object is validated by the
    OASIS STIX validator, and one that fails is reported in the status resource, not refused here."""

    NOT_OBJECT: ClassVar[Refusal] = Refusal("invalid_envelope", "the body must be a TAXII envelope")
    UNKNOWN: ClassVar[Refusal] = NOT_OBJECT

    objects: Annotated[
        list[Any],
        Field(min_length=1, max_length=MAX_OBJECTS_PER_POST),
        Refusal("invalid_envelope", f"the envelope must hold 1 to {MAX_OBJECTS_PER_POST} objects"),
    ]
    more: Any = None
    next: Any = None
