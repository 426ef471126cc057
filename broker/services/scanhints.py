"""Where listings stopped scanning: progress through hidden reports kept in the process,
never in an answer (services.reports.listing)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from broker.domain.alliances import Directory

HintKey = tuple[str, tuple[str, ...], int]  # node, topics, the request's ``after``


@dataclass(frozen=True)
class ScanHint:
    """Where a listing's scan stopped with nothing the node may see between its ``after`` and
    ``position``: the next identical request resumes the scan there. Kept in the process only,
    never in an answer (an answer that moved past hidden reports would reveal them)."""

    position: int
    counter: int
    made: datetime


class ScanHints:
    """A bounded map of scan hints, oldest dropped first."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._hints: OrderedDict[HintKey, ScanHint] = OrderedDict()

    def get(self, key: HintKey, *, counter: int, now: datetime, directory: Directory) -> int | None:
        hint = self._hints.get(key)
        if hint is None or hint.counter != counter or _boundary_between(directory, hint.made, now):
            return None
        return hint.position

    def put(self, key: HintKey, hint: ScanHint) -> None:
        self._hints[key] = hint
        self._hints.move_to_end(key)
        while len(self._hints) > self._size:
            self._hints.popitem(last=False)


def _boundary_between(directory: Directory, start: datetime, end: datetime) -> bool:
    """True when a membership begins or ends in (start, end]: decisions at ``end`` may differ
    from decisions at ``start`` although the change counter did not move (a join dated ahead)."""
    for periods in directory.memberships.values():
        for period in periods:
            for moment in (period.joined, period.left):
                if moment is not None and start < moment <= end:
                    return True
    return False
