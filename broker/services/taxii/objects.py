"""A report's payload as TAXII serves it: its objects, marked, and what each payload is known to
carry (so a filter that cannot match skips the decrypt)."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from broker.crypto.keyring import Keyring
from broker.domain import stix
from broker.domain.records import ReportRecord
from broker.domain.stix import Entry, Filters, Position
from broker.services import decisions
from broker.services.context import Context

PAYLOADS_OPENED = Counter(
    "broker_taxii_payloads_opened",
    "Report payloads decrypted to answer TAXII reads (a repeated search that matches nothing opens none)",
)


@dataclass
class Page:
    """What one decision served: entries in order, whether more follow, and where."""

    entries: list[Entry] = field(default_factory=list)
    more: bool = False
    next: Position | None = None


class PayloadIndex:
    """What each report's payload carries, by report id: (id, type, spec_version) of every object
    it serves. A stored payload never changes, so a filter by id, type or spec_version skips a
    report known to hold no match without decrypting it again (a repeated search that finds
    nothing costs one decrypt per report once, not every time). Bounded by the object ids held,
    oldest dropped first; an erased report's entry is dropped when a scan meets it."""

    def __init__(self, max_ids: int = 500_000) -> None:
        self._max_ids = max_ids
        self._size = 0
        self._carried: OrderedDict[str, tuple[tuple[str, str, str], ...]] = OrderedDict()

    def put(self, report_id: str, objects: Sequence[Mapping[str, Any]]) -> None:
        keys = tuple((str(o["id"]), str(o["type"]), stix.spec_version_of(o)) for o in objects)
        self.forget(report_id)
        self._carried[report_id] = keys
        self._size += len(keys)
        while self._size > self._max_ids and self._carried:
            self._size -= len(self._carried.popitem(last=False)[1])

    def forget(self, report_id: str) -> None:
        self._size -= len(self._carried.pop(report_id, ()))

    def may_match(self, report_id: str, filters: Filters) -> bool:
        """False only when the payload is known to hold no object ``filters`` match."""
        if not (filters.ids or filters.types or filters.spec_versions):
            return True
        keys = self._carried.get(report_id)
        if keys is None:
            return True
        self._carried.move_to_end(report_id)
        return any(filters.matches({"id": i, "type": t, "spec_version": v}) for i, t, v in keys)


# One per process: report ids are UUIDs, so brokers on different databases in one process share it.
PAYLOADS = PayloadIndex()


def open_served(ctx: Context, report: ReportRecord, keyring: Keyring | None = None) -> list[dict[str, Any]]:
    """The objects ``report``'s payload serves, decrypted (and counted) now."""
    served = stix.served_objects(json.loads(decisions.open_payload(ctx, report, keyring)))
    PAYLOADS_OPENED.inc()
    return served


def report_entries(
    ctx: Context, report: ReportRecord, filters: Filters, keyring: Keyring | None = None
) -> tuple[list[Entry], bool]:
    """The objects a report contributes under ``filters``: its label's marking-definitions when
    asked for, then its payload's objects, each marked with the label and its TLP; and whether
    the payload was decrypted for it. Payload objects at the broker's reserved ids, or naming
    the broker as their creator, are never served (a report stored before they were refused, or
    published through REST, may carry them)."""
    added = stix.timestamp(report.added)
    markings = stix.markings_of(report.label)
    found: list[Entry] = []
    if filters.wants_markings():
        found += [Entry(m, m["created"], added, report.seq) for m in markings]
    opened = False
    if PAYLOADS.may_match(report.id, filters):
        refs = [m["id"] for m in markings]
        served = open_served(ctx, report, keyring)
        PAYLOADS.put(report.id, served)
        opened = True
        for position, obj in enumerate(served):
            version = stix.version_of(obj, date_added=added)
            found.append(Entry(stix.marked(obj, refs), version, added, report.seq, position))
    return [e for e in found if filters.matches(e.obj)], opened
