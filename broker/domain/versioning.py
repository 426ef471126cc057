"""Which versions of a STIX object a reader is served: the one rule every TAXII view applies
(objects, object by id, versions, manifest; and DELETE by version, which names versions as
reads resolve them).

STIX 2.1: only an object's creator versions it. A member posting an object at an id another node
published, at the same or a later ``modified``, must not become what a reader of both is served
as the object. Refusing such a publish would fail ordinary bundles (ids many producers copy:
MITRE ATT&CK objects, STIX 2.1's TLP 1.0 marking-definitions) and tell the publisher whether any
report, even one hidden from it, holds the id. So the rule is on the read side, and decided from
the reports the reader may see alone: of an object's versions in those reports, only the ones
the node that published the first stored of them published count. A reader of the creator's
report and a copy is served the creator's versions; a reader of the copy alone is served the
copy, and learns nothing of the report it may not see.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from broker.domain.stix import VERSION_KEYWORDS, instant


@dataclass(frozen=True)
class Held:
    """One version of an object, in a report the reader may see (in the collection, by the
    access rule)."""

    seq: int  # the report's sequence: the order versions were stored in
    position: int  # its place among the objects its report serves
    publisher: str  # the node that published the report
    version: datetime  # its modified, else created, else the report's date_added
    removed: bool = False  # its publisher removed this version (DELETE by version)
    filtered: bool = False  # the request's added_after or match[spec_version] leaves it out

    @property
    def order(self) -> tuple[datetime, int, int]:
        """How versions sort for ``first`` and ``last``: equal versions by report, then place."""
        return (self.version, self.seq, self.position)


def publisher(held: Iterable[Held]) -> str | None:
    """The node whose versions of the object count for the reader: the publisher of the first
    stored of ``held``. Removed and filtered versions count here too: a creator removing a
    version, or a request's filters leaving its versions out (a poller's ``added_after``), never
    hands the object to a node that posted a copy after it."""
    first = min(held, key=lambda h: (h.seq, h.position), default=None)
    return None if first is None else first.publisher


def visible(held: Iterable[Held]) -> list[Held]:
    """The versions the reader may be served at all, whatever the request's filters: the
    publisher's, bar those it removed, in ``held``'s order. None: the object is absent for the
    reader (404 by id)."""
    items = list(held)
    owner = publisher(items)
    return [h for h in items if h.publisher == owner and not h.removed]


def shown(held: Iterable[Held], versions: Sequence[str]) -> list[Held]:
    """The versions served under ``match[version]`` (``all``, ``first``, ``last`` or timestamps),
    judged among the visible ones the request's filters keep, in ``held``'s order."""
    counted = [h for h in visible(held) if not h.filtered]
    if "all" in versions or not counted:
        return counted
    stamps = {instant(v) for v in versions if v not in VERSION_KEYWORDS}
    ends = set()
    if "first" in versions:
        ends.add(min(h.order for h in counted))
    if "last" in versions:
        ends.add(max(h.order for h in counted))
    return [h for h in counted if h.version in stamps or h.order in ends]
