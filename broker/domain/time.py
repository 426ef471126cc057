"""Times from the edge: the one parser of ISO-8601 dates and times that clients and operators send.

Accepted: a calendar date (``2026-11-25`` or ``20261125``), alone or followed by ``T``, ``t`` or a
space and a time (``12``, ``12:00``, ``12:00:00``, ``12:00:00.5``; basic forms without colons too),
then optionally ``Z``/``z`` or an offset (``+01``, ``+01:00``, ``+0100``, ``-05:30``). RFC 3339
timestamps are a subset. A date alone means 00:00 UTC; a time without an offset is UTC.

The answer is always an aware datetime in UTC. Anything else, including a time whose conversion
to UTC leaves the years 1-9999 (``9999-12-31T23:59:59-01:00``), is refused with
:class:`~broker.errors.InvalidInput` (code ``invalid_date``) naming the parameter.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from broker.errors import InvalidInput

_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{8}"
_TIME = r"[0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2}(?:[.,][0-9]{1,9})?)?)?"
# Offsets to the second, never a fraction of one: none is ISO 8601, and Python's parser dropped
# the fraction, reading another instant than the one written.
_OFFSET = r"[Zz]|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?"
ISO_8601 = re.compile(rf"(?:{_DATE})(?:[Tt ](?:{_TIME})(?:{_OFFSET})?)?")


def parse_time(value: str | None, *, name: str) -> datetime | None:
    """``value`` as an aware UTC datetime; ``None`` stays ``None``.

    Raises InvalidInput (code ``invalid_date``, the message naming ``name``) for a value that is
    not an ISO-8601 date or time, names no real moment (month 13, 25:00), or lies outside the
    years 1-9999 once converted to UTC."""
    if value is None:
        return None
    if not isinstance(value, str) or not ISO_8601.fullmatch(value):
        raise InvalidInput(f"{name} must be an ISO-8601 date or date-time", code="invalid_date")
    try:
        moment = datetime.fromisoformat(value.upper())
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(
            f"{name} must be a real date-time between years 1 and 9999 in UTC", code="invalid_date"
        ) from exc
