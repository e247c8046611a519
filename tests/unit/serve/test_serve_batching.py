"""The micro-batcher: shared batches, length bucketing, limits, back-pressure, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from onnxguard.serve.batching import (
    Batcher,
    InferenceFailedError,
    OverloadedError,
    RequestTimeoutError,
    StoppedError,
    TokenLimitError,
)
from onnxguard.serve.metrics import ServeMetrics
from onnxguard.serve.settings import BatchSettings


@dataclass
class FakeEncoding:
    ids: list[int]


class FakeEngine:
    """Texts are whitespace-split into tokens; the output row is [length, first id]."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.encode_calls = 0
        self.delay = delay
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def encode(self, texts: Sequence[str]) -> list[FakeEncoding]:
        self.encode_calls += 1
        return [FakeEncoding([len(w) for w in t.split()] or [0]) for t in texts]

    def run_batch(self, encodings: Sequence[FakeEncoding], pad_to: int | None = None) -> np.ndarray:
        self.gate.wait()
        if self.fail:
            raise RuntimeError("ORT exploded")
        time.sleep(self.delay)
        self.batches.append([len(e.ids) for e in encodings])
        width = max(len(e.ids) for e in encodings)
        out = np.zeros((len(encodings), width, 2), dtype=np.float32)
        for row, enc in enumerate(encodings):
            out[row, :, 0] = len(enc.ids)
            out[row, :, 1] = enc.ids[0]
        return out


def words(n: int, size: int = 3) -> str:
    return " ".join(["w" * size] * n)


def run(batcher: Batcher, *requests: Sequence[str]) -> list:
    async def go() -> list:
        return await asyncio.gather(*(batcher.run(r) for r in requests), return_exceptions=True)

    return asyncio.run(go())


def make(engine: FakeEngine, per_token: bool = True, **settings: object) -> Batcher:
    batcher = Batcher(
        engine,
        BatchSettings(**settings),  # type: ignore[arg-type]
        per_token_output=per_token,
        metrics=ServeMetrics(),
    )
    batcher.start()
    return batcher


def test_results_come_back_in_order_for_every_request() -> None:
    engine = FakeEngine()
    batcher = make(engine, max_wait_ms=20)
    results = run(batcher, [words(2), words(5, 1)], [words(3, 4)], [words(1, 7)] * 3)
    batcher.stop()
    first, second, third = results
    assert [r[0, 0] for r in first.rows] == [2, 5]  # token outputs cut to each text's length
    assert [r.shape[0] for r in first.rows] == [2, 5]
    assert second.rows[0][0, 1] == 4 and [r[0, 1] for r in third.rows] == [7, 7, 7]
    assert len(first.encodings) == 2
    assert engine.encode_calls <= 3  # arrivals are tokenized together


def test_requests_share_batches() -> None:
    engine = FakeEngine()
    batcher = make(engine, max_wait_ms=50, min_fill=0.0)
    run(batcher, *[[words(4)] for _ in range(8)])
    batcher.stop()
    assert sum(len(b) for b in engine.batches) == 8
    assert len(engine.batches) < 8


def test_length_bucketing_keeps_short_texts_away_from_long_ones() -> None:
    engine = FakeEngine()
    engine.gate.clear()  # hold the first call so everything else queues up
    batcher = make(engine, max_wait_ms=0, max_batch=16, min_fill=0.8)

    async def go() -> None:
        first = asyncio.ensure_future(batcher.run([words(1)]))
        await asyncio.sleep(0.05)
        rest = [batcher.run([words(n)]) for n in (2, 30, 3, 31, 2, 29, 3, 30)]
        await asyncio.sleep(0.05)
        engine.gate.set()
        await asyncio.gather(first, *rest)

    asyncio.run(go())
    batcher.stop()
    mixed = [b for b in engine.batches if min(b) * 3 < max(b)]
    assert not mixed, engine.batches
    assert sum(len(b) for b in engine.batches) == 9


def test_max_batch_and_token_budget_are_respected() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    batcher = make(engine, max_wait_ms=0, max_batch=4, max_batch_tokens=40, min_fill=0.0)

    async def go() -> None:
        first = asyncio.ensure_future(batcher.run([words(10)]))
        await asyncio.sleep(0.05)
        rest = [batcher.run([words(10)] * 3) for _ in range(4)]
        await asyncio.sleep(0.05)
        engine.gate.set()
        await asyncio.gather(first, *rest)

    asyncio.run(go())
    batcher.stop()
    assert all(len(b) <= 4 and len(b) * max(b) <= 40 for b in engine.batches)


def test_full_queue_refuses_at_once() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    batcher = make(engine, max_wait_ms=0, queue_size=3)

    async def go() -> list:
        running = asyncio.ensure_future(batcher.run([words(1)]))  # taken by the worker
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.run([words(1)] * 3))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(OverloadedError):
            await batcher.run([words(1)])
        assert time.monotonic() - started < 0.05
        engine.gate.set()
        return await asyncio.gather(running, queued)

    assert len(asyncio.run(go())) == 2
    batcher.stop()


def test_deadline_gives_timeout_and_the_work_is_dropped() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    batcher = make(engine, max_wait_ms=0, timeout_s=0.1)

    async def go() -> None:
        blocked = asyncio.ensure_future(batcher.run([words(1)]))
        await asyncio.sleep(0.02)
        with pytest.raises(RequestTimeoutError):
            await batcher.run([words(2)])
        engine.gate.set()
        with pytest.raises(RequestTimeoutError):
            await blocked

    asyncio.run(go())
    batcher.stop()
    assert batcher.depth == 0
    assert [2] not in engine.batches  # the timed-out request never ran


def test_token_limit_is_checked_after_tokenization() -> None:
    engine = FakeEngine()
    batcher = Batcher(engine, BatchSettings(max_wait_ms=0), max_tokens=10)
    batcher.start()
    ok, too_many = run(batcher, [words(5), words(5)], [words(6), words(5)])
    batcher.stop()
    assert len(ok.rows) == 2
    assert isinstance(too_many, TokenLimitError) and "11" in too_many.message
    assert batcher.depth == 0


def test_engine_failure_becomes_inference_failed() -> None:
    batcher = make(FakeEngine(fail=True), max_wait_ms=0)
    (result,) = run(batcher, [words(1)])
    batcher.stop()
    assert isinstance(result, InferenceFailedError)
    assert "ORT exploded" not in result.message  # no exception text reaches clients


def test_stop_finishes_queued_work_then_refuses() -> None:
    engine = FakeEngine(delay=0.05)
    batcher = make(engine, max_wait_ms=200, max_batch=64)

    async def go() -> None:
        pending = [asyncio.ensure_future(batcher.run([words(2)])) for _ in range(5)]
        await asyncio.sleep(0.02)
        await asyncio.to_thread(batcher.stop)
        results = await asyncio.gather(*pending)
        assert len(results) == 5
        with pytest.raises(StoppedError):
            await batcher.run([words(1)])

    asyncio.run(go())


def test_metrics_observe_batches() -> None:
    engine = FakeEngine()
    metrics = ServeMetrics()
    batcher = Batcher(engine, BatchSettings(max_wait_ms=0), metrics=metrics)
    batcher.start()
    run(batcher, [words(2), words(4)])
    batcher.stop()
    text = metrics.render().decode()
    assert "onnxguard_batch_size_count" in text
    assert "onnxguard_texts_total 2.0" in text
    assert "onnxguard_batch_padding_ratio_sum" in text


def test_a_heavy_tenant_cannot_starve_a_light_one() -> None:
    """Fair across tenants: a light request that arrives behind a heavy tenant's backlog runs
    in the next call, not after the whole backlog (FIFO would put it last)."""
    engine = FakeEngine()
    engine.gate.clear()  # hold the first call so the backlog queues up
    batcher = make(engine, max_wait_ms=0, max_batch=4, min_fill=0.0)
    order: list[str] = []

    async def tagged(name: str, texts: list[str], tenant: str) -> None:
        await batcher.run(texts, tenant)
        order.append(name)

    async def go() -> None:
        first = asyncio.ensure_future(tagged("heavy-0", [words(8)] * 4, "heavy"))
        await asyncio.sleep(0.05)
        heavy = [
            asyncio.ensure_future(tagged(f"heavy-{i}", [words(8)] * 4, "heavy"))
            for i in range(1, 6)
        ]
        await asyncio.sleep(0.05)
        light = asyncio.ensure_future(tagged("light", [words(8)], "light"))
        await asyncio.sleep(0.05)
        engine.gate.set()
        await asyncio.gather(first, *heavy, light)

    asyncio.run(go())
    batcher.stop()
    assert order.index("light") <= 2, order  # FIFO would finish it last (index 6)


def test_flush_runs_queued_texts_without_waiting_for_batch_mates() -> None:
    engine = FakeEngine()
    batcher = make(engine, max_wait_ms=600_000, max_batch=64)

    async def go() -> float:
        task = asyncio.ensure_future(batcher.run([words(3)]))
        await asyncio.sleep(0.1)
        assert not task.done()  # waiting for batch-mates
        started = time.monotonic()
        batcher.flush()
        await task
        return time.monotonic() - started

    assert asyncio.run(go()) < 5.0
    batcher.stop()
