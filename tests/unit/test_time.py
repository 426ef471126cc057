"""domain.time.parse_time: the one parser of times from the edge."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from broker.domain.time import parse_time
from broker.errors import InvalidInput

OFFSETS = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
)
ZONES = st.builds(timezone, OFFSETS) | st.just(UTC)


def _refused(value: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_time(value, name="since")
    assert caught.value.code == "invalid_date"
    assert caught.value.status == 422
    assert "since" in caught.value.message
    return caught.value


def test_none_stays_none() -> None:
    assert parse_time(None, name="since") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-25", datetime(2026, 11, 25, tzinfo=UTC)),
        ("20261125", datetime(2026, 11, 25, tzinfo=UTC)),
        ("2026-11-25T12:00:00Z", datetime(2026, 11, 25, 12, tzinfo=UTC)),
        ("2026-11-25t12:00:00z", datetime(2026, 11, 25, 12, tzinfo=UTC)),
        ("2026-11-25 12:00", datetime(2026, 11, 25, 12, tzinfo=UTC)),
        ("2026-11-25T12", datetime(2026, 11, 25, 12, tzinfo=UTC)),
        ("2026-11-25T12:00:00", datetime(2026, 11, 25, 12, tzinfo=UTC)),  # no offset: UTC
        ("2026-11-25T13:30:00+01:30", datetime(2026, 11, 25, 12, tzinfo=UTC)),
        ("2026-11-25T13:30:00+0130", datetime(2026, 11, 25, 12, tzinfo=UTC)),
        ("2026-11-25T07:00:00-05", datetime(2026, 11, 25, 12, tzinfo=UTC)),
        ("2026-11-25T12:00:00.123456789Z", datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-25T12:00:00,5Z", datetime(2026, 11, 25, 12, 0, 0, 500000, tzinfo=UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("9999-12-31T23:59:59+01:00", datetime(9999, 12, 31, 22, 59, 59, tzinfo=UTC)),
        ("0001-01-01T00:00:00-01:00", datetime(1, 1, 1, 1, tzinfo=UTC)),
        ("0001-01-01", datetime(1, 1, 1, tzinfo=UTC)),
    ],
)
def test_accepted_forms_become_aware_utc(value: str, expected: datetime) -> None:
    parsed = parse_time(value, name="since")
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "yesterday",
        "2026-11-25\n",  # what a `$` pattern with re.match would let through
        "2026-11-25T12:00:00Z\n",
        " 2026-11-25",
        "2026-11-25\x00",
        "2026-11-25x12:00",  # datetime.fromisoformat takes any separator
        "2026-W48-3",
        "2026-11",
        "+2026-11-25",
        "\u0662\u0660\u0662\u0666-11-25",  # Arabic-Indic digits
        "2026-13-01",
        "2026-02-30",
        "0000-01-01",
        "10000-01-01",
        "2026-11-25T24:00",
        "2026-11-25T12:60",
        "2026-11-25T12:00+24:00",
        "2026-11-25T12:00Z+01:00",
        "9999-12-31T23:59:59-01:00",  # past year 9999 in UTC: OverflowError in astimezone
        "9999-12-31T23:00:00-23:59",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "0001-01-01T00:59:59.999999+01:00",
        "2026-11-25T12:00:00" + "0" * 1000,
    ],
)
def test_refused_with_invalid_date_naming_the_parameter(value: str) -> None:
    _refused(value)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(InvalidInput):
        parse_time(20261125, name="date")  # type: ignore[arg-type]


@given(moment=st.datetimes(timezones=ZONES))
@example(moment=datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1))))
@example(moment=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
@example(moment=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=-23, minutes=-59))))
@example(moment=datetime(2000, 1, 1, tzinfo=timezone(timedelta(microseconds=1))))
def test_isoformat_round_trips_to_the_same_instant_or_is_refused(moment: datetime) -> None:
    offset = moment.utcoffset()
    if offset is not None and offset.microseconds:
        # No ISO 8601 (or RFC 3339) offset has a fraction of a second; Python's parser dropped it
        # ("+00:00:00.000001" read as "+00:00"): another instant, answered without a word.
        _refused(moment.isoformat())
        return
    try:
        expected = moment.astimezone(UTC)
    except OverflowError:
        _refused(moment.isoformat())
        return
    parsed = parse_time(moment.isoformat(), name="since")
    assert parsed == expected and parsed is not None and parsed.tzinfo is UTC


@given(moment=st.datetimes())
def test_a_time_without_offset_is_utc(moment: datetime) -> None:
    assert parse_time(moment.isoformat(), name="since") == moment.replace(tzinfo=UTC)


@given(day=st.dates())
def test_a_date_alone_is_midnight_utc(day: date) -> None:
    expected = datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert parse_time(day.isoformat(), name="since") == expected
    assert parse_time(f"{day.year:04d}{day.month:02d}{day.day:02d}", name="since") == expected


def _outcome(value: str) -> datetime | InvalidInput | None:
    try:
        return parse_time(value, name="until")
    except InvalidInput as exc:
        return exc


def _is_utc_or_refused(outcome: datetime | InvalidInput | None) -> bool:
    if isinstance(outcome, InvalidInput):
        return outcome.code == "invalid_date" and "until" in outcome.message
    return outcome is not None and outcome.tzinfo is UTC


@given(value=st.text())
@example(value="2026-11-25T12:00:00+01:00\x00")
def test_any_text_is_an_aware_utc_time_or_invalid_input(value: str) -> None:
    assert _is_utc_or_refused(_outcome(value))


ISO_SHAPED = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([Tt ][0-9]{2}(:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?"
)


@given(value=st.from_regex(ISO_SHAPED, fullmatch=True))
def test_iso_shaped_text_never_raises_anything_but_invalid_input(value: str) -> None:
    assert _is_utc_or_refused(_outcome(value))
