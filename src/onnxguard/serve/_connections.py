"""Connection management uvicorn lacks: a request-head deadline, a per-address cap, eviction.

uvicorn 0.54 has no deadline for a request's first byte or headers (only a keep-alive timeout
after a response), and its ``limit_concurrency`` answers 503 to every request once the slots are
taken — 1,100 idle sockets that never send a byte made the server useless, and those 503s were
in no metric.  This layer is a small subclass of uvicorn's h11 protocol:

* a connection must deliver a complete request head within ``header_timeout_s`` of opening (and
  of each response); else it is closed (idle sockets, slowloris);
* at most ``max_connections_per_client`` open connections per client address (trusted proxies
  exempt); beyond, the new connection is closed at once;
* at most ``max_connections`` open connections; a new one evicts the oldest connection that
  never sent a complete request (else the oldest idle keep-alive one), and is closed at once only
  when every connection has a request in progress;
* every refused, evicted or timed-out connection is counted in
  ``onnxguard_connections_closed{reason}`` and the open ones in ``onnxguard_connections_open``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from onnxguard.serve.metrics import ServeMetrics
from onnxguard.serve.settings import Limits

log = logging.getLogger("onnxguard.serve")


class ConnectionTable:
    """The open connections of one server, oldest first, and their count per address."""

    def __init__(self, limits: Limits, metrics: ServeMetrics, exempt: tuple[str, ...]) -> None:
        self.limits = limits
        self.metrics = metrics
        self.exempt = frozenset(exempt)
        self.open: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        self.per_address: Counter[str] = Counter()

    def admit(self, conn: GuardedH11Protocol) -> str | None:
        """Register ``conn``; the reason to refuse it, or None."""
        address = conn.address
        cap = self.limits.max_connections_per_client
        if cap and address not in self.exempt and self.per_address[address] >= cap:
            return "per_client_limit"
        if len(self.open) >= self.limits.max_connections:
            victim = self._victim()
            if victim is None:
                return "max_connections"
            victim.close("evicted")
        self.open[conn] = None
        self.per_address[address] += 1
        self.metrics.connections_open.set(len(self.open))
        return None

    def _victim(self) -> GuardedH11Protocol | None:
        """The oldest connection that never sent a complete request; else the oldest idle
        keep-alive connection; None when every connection has a request in progress."""
        idle = None
        for conn in self.open:
            if conn.idle:
                if conn.served == 0:
                    return conn
                idle = idle or conn
        return idle

    def release(self, conn: GuardedH11Protocol) -> None:
        if self.open.pop(conn, False) is None:
            self.per_address[conn.address] -= 1
            if self.per_address[conn.address] <= 0:
                del self.per_address[conn.address]
            self.metrics.connections_open.set(len(self.open))

    def closed(self, reason: str) -> None:
        self.metrics.connections_closed.labels(reason).inc()


def protocol_class(table: ConnectionTable) -> type[asyncio.Protocol]:
    """uvicorn's ``http=`` protocol class bound to ``table``."""
    return type("OnnxguardH11Protocol", (GuardedH11Protocol,), {"table": table})


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a request-head deadline and admission through a ConnectionTable."""

    table: ConnectionTable

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address = "-"
        self._deadline: asyncio.TimerHandle | None = None
        self._armed_cycle: Any = None
        self._registered = False
        self.served = 0
        """Responses completed on this connection (eviction spares those that did work)."""

    @property
    def idle(self) -> bool:
        """No request in progress: waiting for a (complete) request head."""
        return self.cycle is None or self.cycle.response_complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.address = self.client[0] if self.client else "-"
        refused = self.table.admit(self)
        if refused is not None:
            self.close(refused)
            return
        self._registered = True
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._registered:
            self._registered = False
            self.table.release(self)
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self.served += 1
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request head is due within the deadline too

    def close(self, reason: str) -> None:
        """Close without a response (the peer sent no complete request to answer)."""
        self._disarm()
        self.table.closed(reason)
        if self._registered:
            self._registered = False
            self.table.release(self)
        if not self.transport.is_closing():
            if self.conn.our_state not in (h11.ERROR, h11.CLOSED, h11.MUST_CLOSE):
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
            self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._armed_cycle = self.cycle
        self._deadline = self.loop.call_later(self.table.limits.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is self._armed_cycle and self.idle:  # no new request head arrived
            self.close("header_timeout")
