"""Token buckets per key: burst, refill, Retry-After, bounded memory."""

from __future__ import annotations

from onnxguard.serve.ratelimit import RateLimiter
from onnxguard.serve.settings import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refused_with_retry_after_then_refilled() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(3, 60.0), clock=clock)
    assert [limiter.acquire("a").allowed for _ in range(3)] == [True, True, True]
    refused = limiter.acquire("a")
    assert not refused.allowed and refused.retry_after_s == 20  # one token per 20 s
    clock.now += 19.5
    assert not limiter.acquire("a").allowed
    clock.now += 0.6
    assert limiter.acquire("a").allowed


def test_keys_have_separate_buckets() -> None:
    limiter = RateLimiter(RateLimit(1, 1.0), clock=Clock())
    assert limiter.acquire("a").allowed
    assert not limiter.acquire("a").allowed
    assert limiter.acquire("b").allowed


def test_retry_after_is_at_least_one_second() -> None:
    limiter = RateLimiter(RateLimit(100, 1.0), clock=Clock())
    for _ in range(100):
        limiter.acquire("a")
    decision = limiter.acquire("a")
    assert not decision.allowed and decision.retry_after_s == 1


def test_bucket_count_is_bounded() -> None:
    limiter = RateLimiter(RateLimit(1, 60.0), clock=Clock(), max_buckets=10)
    for i in range(100):
        limiter.acquire(f"client:{i}")
    assert len(limiter._buckets) == 10


def test_charge_after_the_fact_puts_the_bucket_in_debt() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimit(100, 60.0), clock=lambda: now[0])  # 100 tokens a minute
    assert limiter.acquire("k", 0).allowed
    limiter.charge("k", 250)  # a request used more than the whole bucket
    refused = limiter.acquire("k", 0)
    assert not refused.allowed and refused.retry_after_s == 90  # 150 tokens of debt at 100/min
    now[0] = 91.0
    assert limiter.acquire("k", 0).allowed
