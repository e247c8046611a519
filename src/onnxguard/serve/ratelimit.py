"""Per-key token-bucket rate limiting.

Each key (or, without authentication, each client address) has a bucket that holds at most
``requests`` tokens and refills at ``requests / period`` per second: a client may burst up to its
whole allowance, then is held to the average rate.  A refused request learns when one token will
be back (``Retry-After``, whole seconds, rounded up).  The number of buckets is bounded, so a flood
of client addresses cannot grow memory without limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from onnxguard.serve.settings import RateLimit

_MAX_BUCKETS = 100_000


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int = 0
    """Whole seconds until a request would be allowed (0 when allowed)."""
    remaining: int = 0


class RateLimiter:
    """Token buckets keyed by principal; thread-safe."""

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = _MAX_BUCKETS,
        burst_s: float | None = None,
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._rate = limit.per_second
        # The bucket holds the whole allowance, or ``burst_s`` seconds of it (a token budget:
        # a heavy client cannot spend a minute's worth in one burst).
        self._capacity = (
            float(limit.requests) if burst_s is None else max(1.0, self._rate * burst_s)
        )
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_buckets = max_buckets
        self._lock = threading.Lock()

    def acquire(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket, or say how long to wait."""
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.pop(key, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - stamp) * self._rate)
            if tokens >= cost:
                tokens -= cost
                allowed = True
                wait = 0
            else:
                allowed = False
                wait = max(1, math.ceil((cost - tokens) / self._rate))
            self._buckets[key] = (tokens, now)  # most recently used last
            if len(self._buckets) > self._max_buckets:
                # Forget the least recently seen client (only reachable without keys, where
                # buckets are per client address).
                self._buckets.popitem(last=False)
        return Decision(allowed, wait, int(tokens))

    def charge(self, key: str, cost: float) -> None:
        """Take ``cost`` tokens after the fact; the bucket may go into debt (the next
        ``acquire(key, 0)`` then waits until the debt is paid back)."""
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.pop(key, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - stamp) * self._rate) - cost
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self._max_buckets:
                self._buckets.popitem(last=False)
