"""Dynamic micro-batching across requests.

Texts from concurrent requests wait in one bounded queue; a worker thread takes a batch when the
oldest text has waited ``max_wait_ms``, or at once when enough texts wait, and runs it in one ONNX
Runtime call (which releases the GIL, so the event loop keeps serving).

Length bucketing: a batch is padded to its longest text, so the worker does not take the first N
texts in arrival order.  It starts from the oldest text (so nothing starves) and grows the batch
with the waiting texts closest to it in length while that lowers the cost per real token (a call
costs a fixed overhead plus rows x padded width), real tokens stay at least ``min_fill`` of the
padded batch and rows x width stays within ``max_batch_tokens``.  Texts left out run in the next
call, which starts at once.

Fairness: the batch is anchored on the oldest text of the key (tenant) that has had the fewest
tokens run recently (start-time fair queueing on tokens), so one key's heavy requests cannot
starve another key's light ones; a key that was idle starts at the current virtual time, not with
credit saved up.

Back-pressure: when the queue holds ``queue_size`` texts a new request is refused at once (503)
instead of waiting behind a backlog it cannot get through; each request also has a deadline
(504).  Tokenization runs in the worker thread, one call for all new arrivals (the Rust tokenizer
releases the GIL), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tokenizers import Encoding

from onnxguard.errors import (
    InferenceFailedError,
    OverloadedError,
    RequestError,
    RequestTimeoutError,
    StoppedError,
    TokenLimitError,
)
from onnxguard.serve.metrics import ServeMetrics
from onnxguard.serve.settings import BatchSettings

log = logging.getLogger("onnxguard.serve")

_ACTIVE_S = 1.0

TextInput = str | tuple[str, str]
"""A text, or a (query, document) pair for a cross-encoder (tokenized together)."""


class BatchEngine(Protocol):
    """What the batcher needs from :class:`onnxguard.runtime.Engine`."""

    def encode(self, texts: Sequence[TextInput]) -> list[Encoding]: ...

    def run_batch(self, encodings: Sequence[Encoding], pad_to: int | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class BatchResult:
    """One request's texts after the model, in input order."""

    encodings: list[Encoding]
    rows: list[np.ndarray]
    """Raw output per text (token-level outputs cut to the text's token count)."""


@dataclass(eq=False)
class _Request:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[BatchResult]
    texts: Sequence[TextInput]
    enqueued: float
    results: list[Any]
    remaining: int
    tenant: str = ""
    encodings: list[Encoding] = field(default_factory=list)
    cancelled: bool = False
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class _Item:
    request: _Request
    index: int
    encoding: Encoding
    length: int
    enqueued: float
    taken: bool = field(default=False)


class Batcher:
    """The queue and its worker thread(s); ``run`` is called from the event loop.

    A worker first tokenizes whatever arrived (one ``encode_batch`` call for all new requests;
    the Rust tokenizer releases the GIL), then forms and runs batches.  All the event loop does
    is append to a list under a lock and await a future.
    """

    def __init__(
        self,
        engine: BatchEngine,
        settings: BatchSettings,
        *,
        max_tokens: int | None = None,
        per_token_output: bool = False,
        metrics: ServeMetrics | None = None,
        observe: Callable[[Sequence[Encoding], Sequence[np.ndarray]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.max_tokens = max_tokens
        self.per_token_output = per_token_output
        self.metrics = metrics
        self.observe = observe
        """Called with each batch's encodings and rows before its requests are handed back (drift
        statistics: in this worker thread, never on the event loop)."""
        self._cond = threading.Condition()
        self._incoming: list[_Request] = []
        self._pending: list[_Item] = []
        self._pending_tokens = 0
        self._depth = 0
        self._stopping = False
        self._flushing = False
        self._usage: dict[str, float] = {}
        self._vtime = 0.0
        self._last_arrival: dict[str, float] = {}
        self._has_cancelled = False
        self._threads: list[threading.Thread] = []
        self._max_wait = settings.max_wait_ms / 1000.0
        self._scan = max(4 * settings.max_batch, 256)

    @property
    def depth(self) -> int:
        """Texts queued (arrived or tokenized, not yet taken into a batch)."""
        return self._depth

    def start(self) -> None:
        for number in range(self.settings.workers):
            thread = threading.Thread(
                target=self._work, name=f"onnxguard-batch-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def flush(self) -> None:
        """Stop waiting for batch-mates (the server drains: no more requests will come)."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Take no new work, finish what is queued, join the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    # --- event-loop side ---------------------------------------------------------------------
    async def run(self, texts: Sequence[TextInput], tenant: str = "") -> BatchResult:
        """Tokenize and run ``texts`` in shared batches, charged to ``tenant`` for fairness;
        raises the RequestErrors of ``onnxguard.errors``."""
        if not texts:
            return BatchResult([], [])
        loop = asyncio.get_running_loop()
        request = _Request(
            loop,
            loop.create_future(),
            texts,
            time.monotonic(),
            [None] * len(texts),
            len(texts),
            tenant,
        )
        with self._cond:
            if self._stopping:
                raise StoppedError("the server is shutting down")
            if self._depth + len(texts) > self.settings.queue_size:
                raise OverloadedError(
                    f"server busy: {self._depth} texts already queued "
                    f"(limit {self.settings.queue_size})",
                    hint="retry after a short wait",
                )
            self._incoming.append(request)
            self._depth += len(texts)
            self._cond.notify()
        try:
            return await asyncio.wait_for(request.future, self.settings.timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(
                f"no result within {self.settings.timeout_s:g} s",
                hint="the server is overloaded; retry later or send fewer texts",
            ) from None
        finally:
            if not request.future.done() or request.future.cancelled():
                with self._cond:
                    request.cancelled = True
                    self._has_cancelled = True

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._depth)

    # --- worker side ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            arrivals: list[_Request] = []
            batch: list[_Item] | None = None
            with self._cond:
                while True:
                    self._drop_cancelled()
                    if self._incoming:
                        arrivals, self._incoming = self._incoming, []
                        break
                    if self._pending:
                        settings = self.settings
                        if (
                            self._stopping
                            or self._flushing
                            or len(self._pending) >= settings.max_batch
                            or self._pending_tokens >= settings.max_batch_tokens
                        ):
                            batch = self._select()
                            break
                        remaining = self._pending[0].enqueued + self._max_wait - time.monotonic()
                        if remaining <= 0:
                            batch = self._select()
                            break
                        self._cond.wait(remaining)
                        continue
                    if self._stopping:
                        return
                    self._cond.wait()
            self._gauge()
            if arrivals:
                self._tokenize(arrivals)
            elif batch:
                self._execute(batch)

    def _tokenize(self, arrivals: list[_Request]) -> None:
        """One encode call for every new request; over-limit requests fail here (413)."""
        live = [r for r in arrivals if not r.cancelled]
        dropped = sum(len(r.texts) for r in arrivals if r.cancelled)
        failed: list[_Request] = []
        items: list[_Item] = []
        try:
            encodings = self.engine.encode([t for r in live for t in r.texts]) if live else []
        except Exception as exc:  # tokenizers raises plain Exceptions from Rust
            for request in live:
                request.error = exc
            failed, live = live, []
            encodings = []
        position = 0
        for request in live:
            request.encodings = encodings[position : position + len(request.texts)]
            position += len(request.texts)
            tokens = sum(len(e.ids) for e in request.encodings)
            if self.max_tokens is not None and tokens > self.max_tokens:
                request.error = TokenLimitError(
                    f"too many tokens: {tokens} (limit {self.max_tokens} per request)",
                    tokens=tokens,
                    limit=self.max_tokens,
                )
                failed.append(request)
                continue
            items.extend(
                _Item(request, i, enc, max(1, len(enc.ids)), request.enqueued)
                for i, enc in enumerate(request.encodings)
            )
        with self._cond:
            self._depth -= dropped + sum(len(r.texts) for r in failed)
            waiting = {item.request.tenant for item in self._pending}
            now = time.monotonic()
            for request in live:
                self._last_arrival[request.tenant] = now
                if request.tenant not in waiting:  # back from idle: no saved-up credit
                    usage = self._usage.get(request.tenant, 0.0)
                    self._usage[request.tenant] = max(usage, self._vtime)
            self._pending.extend(items)
            self._pending_tokens += sum(item.length for item in items)
        by_loop: defaultdict[asyncio.AbstractEventLoop, list[_Request]] = defaultdict(list)
        for request in failed:
            by_loop[request.loop].append(request)
        _notify(by_loop)

    def _drop_cancelled(self) -> None:
        if self._has_cancelled:
            self._has_cancelled = False
            kept = [item for item in self._pending if not item.request.cancelled]
            dropped = len(self._pending) - len(kept)
            self._pending_tokens -= sum(i.length for i in self._pending if i.request.cancelled)
            self._pending = kept
            self._depth -= dropped

    def _select(self) -> list[_Item]:
        """The oldest text plus neighbours in length, while the cost per real token falls.

        Cost model of one call: ``call_overhead_tokens + rows x padded width`` (token units).
        A neighbour joins when it lowers that cost per real token (it shares the fixed cost of
        the call) and keeps real tokens >= ``min_fill`` of the padded batch; the shorter or
        longer neighbour that gives the cheaper batch goes first.
        """
        settings = self.settings
        overhead = float(settings.call_overhead_tokens)
        anchor = self._anchor()
        window = [anchor] + [item for item in self._pending[: self._scan] if item is not anchor]
        # With several tenants active, smaller calls (a running call cannot be interrupted, so
        # a light request waits at most for a short one) and no text more than twice as long
        # as the anchor joins its batch.
        shared = len({item.request.tenant for item in window}) > 1 or self._others_active(
            anchor.request.tenant
        )
        token_cap = settings.max_batch_tokens // 16 if shared else settings.max_batch_tokens
        ordered = sorted(window, key=lambda item: item.length)
        pos = next(i for i, item in enumerate(ordered) if item is anchor)
        lo = hi = pos
        width = total = anchor.length
        count = 1
        while count < settings.max_batch:
            efficiency = total / (overhead + count * width)
            best: tuple[float, int, int, int] | None = None  # (efficiency, lo, hi, width)
            for new_lo, new_hi in ((lo - 1, hi), (lo, hi + 1)):
                if new_lo < 0 or new_hi >= len(ordered):
                    continue
                new_width = max(width, ordered[new_hi].length)
                if shared and new_width > 2 * anchor.length:
                    continue  # the anchor's tenant never pays for another tenant's long texts
                padded = (count + 1) * new_width
                real = total + ordered[new_lo if new_lo < lo else new_hi].length
                if padded > token_cap or real < settings.min_fill * padded:
                    continue
                candidate = real / (overhead + padded)
                if best is None or candidate > best[0]:
                    best = (candidate, new_lo, new_hi, new_width)
            if best is None or best[0] < efficiency:
                break
            _, lo, hi, width = best
            count += 1
            total = sum(item.length for item in ordered[lo : hi + 1])
        batch = ordered[lo : hi + 1]
        for item in batch:
            item.taken = True
            tenant = item.request.tenant
            self._usage[tenant] = self._usage.get(tenant, self._vtime) + item.length
        self._pending = [item for item in self._pending if not item.taken]
        self._pending_tokens -= total
        self._depth -= len(batch)
        return batch

    def _others_active(self, tenant: str) -> bool:
        """Whether another tenant sent work within the last second (it will likely send more:
        keep calls short so its next request does not wait behind a long one)."""
        horizon = time.monotonic() - _ACTIVE_S
        if len(self._last_arrival) > 1024:
            self._last_arrival = {t: at for t, at in self._last_arrival.items() if at >= horizon}
        return any(at >= horizon for t, at in self._last_arrival.items() if t != tenant)

    def _anchor(self) -> _Item:
        """The oldest waiting text of the tenant with the least usage (FIFO with one tenant)."""
        oldest: dict[str, _Item] = {}
        for item in self._pending:
            oldest.setdefault(item.request.tenant, item)
        tenant = min(oldest, key=lambda t: (self._usage.get(t, self._vtime), oldest[t].enqueued))
        # Virtual time follows the tenant served: one that was idle comes back level with it.
        self._vtime = max(self._vtime, self._usage.get(tenant, self._vtime))
        if len(self._usage) > 4 * len(oldest) + 1024:  # forget idle tenants (memory bound)
            self._usage = {t: self._usage[t] for t in oldest if t in self._usage}
        return oldest[tenant]

    def _execute(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        error: BaseException | None = None
        output: np.ndarray | None = None
        try:
            output = self.engine.run_batch([item.encoding for item in batch])
        except Exception as exc:  # ORT raises its own types; the requests get a 500
            error = exc
        finished = time.monotonic()
        if self.metrics is not None:
            width = max(item.length for item in batch)
            self.metrics.observe_batch(
                len(batch),
                sum(item.length for item in batch),
                width * len(batch),
                finished - started,
                [started - item.enqueued for item in batch],
            )
        done: defaultdict[asyncio.AbstractEventLoop, list[_Request]] = defaultdict(list)
        rows: list[np.ndarray] = []
        with self._cond:
            for row, item in enumerate(batch):
                request = item.request
                if error is not None:
                    request.error = error
                elif output is not None:
                    result = output[row, : item.length] if self.per_token_output else output[row]
                    request.results[item.index] = result
                    rows.append(result)
                request.remaining -= 1
                if request.remaining == 0:
                    done[request.loop].append(request)
        if self.observe is not None and rows:  # before the hand-back: a response implies counted
            try:
                self.observe([item.encoding for item in batch], rows)
            except Exception as exc:  # statistics must never stop the worker
                log.error("drift statistics not updated: %s", type(exc).__name__)
        _notify(done)


def _notify(by_loop: dict[asyncio.AbstractEventLoop, list[_Request]]) -> None:
    """Hand finished requests back to their event loops (one wake-up per loop)."""
    for loop, requests in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, requests)
        except RuntimeError:  # that event loop has closed; nobody waits any more
            continue


def _deliver(requests: list[_Request]) -> None:
    for request in requests:
        if request.future.done():
            continue
        error = request.error
        if isinstance(error, RequestError):
            request.future.set_exception(error)
        elif error is not None:
            request.future.set_exception(
                InferenceFailedError(
                    f"inference failed: {type(error).__name__}", hint="see the server log"
                )
            )
        else:
            request.future.set_result(BatchResult(request.encodings, request.results))
