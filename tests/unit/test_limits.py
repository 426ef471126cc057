"""The one token bucket (services/limits.py): per-node publish and recall limits and the failed
authentication limiter all use it."""

from __future__ import annotations

from broker.services.limits import TokenBucket


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
