"""The model behind the endpoints: load (verify) → warm up → ready; texts → checked → batched.

Loading runs in a thread after the server has bound its port, so liveness answers at once while
readiness waits for the bundle to be verified, loaded and warmed up (the first ONNX Runtime calls
allocate memory and pick kernels; a warmed server answers its first request at full speed).  A
bundle that fails verification stops the server (fail closed): it is never half-ready.

One ``Service`` is one model version.  A request *leases* the service it runs on (``acquire`` /
``release``, see ``models.ModelSet``); a version that is swapped out is ``retire``d: it stops only
once every lease is back, so requests in flight finish on the version they started on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Encoding

from onnxguard.drift import DriftWindow
from onnxguard.errors import (
    InferenceFailedError,
    ModelRefusedError,
    OverloadedError,
    RequestTimeoutError,
    StoppedError,
    TokenLimitError,
    UnknownPromptError,
)
from onnxguard.serve._http import ApiError, RequestContext
from onnxguard.serve.audit import hash_inputs
from onnxguard.serve.batching import Batcher, BatchResult, TextInput
from onnxguard.serve.metrics import ServeMetrics
from onnxguard.serve.ratelimit import RateLimiter
from onnxguard.serve.settings import RateLimit, ServeConfig

if TYPE_CHECKING:
    from onnxguard.runtime import Engine
    from onnxguard.serve._shared import Limiter

log = logging.getLogger("onnxguard.serve")

EngineLoader = Callable[[], "Engine"]
_TOKEN_BURST_S = 5.0
"""A key's token bucket holds 5 s of its budget: spread over the minute, not spent at once."""


# ONNX Runtime's intra-op threads spin between calls by default.  In a server they share the
# cores with the event loop (HTTP, JSON, audit): measured on 2 cores with minilm-sst2, spinning
# cost ~45% more CPU per text and ~40% of the throughput.  ``--ort-spinning`` turns it back on.
_NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def token_limiter(limit: RateLimit) -> RateLimiter:
    """A key's token bucket: holds a few seconds of its budget, so a burst cannot take it all."""
    return RateLimiter(limit, burst_s=_TOKEN_BURST_S)


def default_loader(config: ServeConfig) -> EngineLoader:
    """Verify and load the bundle as configured (signature, decryption, providers, threads)."""

    def load() -> Engine:
        from onnxguard.runtime import Engine

        engine = Engine.from_bundle(
            config.bundle,
            public_key=config.public_key,
            key_source=config.key_source,
            providers=config.providers,
            intra_op_threads=config.threads,
            batch_size=config.batching.max_batch,
            session_config={} if config.ort_spinning else _NO_SPINNING,
        )
        check_scan_summary(engine.manifest.stages.get("scan"), config.bundle)
        return engine

    return load


def check_scan_summary(scan: Any, bundle: Any) -> None:
    """Serve only what the build's scanner passed: the manifest (hashed, signed) must carry the
    source and bundle scan summaries, with nothing unscanned and nothing high or critical."""
    if not isinstance(scan, dict) or not all(
        isinstance(scan.get(part), dict) for part in ("source", "bundle")
    ):
        raise ModelRefusedError(
            f"bundle {bundle} carries no scan summary in its manifest",
            hint="rebuild it with `onnxguard build` (every build scans the source and bundle)",
        )
    for part in ("source", "bundle"):
        summary = scan[part]
        worst = summary.get("max_severity")
        if summary.get("unscanned") or worst in ("high", "critical"):
            raise ModelRefusedError(
                f"bundle {bundle}: its {part} scan reports "
                + (f"{worst} findings" if worst in ("high", "critical") else "unscanned files"),
                hint=f"inspect it with `onnxguard scan {bundle}`; rebuild from a clean source",
            )


@dataclass(frozen=True)
class Inference:
    """One request's texts after the model: encodings and raw output rows, in input order."""

    texts: Sequence[TextInput]
    encodings: list[Encoding]
    rows: list[np.ndarray]


class Service:
    """The engine, the tokenizer pool and the batcher, and whether they are ready."""

    def __init__(
        self,
        config: ServeConfig,
        metrics: ServeMetrics,
        loader: EngineLoader,
        tokens: Limiter | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.version = "1"
        """The version this service is in its model's repository (a single bundle: "1")."""
        self._loader = loader
        self._engine: Engine | None = None
        self._batcher: Batcher | None = None
        self._ready = threading.Event()
        self._stopped = False
        self._lock = threading.Lock()
        self.load_seconds: float | None = None
        self._leases = 0
        self._released = threading.Condition()
        self.drift: DriftWindow | None = None
        """Live statistics against the bundle's drift reference (None: the bundle has none)."""
        self.tokens: Limiter | None = tokens
        if tokens is None and config.token_limit is not None:
            self.tokens = token_limiter(config.token_limit)

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def engine(self) -> Engine:
        if self._engine is None or not self.ready:
            raise _not_ready()
        return self._engine

    @property
    def bundle_digest(self) -> str | None:
        """Digest of the loaded bundle's manifest (None until loaded)."""
        return self._engine.digest if self._engine is not None else None

    @property
    def model_name(self) -> str | None:
        if self.config.model_name:
            return self.config.model_name
        return self._engine.name if self._engine is not None else None

    def load(self) -> None:
        """Verify + load the bundle, warm it up, start the batcher; then mark ready."""
        started = time.monotonic()
        engine = self._loader()
        self._warm_up(engine)
        reference = engine.drift_reference
        if reference is not None and self.config.drift_window > 0:
            self.drift = DriftWindow(reference, window=self.config.drift_window)
        batcher = Batcher(
            engine,
            self.config.batching,
            max_tokens=self.config.limits.max_tokens,
            per_token_output=engine.task.per_token,
            metrics=self.metrics,
            observe=self.drift.observe if self.drift is not None else None,
        )
        with self._lock:
            if self._stopped:
                return
            self._engine, self._batcher = engine, batcher
            batcher.start()
        self.load_seconds = time.monotonic() - started
        self.metrics.model.labels(*self._info_labels()).set(1)
        self._ready.set()
        log.info(
            "model %s ready: %s, %s, %d intra-op threads, providers %s (%.1f s)",
            self.model_name,
            engine.task.value,
            engine.manifest.precision,
            engine.threads,
            ",".join(engine.providers),
            self.load_seconds,
        )

    def _info_labels(self) -> tuple[str, str, str, str, str]:
        engine = self._engine
        assert engine is not None
        name = self.model_name or engine.name
        return name, self.version, engine.task.value, engine.manifest.precision, engine.digest

    # --- leases (hot swap) ---------------------------------------------------------------------
    def acquire(self) -> None:
        """A request will run on this service (called under the model set's lock)."""
        with self._released:
            self._leases += 1

    def release(self) -> None:
        with self._released:
            self._leases -= 1
            if self._leases <= 0:
                self._released.notify_all()

    @property
    def leases(self) -> int:
        return self._leases

    def retire(self) -> None:
        """Stop once the requests that leased this service are done (bounded by the graceful
        timeout); it is no longer reachable, so no new lease can come."""
        deadline = time.monotonic() + self.config.graceful_timeout_s
        with self._released:
            while self._leases > 0 and time.monotonic() < deadline:
                self._released.wait(timeout=max(0.0, deadline - time.monotonic()))
        if self._engine is not None:
            with contextlib.suppress(KeyError):
                self.metrics.model.remove(*self._info_labels())
        self.stop()

    def _warm_up(self, engine: Engine) -> None:
        """A few calls at the batch shapes the server will see, before the first request."""
        settings = self.config.batching
        short = engine.encode(["warm up"])[0]
        long_text = " ".join(["warm"] * engine.max_length)
        long = engine.encode([long_text])[0]
        rows = max(1, min(settings.max_batch, settings.max_batch_tokens // max(1, len(short.ids))))
        engine.run_batch([short])
        engine.run_batch([short] * rows)
        engine.run_batch([long])

    def drain(self) -> None:
        """The server stops taking connections: run what is queued without waiting for more."""
        batcher = self._batcher
        if batcher is not None:
            batcher.flush()

    def stop(self) -> None:
        """Finish queued work and release the threads (called after in-flight requests end)."""
        with self._lock:
            self._stopped = True
            batcher = self._batcher
        self._ready.clear()
        if batcher is not None:
            batcher.stop(timeout=self.config.graceful_timeout_s)

    # --- requests ------------------------------------------------------------------------------
    def check_texts(self, texts: Sequence[str], count: int | None = None) -> None:
        """Count and size limits, and valid Unicode, before any work is done.

        ``count`` is what the count limit sees when it is not one per text (pairs).
        """
        limits = self.config.limits
        count = len(texts) if count is None else count
        if not texts:
            raise ApiError(422, "at least one text is needed")
        if count > limits.max_texts:
            raise ApiError(
                413, f"too many texts: {count} (limit {limits.max_texts} per request)"
            )
        for index, text in enumerate(texts):
            if len(text) > limits.max_chars:
                raise ApiError(
                    413, f"text {index} has {len(text)} characters (limit {limits.max_chars})"
                )
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ApiError(
                        422, f"text {index} is not valid Unicode (lone surrogate)"
                    ) from None

    async def infer(
        self, texts: Sequence[str], context: RequestContext | None = None,
        prompt_name: str | None = None,
    ) -> Inference:
        """Check, then tokenize and run in shared batches; errors are ApiErrors.

        Every route gets the model's prompt (the named one, else its default) here, so the same
        text embeds the same everywhere; the prompt counts against the limits like text.  The
        audit hash covers the texts as sent.
        """
        prompted = self.prompted(texts, prompt_name)
        self.check_texts(prompted)
        return await self._infer(prompted, texts, context)

    def prompted(self, texts: Sequence[str], prompt_name: str | None = None) -> list[str]:
        """``texts`` with the model's prompt prefixed; an unknown prompt name is a 422."""
        try:
            return self.engine.apply_prompt(texts, prompt_name)
        except UnknownPromptError as exc:
            raise ApiError(422, f"prompt_name: {exc.message}") from None

    async def infer_pairs(
        self, pairs: Sequence[tuple[str, str]], context: RequestContext | None = None,
        count: int | None = None,
    ) -> Inference:
        """A cross-encoder's (query, document) pairs, through the same checks and batcher.

        Each pair counts once against the count limit unless ``count`` says otherwise (a
        reranking request counts its query too); the audit hash covers every text in order.
        """
        if not pairs:
            raise ApiError(422, "at least one text is needed")
        texts = [t for pair in pairs for t in pair]
        self.check_texts(texts, len(pairs) if count is None else count)
        for index, text in enumerate(texts):
            if not text.strip():  # as the Engine: a score for nothing would look meaningful
                raise ApiError(422, f"pair {index // 2} has an empty or whitespace-only text")
        return await self._infer(list(pairs), texts, context)

    async def _infer(
        self, items: Sequence[TextInput], texts: Sequence[str], context: RequestContext | None
    ) -> Inference:
        if context is not None:
            context.inputs = len(items)
            context.inputs_sha256 = hash_inputs(texts)
        engine = self.engine
        batcher = self._batcher
        if batcher is None:
            raise _not_ready()
        tenant = (context.tenant if context is not None else None) or ""
        reserved = self._reserve_tokens(tenant, texts, engine.max_length)
        try:
            result = await self._run(batcher, items, tenant, engine.max_length)
        except ApiError:
            if self.tokens is not None:
                self.tokens.charge(tenant, -reserved)  # nothing ran: give the estimate back
            raise
        if self.tokens is not None:
            used = sum(len(e.ids) for e in result.encodings)
            self.tokens.charge(tenant, used - reserved)
        return Inference(items, result.encodings, result.rows)

    async def _run(
        self, batcher: Batcher, texts: Sequence[TextInput], tenant: str, max_length: int
    ) -> BatchResult:
        """The batcher's result; its errors as HTTP errors."""
        try:
            return await batcher.run(texts, tenant)
        except TokenLimitError as exc:
            raise ApiError(
                413, f"{exc.message}, after truncation at {max_length} tokens per text"
            ) from None
        except OverloadedError as exc:
            self.metrics.rejected.labels("overloaded").inc()
            raise ApiError(
                503, exc.message, headers={"Retry-After": "1"}, outcome="overloaded"
            ) from None
        except StoppedError as exc:
            raise ApiError(
                503, exc.message, headers={"Retry-After": "1"}, outcome="shutting_down"
            ) from None
        except RequestTimeoutError as exc:
            self.metrics.rejected.labels("timeout").inc()
            raise ApiError(504, exc.message, outcome="timeout") from None
        except InferenceFailedError as exc:
            log.error("inference failed for a batch: %s", exc.message)
            raise ApiError(500, "inference failed", outcome="error") from None

    def _reserve_tokens(self, tenant: str, texts: Sequence[str], max_length: int) -> int:
        """Refuse (429) a tenant whose token bucket is empty; else take an estimate of this
        request's tokens now (set right after tokenization), so concurrent requests cannot
        all pass on the same remaining budget."""
        if self.tokens is None:
            return 0
        decision = self.tokens.acquire(tenant, 0.0)
        if not decision.allowed:
            self.metrics.rejected.labels("token_limit").inc()
            raise ApiError(
                429,
                f"token budget exceeded ({self.tokens.limit} tokens per key)",
                headers={"Retry-After": str(decision.retry_after_s)},
                outcome="token_limited",
            )
        # ~4 characters per token in English text, plus the special tokens; capped per text.
        estimate = sum(min(max_length, len(text) // 4 + 2) for text in texts)
        self.tokens.charge(tenant, estimate)
        return estimate


def _not_ready() -> ApiError:
    return ApiError(503, "model not ready", headers={"Retry-After": "1"}, outcome="not_ready")
