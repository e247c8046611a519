"""What several server processes share when one app runs as many replicas (``serve --ray``).

A single ``onnxguard serve`` keeps rate limits, the audit log, readiness and metrics in its own
process.  Replicas must share them: a key's limit is global, the audit log is one hash chain,
readiness means every replica is verified, ``/metrics`` shows every replica.  ``create_app`` takes
a ``SharedState`` whose parts replace the local ones; a part left None stays local.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from onnxguard.serve.ratelimit import Decision
from onnxguard.serve.settings import RateLimit


class Limiter(Protocol):
    """The interface of ``RateLimiter`` that the guard and the service use."""

    limit: RateLimit

    def acquire(self, key: str, cost: float = 1.0) -> Decision: ...

    def charge(self, key: str, cost: float) -> None: ...


class AuditSink(Protocol):
    """The interface of ``AuditLog`` that the app and the guard use."""

    @property
    def is_open(self) -> bool: ...

    @property
    def healthy(self) -> bool: ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    async def append(self, fields: dict[str, Any], kind: str = "request") -> None: ...


@dataclass(frozen=True)
class SharedState:
    limiter: Limiter | None = None
    tokens: Limiter | None = None
    audit: AuditSink | None = None
    ready: Callable[[bool], bool] | None = None
    """Given this process's readiness, whether the whole service is ready."""
    metrics: Callable[[bytes], bytes] | None = None
    """Given this process's Prometheus exposition, the exposition of every process."""
