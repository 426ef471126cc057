"""The one token bucket (services/limits.py): per-node publish and recall limits and the failed
authentication limiter all use it; and the marks that spare the shared publish limit its count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.services.limits import ReportMarks, TokenBucket


def test_a_key_gets_its_burst_then_is_refused_and_others_are_not() -> None:
    bucket = TokenBucket(rate=0.001, burst=3)
    assert [bucket.take("a") for _ in range(4)] == [True, True, True, False]
    assert not bucket.allowed("a") and bucket.allowed("b") and bucket.take("b")


def test_spend_takes_even_past_empty_and_allowed_does_not_take() -> None:
    bucket = TokenBucket(rate=0.001, burst=2)
    for _ in range(5):
        bucket.spend("a")
    assert not bucket.allowed("a")
    assert bucket.allowed("b") and bucket.allowed("b") and len(bucket) == 1


def test_memory_is_bounded_by_max_keys_forgetting_the_least_recently_used() -> None:
    bucket = TokenBucket(rate=0.001, burst=1, max_keys=100)
    for n in range(10_000):
        bucket.spend(f"source-{n}")
    assert len(bucket) == 100
    assert not bucket.allowed("source-9999")  # still remembered: refused
    assert bucket.allowed("source-0")  # forgotten: starts again with a full burst


def test_a_bucket_that_filled_up_again_is_forgotten() -> None:
    bucket = TokenBucket(rate=1e9, burst=1)
    bucket.spend("a")
    assert bucket.allowed("a") and len(bucket) == 0


# -- ReportMarks: what the head row proves about the reports stored since a moment -------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_marks_bound_the_reports_since_a_moment_by_sequence() -> None:
    marks = ReportMarks(spacing=timedelta(seconds=1))
    assert marks.bound(_at(0), 10) is None  # nothing seen: nothing proven
    marks.note(_at(0), 10)  # the head: report 10 was the last, created at 0 s
    marks.note(_at(0.5), 20)  # within the spacing: not kept
    marks.note(_at(2), 30)
    assert marks.bound(_at(-1), 40) is None  # no mark that old
    assert marks.bound(_at(0), 40) == 30  # every report created after 0 s is above 10
    assert marks.bound(_at(1.9), 40) == 30
    assert marks.bound(_at(2), 40) == 10  # the newer mark bounds more tightly
    assert marks.bound(_at(0), 40) is None  # the older mark was let go


def test_marks_from_another_log_are_forgotten() -> None:
    marks = ReportMarks(spacing=timedelta(seconds=1))
    marks.note(_at(0), 100)
    assert marks.bound(_at(5), 50) is None  # a head below the mark: not the log it came from
    marks.note(_at(1), 50)  # the sequence went back: the old marks go
    assert marks.bound(_at(5), 60) == 10
    marks.note(None, 0)  # an empty log has no mark to give
    assert marks.bound(_at(5), 60) == 10


def test_marks_are_bounded_in_number() -> None:
    marks = ReportMarks(spacing=timedelta(seconds=1))
    for n in range(10_000):
        marks.note(_at(n), n)
    assert marks.bound(_at(0), 10_000) is None  # the oldest went: no bound from it
    assert marks.bound(_at(9_990), 10_000) == 10
