"""Failed authentication: limited per client address, audited in bounded form.

Without this, every 401 was one fsynced audit record (~520 bytes): a client without a key could
fill the disk, and on a full disk every request is refused.  Now:

* each client address may fail authentication ``per_minute`` times a minute; past that it gets a
  429 with Retry-After (answered before any body is read, like the 401);
* the first failure of an address in each ``interval_s`` window is audited in full; the rest of
  the window is counted and written as one ``auth_failures`` record (address, count, statuses,
  window) when the window ends, when the digest is full, or at shutdown.  Nothing is dropped
  silently: every failed request is in a record or in a count.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onnxguard.serve.ratelimit import Decision, RateLimiter
from onnxguard.serve.settings import RateLimit

MAX_ADDRESSES = 10_000
"""Open windows kept; beyond, the oldest window is written out early (memory stays bounded)."""


@dataclass
class _Window:
    start: float
    started_at: str
    count: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


class AuthFailures:
    """Per-address failure budget and the digest of failures still to be written."""

    def __init__(
        self,
        per_minute: int,
        interval_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] | None = None,
    ) -> None:
        from onnxguard.serve.audit import utc_now

        self.limiter = RateLimiter(RateLimit(per_minute, 60.0), clock=clock)
        self.interval_s = interval_s
        self._clock = clock
        self._wall = wall or utc_now
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def charge(self, client: str) -> Decision:
        """Count one failure of ``client``: allowed (answer 401) or not (answer 429)."""
        return self.limiter.acquire(f"authfail:{client}")

    def note(self, client: str, status: int) -> tuple[bool, list[dict[str, Any]]]:
        """Record a failure: (audit this request in full?, summary records now due)."""
        now = self._clock()
        due: list[dict[str, Any]] = []
        window = self._windows.get(client)
        if window is not None and now - window.start >= self.interval_s:
            due.append(self._summary(client, self._windows.pop(client)))
            window = None
        if window is None:
            self._windows[client] = _Window(now, self._wall())
            while len(self._windows) > MAX_ADDRESSES:
                old_client, old = self._windows.popitem(last=False)
                if old.count:
                    due.append(self._summary(old_client, old))
            return True, due
        window.count += 1
        window.statuses[status] += 1
        return False, due

    def due(self, *, everything: bool = False) -> list[dict[str, Any]]:
        """Summaries of windows that have ended (all windows at shutdown)."""
        now = self._clock()
        out: list[dict[str, Any]] = []
        for client in list(self._windows):
            window = self._windows[client]
            if everything or now - window.start >= self.interval_s:
                del self._windows[client]
                if window.count:
                    out.append(self._summary(client, window))
        return out

    def _summary(self, client: str, window: _Window) -> dict[str, Any]:
        return {
            "client": client,
            "count": window.count,
            "statuses": {str(k): v for k, v in sorted(window.statuses.items())},
            "since": window.started_at,
            "until": self._wall(),
        }
