"""STIX 2.1 and TAXII 2.1, the pure parts: collections, markings, filters, versions, cursors.

No I/O. The web edge (``web.taxii``) parses requests into these objects; ``services.taxii``
decides, reads and audits; what is served is shaped here.

Markings: every served object names two marking-definitions in ``object_marking_refs``: one that
states the report's security label (our property extension, ``LABEL_EXTENSION_ID``, at an id
derived from the canonical label, so the same label always has the same marking id), and the
TLP 2.0 marking the classification maps to (``TLP_BY_CLASSIFICATION``; a stricter ``tlp`` in the
label wins). TLP 2.0 marking-definitions have the standard ids every STIX tool knows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.domain.canonical import canonical
from broker.domain.time import parse_time
from broker.errors import BadRequest, InvalidInput

TAXII_MEDIA = "application/taxii+json;version=2.1"
STIX_MEDIA = "application/stix+json;version=2.1"

# Ours, stable forever: a node that stored a marking keeps pointing at the same definitions.
NAMESPACE = uuid.UUID("6f1f3f62-3c59-4d61-9d0e-4e1f3b7b2a10")
BROKER_IDENTITY_ID = "identity--" + str(uuid.uuid5(NAMESPACE, "alliance-broker"))
LABEL_EXTENSION_ID = "extension-definition--" + str(uuid.uuid5(NAMESPACE, "security-label/v1"))
EPOCH = "2026-01-01T00:00:00.000Z"  # created/modified of the fixed objects above
FIXED_DATE_ADDED = "2026-01-01T00:00:00.000000Z"  # their date_added (TAXII: microseconds)

# TLP 2.0 (FIRST), as STIX 2.1 marking-definitions (OASIS cti-stix-common-objects).
TLP_EXTENSION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP_IDS = {
    "CLEAR": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "GREEN": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "AMBER": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "AMBER+STRICT": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "RED": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TLP_ORDER = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")
# Nothing the broker holds is public, so nothing maps to CLEAR: UNCLASSIFIED reports still go
# only to the nations and alliances named in their labels (a community: GREEN).
TLP_BY_CLASSIFICATION = {
    "UNCLASSIFIED": "GREEN",
    "RESTRICTED": "AMBER",
    "CONFIDENTIAL": "AMBER+STRICT",
    "SECRET": "RED",
    "TOP_SECRET": "RED",
}
_TLP_ID_SET = frozenset(TLP_IDS.values())
RESERVED_IDS = frozenset({BROKER_IDENTITY_ID, LABEL_EXTENSION_ID, *TLP_IDS.values()})
MARKING_TYPES = frozenset({"marking-definition", "extension-definition", "identity"})
STIX_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,249}--[0-9a-fA-F-]{36}")


@dataclass(frozen=True)
class CollectionRecord:
    """A TAXII collection: a window on the reports carrying one of ``topics``; writes through it
    get ``label`` (as the admin gave it) and ``topics``."""

    id: str
    title: str
    description: str | None
    topics: tuple[str, ...]
    label: dict[str, Any]
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """As admins see it."""
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "topics": list(self.topics),
            "label": self.label,
            "created": self.created_at.isoformat(),
        }


def timestamp(moment: datetime) -> str:
    """A TAXII/STIX timestamp: UTC, microseconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: str, *, name: str) -> datetime:
    """A timestamp from a query parameter (domain.time: the one parser), as aware UTC; a bad one
    is a 400, as TAXII answers bad query parameters."""
    try:
        moment = parse_time(value, name=name)
    except InvalidInput as exc:
        raise BadRequest(exc.message, code="invalid_parameter") from exc
    assert moment is not None  # parse_time maps only None to None
    return moment


# -- markings ---------------------------------------------------------------------------------
def tlp_for(label: Mapping[str, Any]) -> str:
    """The TLP 2.0 level a label maps to: from its classification, or its own ``tlp`` when
    that is stricter."""
    mapped = TLP_BY_CLASSIFICATION.get(str(label.get("classification")), "RED")
    own = label.get("tlp")
    if isinstance(own, str) and own in TLP_ORDER and TLP_ORDER.index(own) > TLP_ORDER.index(mapped):
        return own
    return mapped


def label_marking_id(label: Mapping[str, Any]) -> str:
    """The marking-definition id that states ``label``: a UUIDv5 of its canonical bytes."""
    return "marking-definition--" + str(uuid.uuid5(NAMESPACE, canonical(dict(label)).decode()))


def label_marking(label: Mapping[str, Any]) -> dict[str, Any]:
    """The marking-definition stating ``label`` (our property extension)."""
    statement: dict[str, Any] = {
        "extension_type": "property-extension",
        "classification": label.get("classification"),
    }
    # STIX 2.1 §3.3: an empty list is not a value, so a label without caveats states none.
    for key in ("releasable_to", "caveats"):
        if label.get(key):
            statement[key] = list(label[key])
    if label.get("policy") is not None:
        statement["policy"] = label["policy"]
    caveats = "/".join(statement.get("caveats", []))
    name = f"{statement['classification']} REL TO {', '.join(statement.get('releasable_to', [])) or '-'}"
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": label_marking_id(label),
        "created": EPOCH,
        "created_by_ref": BROKER_IDENTITY_ID,
        "name": name + (f" {caveats}" if caveats else ""),
        "extensions": {LABEL_EXTENSION_ID: statement},
    }


def tlp_marking(level: str) -> dict[str, Any]:
    """The standard TLP 2.0 marking-definition for ``level``."""
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP_IDS[level],
        "created": "2022-10-01T00:00:00.000Z",
        "name": f"TLP:{level}",
        "extensions": {TLP_EXTENSION_ID: {"extension_type": "property-extension", "tlp_2_0": level.lower()}},
    }


def fixed_objects() -> list[dict[str, Any]]:
    """The broker's identity and the extension-definition the label markings use."""
    identity = {
        "type": "identity",
        "spec_version": "2.1",
        "id": BROKER_IDENTITY_ID,
        "created": EPOCH,
        "modified": EPOCH,
        "name": "Alliance Broker",
        "identity_class": "system",
    }
    extension = {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": LABEL_EXTENSION_ID,
        "created_by_ref": BROKER_IDENTITY_ID,
        "created": EPOCH,
        "modified": EPOCH,
        "name": "Alliance Broker security label",
        "description": "States a report's classification, releasability (nations and alliances) and "
        "caveats, after NATO ADatP-4774. A recipient must not share the object beyond the label.",
        "schema": "https://alliance-broker.invalid/docs/taxii.md#the-label-marking",
        "version": "1.0.0",
        "extension_types": ["property-extension"],
    }
    return [identity, extension]


def markings_of(label: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The marking-definitions a report's objects refer to: its label's and its TLP's."""
    return [label_marking(label), tlp_marking(tlp_for(label))]


def marked(obj: Mapping[str, Any], refs: Sequence[str]) -> dict[str, Any]:
    """``obj`` with ``refs`` (the broker's label marking, then its TLP) first in its
    ``object_marking_refs``: the broker's marking is authoritative, so it leads, and a TLP
    marking of the object's own that is not the broker's is dropped (an object posted as
    TLP:CLEAR into a SECRET collection is served as the collection's TLP, not as both). A TLP
    marking-definition is served as posted: STIX allows those only exactly as defined, and the
    definition of a TLP level says nothing the report's label does not govern already."""
    if is_tlp_definition(obj):
        return dict(obj)
    kept = obj.get("object_marking_refs")
    current = [r for r in kept if isinstance(r, str)] if isinstance(kept, list) else []
    ours = [r for r in refs if r != obj.get("id")]
    own = [r for r in current if r not in _TLP_ID_SET or r in ours]
    out = dict(obj)
    out["object_marking_refs"] = list(dict.fromkeys([*ours, *own]))
    if not out["object_marking_refs"]:
        del out["object_marking_refs"]
    return out


def is_tlp_definition(obj: Mapping[str, Any]) -> bool:
    """A TLP marking-definition: STIX 2.1's (``definition_type`` tlp) or a TLP 2.0 one."""
    if obj.get("type") != "marking-definition":
        return False
    extensions = obj.get("extensions")
    return obj.get("definition_type") == "tlp" or (
        isinstance(extensions, Mapping) and TLP_EXTENSION_ID in extensions
    )


def is_label_marking_id(object_id: str) -> bool:
    """True for any id in the broker's label-marking namespace: a marking-definition whose UUID
    is version 5 (``label_marking_id``: a UUIDv5 of a canonical label). Which label it states
    cannot be told from the id, so every such id is the broker's: STIX 2.1 gives
    marking-definitions UUIDv4 ids, so no producer's marking needs one."""
    kind, _, rest = object_id.partition("--")
    if kind != "marking-definition":
        return False
    try:
        return uuid.UUID(rest).version == 5
    except ValueError:
        return False


def reserved_claim(obj: Mapping[str, Any]) -> str | None:
    """Why a payload object may not be stored or served, as a stable code; None when it may.
    ``reserved_id``: it occupies an id the broker states its own markings and identity at (a
    label marking, a TLP marking, its identity, its extension-definition), so it would be served
    as the broker's statement. ``reserved_creator``: it names the broker as its creator."""
    ident = obj.get("id")
    if isinstance(ident, str) and (ident in RESERVED_IDS or is_label_marking_id(ident)):
        return "reserved_id"
    if obj.get("created_by_ref") == BROKER_IDENTITY_ID:
        return "reserved_creator"
    return None


# -- the objects of a report -------------------------------------------------------------------
def objects_of(payload: object) -> list[dict[str, Any]]:
    """The STIX objects a payload carries: a bundle's ``objects``, or the payload itself when it
    is one object (``type`` and ``id``). Anything else carries none."""
    if not isinstance(payload, Mapping):
        return []
    if payload.get("type") == "bundle":
        found = payload.get("objects")
        if not isinstance(found, list):
            return []
        return [dict(o) for o in found if _is_object(o)]
    return [dict(payload)] if _is_object(payload) else []


def _is_object(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("type"), str)
        and isinstance(value.get("id"), str)
        and STIX_ID.fullmatch(value["id"]) is not None
    )


def version_of(obj: Mapping[str, Any], *, date_added: str) -> str:
    """An object's version: ``modified``, else ``created``, else when it was added."""
    for key in ("modified", "created"):
        value = obj.get(key)
        if isinstance(value, str):
            return value
    return date_added


def spec_version_of(obj: Mapping[str, Any]) -> str:
    value = obj.get("spec_version")
    return value if isinstance(value, str) else "2.1"


# -- the object index ------------------------------------------------------------------------
# Its key comes from the keyring's stable secret (crypto.cursors.index_key).


def id_digest(key: bytes, object_id: str) -> str:
    """The index's name for a STIX id: HMAC-SHA-256 under the index key, hex. Equal ids meet;
    without the key, the database does not tell which ids it holds."""
    return hmac.new(key, object_id.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Indexed:
    """One payload object as the index holds it: its place among the objects its report serves,
    its id's digest, its version and its spec_version."""

    position: int
    digest: str
    version: datetime
    spec_version: str
    excluded: bool = False  # its originator removed this version (TAXII DELETE by version)


def served_objects(payload: object) -> list[dict[str, Any]]:
    """The payload objects a collection may serve, in order (never those at the broker's
    reserved ids or naming the broker as their creator)."""
    return [o for o in objects_of(payload) if reserved_claim(o) is None]


# The index's spec_version column holds 8 characters (models.TaxiiObjectRow). A longer value is
# kept cut to 8: it matches no filter whole or cut (filters name SPEC_VERSIONS), and a value
# PostgreSQL refuses would fail the publish's shared transaction, every other act of it too.
INDEX_SPEC_VERSION_CHARS = 8


def index_of(payload: object, *, key: bytes, date_added: str) -> list[Indexed]:
    """What the index holds for a report's payload (``date_added``: the report's ``created``, the
    version of an object that has neither ``modified`` nor ``created``)."""
    return [
        Indexed(
            i,
            id_digest(key, str(o["id"])),
            instant(version_of(o, date_added=date_added)),
            spec_version_of(o)[:INDEX_SPEC_VERSION_CHARS],
        )
        for i, o in enumerate(served_objects(payload))
    ]


# -- filters ---------------------------------------------------------------------------------
VERSION_KEYWORDS = frozenset({"last", "first", "all"})
SPEC_VERSIONS = frozenset({"2.0", "2.1"})
MAX_FILTER_VALUES = 100


@dataclass(frozen=True)
class Filters:
    """TAXII 2.1 ``match[...]`` and ``added_after``, parsed."""

    ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    versions: tuple[str, ...] = ("last",)
    spec_versions: frozenset[str] = frozenset()
    added_after: datetime | None = None
    # The request's filters in canonical form (a key for scan hints).
    key: str = field(default="", compare=False)

    def wants_markings(self) -> bool:
        """Marking-definitions are served when asked for by type or by id."""
        return bool(self.types & MARKING_TYPES) or any(i.split("--")[0] in MARKING_TYPES for i in self.ids)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """True when ``obj`` passes the id, type and spec_version filters."""
        if self.ids and obj.get("id") not in self.ids:
            return False
        if self.types and obj.get("type") not in self.types:
            return False
        return not self.spec_versions or spec_version_of(obj) in self.spec_versions


def _values(raw: str | None, name: str) -> list[str]:
    if raw is None:
        return []
    values = [v for v in raw.split(",") if v]
    if not values or len(values) > MAX_FILTER_VALUES:
        raise BadRequest(
            f"{name} must hold 1 to {MAX_FILTER_VALUES} comma-separated values", code="invalid_parameter"
        )
    return values


def parse_filters(query: Mapping[str, str], *, fixed_id: str | None = None) -> Filters:
    """TAXII filters from query parameters; ``fixed_id`` is an object id from the path."""
    ids = _values(query.get("match[id]"), "match[id]")
    if fixed_id is not None:
        ids = [fixed_id]
    types = _values(query.get("match[type]"), "match[type]")
    versions = _values(query.get("match[version]"), "match[version]") or ["last"]
    specs = _values(query.get("match[spec_version]"), "match[spec_version]")
    for value in ids:
        if STIX_ID.fullmatch(value) is None:
            raise BadRequest(f"match[id]: {value!r} is not a STIX id", code="invalid_parameter")
    if not all(re.fullmatch(r"[a-z0-9][a-z0-9-]{0,249}", t) for t in types):
        raise BadRequest("match[type] holds a value that is not a STIX type", code="invalid_parameter")
    for value in versions:
        if value not in VERSION_KEYWORDS:
            parse_timestamp(value, name="match[version]")
    if not set(specs) <= SPEC_VERSIONS:
        raise BadRequest(
            f"match[spec_version] must be among {sorted(SPEC_VERSIONS)}", code="invalid_parameter"
        )
    added = query.get("added_after")
    added_after = None if added is None else parse_timestamp(added, name="added_after")
    key = canonical(
        {"i": sorted(ids), "t": sorted(types), "v": versions, "s": sorted(specs), "a": added}
    ).decode()
    return Filters(frozenset(ids), frozenset(types), tuple(versions), frozenset(specs), added_after, key)


@dataclass(frozen=True)
class Entry:
    """One object as a collection serves it, with where it came from."""

    obj: dict[str, Any]
    version: str
    date_added: str
    report_seq: int
    position: int = -1  # among the payload objects the report serves; -1 for a broker marking


def select_versions(entries: Iterable[Entry], versions: Sequence[str]) -> list[Entry]:
    """The entries ``match[version]`` keeps, in their order: ``all``; ``first`` and ``last`` per
    object id (among ``entries``); or those whose version equals one of the given timestamps."""
    items = list(entries)
    if "all" in versions:
        return items
    keep: set[int] = set()
    stamps = {instant(v) for v in versions if v not in VERSION_KEYWORDS}
    by_id: dict[str, list[int]] = {}
    for i, entry in enumerate(items):
        by_id.setdefault(str(entry.obj.get("id")), []).append(i)
        if stamps and instant(entry.version) in stamps:
            keep.add(i)
    for indexes in by_id.values():
        ordered = sorted(indexes, key=lambda i: (instant(items[i].version), i))
        if "first" in versions:
            keep.add(ordered[0])
        if "last" in versions:
            keep.add(ordered[-1])
    return [e for i, e in enumerate(items) if i in keep]


def instant(value: str) -> datetime:
    try:
        moment = parse_time(value, name="version")
    except InvalidInput:  # a payload's odd timestamp sorts first rather than failing the page
        moment = None
    return moment or datetime.min.replace(tzinfo=UTC)


# -- paging cursors --------------------------------------------------------------------------
@dataclass(frozen=True)
class Position:
    """Where a page resumes: at object ``index`` of the report with sequence ``seq`` (reports
    below ``seq`` are done). Only ever a place just after something the node was served or may
    see, never past a hidden report."""

    seq: int = 0
    index: int = 0


MAX_SEQ = 2**63 - 1  # a report sequence is a signed 64-bit integer on both engines
MAX_INDEX = 2**32 - 1
