"""Writing through TAXII: an envelope's objects validated as STIX 2.1 and published as one
report under the collection's label and topics, and the status resource that answers it."""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.domain import stix
from broker.domain.records import NodeRecord, ReportRecord
from broker.domain.stix import CollectionRecord
from broker.errors import AccessDenied, InvalidInput, NotFound, PayloadTooLarge
from broker.services import publishing
from broker.services.collections import can_write
from broker.services.context import Context
from broker.services.taxii.common import collection, is_uuid, refuse
from broker.services.wire.decode import decode
from broker.services.wire.requests import MAX_OBJECTS_PER_POST, Envelope
from broker.storage import collections as store
from broker.storage.repos import Tx

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


def max_objects(ctx: Context) -> int:
    """Objects one POST may carry: each counts as one publish against the node's limit, so never
    more than the limit lets a node publish at once (``publish_burst``)."""
    return min(MAX_OBJECTS_PER_POST, ctx.settings.publish_burst)


async def publishes_in(ctx: Context, node: NodeRecord, envelope: object) -> int:
    """How many publishes a POST of ``envelope`` counts as against the node's limit: one per
    object (validating objects is the cost it bounds), at least one. An envelope with more
    objects than ``max_objects`` is refused before any is validated (413, audited)."""
    objects = envelope.get("objects") if isinstance(envelope, Mapping) else None
    count = len(objects) if isinstance(objects, list) else 1
    if count > max_objects(ctx):
        await refuse(
            ctx,
            node,
            "publish",
            PayloadTooLarge(f"a POST may carry at most {max_objects(ctx)} objects", code="too_many_objects"),
        )
    return max(count, 1)


def _check_envelope(envelope: object) -> list[Any]:
    return decode(Envelope, envelope).objects


def _validate(objects: Sequence[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Accepted objects; failures as the status resource keeps them ({id, message}: the object's
    id when it is a STIX id, and a stable code, never text quoting the object, since statuses are
    stored in plaintext and outlive the report); and the validator's messages, for the poster's
    answer alone when nothing was accepted.

    Codes: ``reserved_id`` and ``reserved_creator`` (``stix.reserved_claim``), ``invalid_stix``
    (the OASIS validator refused it)."""
    accepted: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    messages: list[str] = []
    for obj in objects:
        raw_id = obj.get("id") if isinstance(obj, Mapping) else None
        ident = raw_id if isinstance(raw_id, str) and stix.STIX_ID.fullmatch(raw_id) else ""
        claim = stix.reserved_claim(obj) if isinstance(obj, Mapping) else None
        # Required in a status (§4.3.1); the request's time stands in where the object has none,
        # or has something else there (a status is plaintext: it never quotes the object).
        version = stix.version_of(obj, date_added="") if isinstance(obj, Mapping) else ""
        version = version if _TIMESTAMP.fullmatch(version) else ""
        if claim is not None:
            failures.append({"id": ident, "version": version, "message": claim})
            messages.append(claim)
            continue
        refusal = oasis_validator()(obj)
        if refusal is None:
            accepted.append(obj)
        else:
            failures.append({"id": ident, "version": version, "message": "invalid_stix"})
            messages.append(refusal[:500])
    return accepted, failures, messages


@functools.cache
def oasis_validator() -> Callable[[Any], str | None]:
    """The OASIS STIX 2.1 validator as a function: None for a valid object, else its messages.

    Imported on first use, on the validating thread: loading it (jsonschema's format checkers
    build an RFC 3987 grammar) takes over a second of CPU, which every broker process would
    otherwise pay at start whether or not it ever receives a TAXII write."""
    from stix2validator import (  # type: ignore[import-untyped]  # the package ships no types
        ValidationError,
        ValidationOptions,
        validate_instance,
    )

    options = ValidationOptions(version="2.1")

    def check(obj: Any) -> str | None:
        try:
            result = validate_instance(obj, options)
        except ValidationError as exc:
            return str(exc)
        return None if result.is_valid else "; ".join(str(e) for e in result.errors)

    return check


def _version(obj: Mapping[str, Any], now: str) -> str:
    return stix.version_of(obj, date_added=now)


async def add_objects(ctx: Context, node: NodeRecord, collection_id: str, envelope: object) -> dict[str, Any]:
    """Validate an envelope's objects and publish those accepted as one report under the
    collection's label and topics (``publishing.publish``: its checks, limits and audit); return
    the status resource, which is also stored for ``status``."""
    found = await _writable(ctx, node, collection_id)
    try:
        objects = _check_envelope(envelope)
        accepted, failures, messages = await asyncio.to_thread(_validate, objects)
        if not accepted:
            raise InvalidInput("no object is valid STIX 2.1: " + "; ".join(messages[:3]), code="invalid_stix")
    except InvalidInput as exc:
        await refuse(ctx, node, "publish", exc)
    body = {
        "label": found.label,
        "topics": list(found.topics),
        "payload": {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": accepted},
    }
    outcome = _Status(str(uuid.uuid4()), stix.timestamp(ctx.now()), len(objects), accepted, failures)

    async def store_status(tx: Tx, report: ReportRecord) -> None:
        # In the report's transaction: never a report without its status, nor the reverse.
        await store.insert_status(
            tx,
            status_id=outcome.id,
            node=node.id,
            collection_id=found.id,
            report_id=report.id,
            at=ctx.now(),
            outcome=outcome.at(report.added),
        )

    receipt = await publishing.publish(ctx, node, body, idempotency_key=None, attach=store_status)
    return outcome.at(datetime.fromisoformat(receipt["created"]))


async def _writable(ctx: Context, node: NodeRecord, collection_id: str) -> CollectionRecord:
    """The collection, once ``node`` may write objects to it through TAXII (refusals audited)."""
    found = await collection(ctx, node, collection_id, act="publish")
    if not can_write(ctx, node, found):
        await refuse(
            ctx, node, "publish", AccessDenied("you may not write to this collection", code="not_writable")
        )
    if node.ed25519_public_key is not None:
        await refuse(
            ctx,
            node,
            "publish",
            AccessDenied(
                "your node has an Ed25519 key, so its reports must be signed, and TAXII cannot carry a "
                "signature: publish through REST POST /v1/reports with a signature",
                code="signature_required",
            ),
        )
    return found


@dataclass(frozen=True)
class _Status:
    """A POST's status resource, before its report is stamped."""

    id: str
    requested: str  # the request's time
    total: int
    accepted: list[dict[str, Any]]
    failures: list[dict[str, Any]]

    def at(self, created: datetime) -> dict[str, Any]:
        """The resource once the report was stamped ``created``: the date_added, and the version
        of an object without one, that the manifest and versions/ answer too."""
        added = stix.timestamp(created)
        outcome: dict[str, Any] = {
            "id": self.id,
            "status": "complete",
            "request_timestamp": self.requested,
            "total_count": self.total,
            "success_count": len(self.accepted),
            "successes": [{"id": o["id"], "version": _version(o, added)} for o in self.accepted],
            "failure_count": len(self.failures),
            "pending_count": 0,
        }
        if self.failures:  # TAXII 2.1 §2: an empty list is not sent
            outcome["failures"] = [f | {"version": f["version"] or self.requested} for f in self.failures]
        return outcome


async def status(ctx: Context, node: NodeRecord, status_id: str) -> dict[str, Any]:
    """A status resource, for the node that made it (404 for everyone else, audited as a
    denied ``read`` like an absent one: another node's status is a refusal, and on the record)."""
    async with ctx.db.read_transaction() as tx:
        found = None if not is_uuid(status_id) else await store.status(tx, status_id)
    if found is None or found[0] != node.id:
        await refuse(ctx, node, "read", NotFound("no such status", code="not_found"))
    return found[2]
