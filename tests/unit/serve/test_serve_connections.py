"""The connection table: per-address cap, eviction order, counts (no sockets needed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from onnxguard.serve._connections import ConnectionTable
from onnxguard.serve.metrics import ServeMetrics
from onnxguard.serve.settings import Limits


@dataclass(eq=False)
class FakeConn:
    """What the table reads from a connection, and what closing it does to the table."""

    address: str
    table: ConnectionTable
    idle: bool = True
    served: int = 0
    closed: list[str] = field(default_factory=list)

    def close(self, reason: str) -> None:
        self.closed.append(reason)
        self.table.closed(reason)
        self.table.release(self)  # type: ignore[arg-type]


def table(**limits: int) -> ConnectionTable:
    return ConnectionTable(Limits(**limits), ServeMetrics(), exempt=("10.0.0.5",))  # type: ignore[arg-type]


def closed_count(t: ConnectionTable, reason: str) -> float:
    value = t.metrics.connections_closed.labels(reason)._value.get()
    return float(value)


def test_per_address_cap_and_exempt_proxies() -> None:
    t = table(max_connections_per_client=2)
    conns = [FakeConn("1.2.3.4", t) for _ in range(3)]
    assert [t.admit(c) for c in conns] == [None, None, "per_client_limit"]  # type: ignore[arg-type]
    proxy = [FakeConn("10.0.0.5", t) for _ in range(5)]
    assert all(t.admit(c) is None for c in proxy)  # type: ignore[arg-type]
    t.release(conns[0])  # type: ignore[arg-type]
    assert t.admit(conns[2]) is None  # type: ignore[arg-type]


def test_eviction_prefers_connections_that_never_sent_a_request() -> None:
    t = table(max_connections=3, max_connections_per_client=0)
    worker = FakeConn("a", t, served=5)  # an idle keep-alive client that did work
    busy = FakeConn("b", t, idle=False)
    silent = FakeConn("c", t)
    for conn in (worker, busy, silent):
        assert t.admit(conn) is None  # type: ignore[arg-type]
    newcomer = FakeConn("d", t)
    assert t.admit(newcomer) is None  # type: ignore[arg-type]
    assert silent.closed == ["evicted"] and not worker.closed and not busy.closed
    another = FakeConn("e", t)
    assert t.admit(another) is None  # type: ignore[arg-type]
    assert newcomer.closed == ["evicted"]  # never sent a request either: older than "another"
    assert closed_count(t, "evicted") == 2


def test_a_full_table_of_busy_connections_refuses_the_new_one() -> None:
    t = table(max_connections=2, max_connections_per_client=0)
    for name in ("a", "b"):
        assert t.admit(FakeConn(name, t, idle=False)) is None  # type: ignore[arg-type]
    assert t.admit(FakeConn("c", t)) == "max_connections"  # type: ignore[arg-type]
