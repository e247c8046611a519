"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

Labels are bounded: ``endpoint`` is the route template (``/v2/models/{name}/infer``), never the
raw path, and ``status`` is the HTTP status code, so a client cannot grow the label set.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "onnxguard_requests",
            "HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "onnxguard_request_duration_seconds",
            "Time from request arrival to response start.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "onnxguard_requests_in_flight", "Requests being handled.", registry=r
        )
        self.queue_wait = Histogram(
            "onnxguard_queue_wait_seconds",
            "Time a text waited in the batching queue.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "onnxguard_queue_depth", "Texts waiting in the batching queue.", registry=r
        )
        self.batch_size = Histogram(
            "onnxguard_batch_size",
            "Texts per ONNX Runtime call.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "onnxguard_batch_padding_ratio",
            "Share of padding tokens in each batch.",
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "onnxguard_batch_inference_seconds",
            "ONNX Runtime time per batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter("onnxguard_texts", "Texts run through the model.", registry=r)
        self.tokens = Counter("onnxguard_tokens", "Real (non-padding) tokens run.", registry=r)
        self.rejected = Counter(
            "onnxguard_rejected",
            "Requests refused before inference, by reason.",
            ["reason"],
            registry=r,
        )
        self.ready = Gauge(
            "onnxguard_ready", "1 once the model is verified and warmed up.", registry=r
        )
        self.model = Gauge(
            "onnxguard_model_info",
            "The model served (value is always 1).",
            ["model", "version", "task", "precision", "bundle_digest"],
            registry=r,
        )
        self.model_requests = Counter(
            "onnxguard_model_requests",
            "Inference requests by model version and outcome (ok, client_error, error, ...).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.model_latency = Histogram(
            "onnxguard_model_request_duration_seconds",
            "Time from request arrival to response start, by model version.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.drift_psi = Gauge(
            "onnxguard_drift_psi",
            "Population stability index of live traffic against the bundle's drift reference, "
            "by model version and feature (watch above 0.1, act above 0.25).",
            ["model", "version", "feature"],
            registry=r,
        )
        self.drift_kl = Gauge(
            "onnxguard_drift_kl",
            "KL divergence (window || reference) by model version and feature.",
            ["model", "version", "feature"],
            registry=r,
        )
        self.drift_texts = Gauge(
            "onnxguard_drift_window_texts",
            "Texts in the drift window (scores appear from 200).",
            ["model", "version"],
            registry=r,
        )
        self.before_render: list[Callable[[], None]] = []
        """Called before each exposition (metrics computed on demand, e.g. drift)."""
        self.lifecycle = Counter(
            "onnxguard_model_lifecycle",
            "Model repository events by model and action (load, unload, rollback, refused).",
            ["model", "action"],
            registry=r,
        )
        self.connections_open = Gauge(
            "onnxguard_connections_open", "Open client connections.", registry=r
        )
        self.connections_closed = Counter(
            "onnxguard_connections_closed",
            "Connections refused or closed by the server before a request, by reason "
            "(per_client_limit, max_connections, evicted, header_timeout).",
            ["reason"],
            registry=r,
        )
        self.audit_records = Counter(
            "onnxguard_audit_records", "Audit records written.", registry=r
        )

    def observe_batch(
        self, size: int, real_tokens: int, padded_tokens: int, seconds: float, waits: list[float]
    ) -> None:
        """Called by the batching worker after each ONNX Runtime call."""
        self.batch_size.observe(size)
        self.padding_ratio.observe(1.0 - real_tokens / padded_tokens if padded_tokens else 0.0)
        self.inference.observe(seconds)
        self.texts.inc(size)
        self.tokens.inc(real_tokens)
        for wait in waits:
            self.queue_wait.observe(wait)

    def render(self) -> bytes:
        for update in self.before_render:
            update()
        return generate_latest(self.registry)
