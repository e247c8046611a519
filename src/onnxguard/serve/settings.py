"""Frozen server configuration with safe defaults.

Every limit has a default that is safe to expose: loopback only, keys required, a per-key rate,
a 1 MiB body cap (also on the decompressed size), bounded texts/characters/tokens per request,
a bounded batching queue and a per-request timeout.  The CLI maps its flags 1:1 onto these
objects; nothing here reads the environment.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from onnxguard.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
}
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}


def parse_size(text: str, what: str = "size") -> int:
    """``1048576``, ``512KiB``, ``1MB``, ``1MiB`` -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(
            f"cannot read {what} {text!r}",
            hint="write a byte count such as 1048576, 512KiB, 1MB or 1MiB",
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


@dataclass(frozen=True)
class RateLimit:
    """``requests`` per ``period_s`` per API key; the bucket holds at most ``requests`` (burst)."""

    requests: int
    period_s: float

    @classmethod
    def parse(cls, text: str, option: str = "--rate-limit") -> RateLimit | None:
        """``100/minute``, ``10/s``, ``5000/hour``; ``off`` disables rate limiting."""
        if text.strip().lower() in ("off", "none", "unlimited"):
            return None
        count, _, period = text.strip().partition("/")
        seconds = _PERIODS.get(period.strip().lower())
        if not re.fullmatch(r"[0-9]{1,12}", count.strip()) or int(count) < 1 or seconds is None:
            raise UsageError(
                f"cannot read {option} {text!r}",
                hint="write N/second, N/minute, N/hour or N/day (N >= 1), or off",
            )
        return cls(int(count), seconds)

    @property
    def per_second(self) -> float:
        return self.requests / self.period_s

    def __str__(self) -> str:
        names = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}
        return f"{self.requests}/{names.get(self.period_s, f'{self.period_s:g}s')}"


@dataclass(frozen=True)
class Limits:
    """Per-request limits; each breach is a 4xx with a message that names the limit."""

    max_body_bytes: int = 1024 * 1024
    """Request body, and the body after gzip/deflate decoding (a compression bomb is a 413)."""
    max_texts: int = 64
    max_chars: int = 20_000
    """Characters per text (before tokenization; texts are truncated at the model's max length)."""
    max_tokens: int = 16_384
    """Tokens per request, after truncation at the model's max length."""
    body_timeout_s: float = 30.0
    """A client that takes longer to send its body gets a 408 (slow-body attacks)."""
    max_connections: int = 1024
    """Open connections.  When all are taken, a new one evicts the oldest connection that has not
    sent a complete request (idle or slow); if every connection is busy, it is closed at once."""
    max_connections_per_client: int = 128
    """Open connections per client address (0: no cap).  Trusted proxies
    (``forwarded_allow_ips``) are exempt."""
    header_timeout_s: float = 10.0
    """A connection must deliver a complete request head within this many seconds of opening
    (or of its previous response), else it is closed: idle and slowloris connections."""
    auth_failures_per_minute: int = 30
    """Failed authentications per client address per minute; beyond: 429 (and one audit record
    per address per minute, with a count)."""

    def check(self) -> None:
        for name in ("max_body_bytes", "max_texts", "max_chars", "max_tokens", "max_connections"):
            if getattr(self, name) < 1:
                raise UsageError(
                    f"{name.replace('_', '-')} must be at least 1",
                    hint=f"pass --{name.replace('_', '-')} with a value of 1 or more",
                )
        if self.max_connections_per_client < 0 or self.auth_failures_per_minute < 1:
            raise UsageError(
                "max-connections-per-client must be >= 0 and auth-failures-per-minute >= 1"
            )
        if self.body_timeout_s <= 0 or self.header_timeout_s <= 0:
            raise UsageError("body and header timeouts must be positive")


@dataclass(frozen=True)
class BatchSettings:
    """Dynamic micro-batching across requests."""

    max_batch: int = 32
    """Texts per ONNX Runtime call."""
    max_wait_ms: float = 2.0
    """How long the oldest waiting text may wait for others to join its batch."""
    max_batch_tokens: int = 8192
    """Batch rows x padded width: bounds memory and latency of one call."""
    queue_size: int = 1024
    """Texts waiting to run; beyond it requests get a fast 503 (back-pressure, not a backlog)."""
    timeout_s: float = 30.0
    """Per request, from arrival at the batcher to result (504 beyond)."""
    min_fill: float = 0.5
    """Length bucketing: a batch keeps real tokens >= min_fill of its padded size."""
    call_overhead_tokens: int = 32
    """Length bucketing: the fixed cost of one ONNX Runtime call, in padded tokens.  A text joins
    a batch only if it lowers the cost per real token: larger values favour fuller batches over
    less padding (measured ~35 for MiniLM-L6 on 2 CPU threads)."""
    workers: int = 1
    """Threads that run ONNX Runtime; each call already uses all intra-op threads."""

    def check(self) -> None:
        if self.max_batch < 1 or self.max_batch_tokens < 1 or self.queue_size < 1:
            raise UsageError("max-batch, max-batch-tokens and queue-size must be at least 1")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise UsageError("max-wait-ms must be >= 0 and the request timeout positive")
        if not 0.0 <= self.min_fill <= 1.0:
            raise UsageError("min-fill must be between 0 and 1")
        if self.call_overhead_tokens < 0:
            raise UsageError("call-overhead-tokens must be >= 0")
        if self.workers < 1:
            raise UsageError("batch workers must be at least 1")


@dataclass(frozen=True)
class AuditSettings:
    """Hash-chained JSON-lines audit log (None path: no audit log)."""

    path: Path | None = None
    max_bytes: int = 100 * 1024 * 1024
    """Rotate the live file when it would grow past this."""
    keep: int = 0
    """Rotated files kept (oldest pruned first, the pruning is itself recorded); 0 keeps all."""
    fsync: bool = True
    """fsync each group of records before their responses are sent."""


@dataclass(frozen=True)
class TLSSettings:
    cert: Path
    key: Path
    key_password: str | None = field(default=None, repr=False)
    client_ca: Path | None = None
    """Require client certificates signed by this CA (mutual TLS)."""

    def check(self) -> None:
        for label, path in (
            ("certificate", self.cert),
            ("key", self.key),
            ("client CA", self.client_ca),
        ):
            if path is not None and not Path(path).is_file():
                raise UsageError(
                    f"TLS {label} {path} does not exist", hint="pass a readable PEM file"
                )


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class DocsMode(StrEnum):
    ON = "on"
    """/docs, /redoc and /openapi.json are served to holders of a valid key."""
    OFF = "off"
    PUBLIC = "public"
    """Served without a key (the API shape only; no model data)."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``onnxguard serve`` needs; defaults are the secure ones."""

    bundle: Path
    """A bundle, or a model repository of ``NAME/VERSION/`` bundles (``repository.py``)."""
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    """Name in the V2 paths; default: the bundle's name (a repository: the directory names)."""
    default_model: str | None = None
    """A repository: the model of requests that name none (default: the only one)."""
    drift_window: int = 1000
    """Texts per model version whose statistics are compared with the bundle's drift reference
    (``/metrics``); 0 turns drift statistics off."""
    repository_poll_s: float = 5.0
    """A repository: seconds between looks for new, changed and removed versions (0: never;
    the admin routes still load and unload)."""
    api_keys_file: Path | None = None
    allow_unauthenticated: bool = False
    """Escape hatch for local experiments: no key needed (rate limits then apply per client)."""
    rate_limit: RateLimit | None = RateLimit(600, 60.0)
    token_limit: RateLimit | None = RateLimit(60_000, 60.0)
    """Tokens per key (per client address without keys): a request that finds its key's token
    bucket empty gets a 429 with Retry-After; the tokens a request used are charged after
    tokenization, so one key's heavy requests cannot take the whole machine."""
    audit: AuditSettings = AuditSettings()
    tls: TLSSettings | None = None
    limits: Limits = Limits()
    batching: BatchSettings = BatchSettings()
    docs: DocsMode = DocsMode.ON
    cors_origins: tuple[str, ...] = ()
    public_key: Path | None = None
    key_source: str | None = field(default=None, repr=False)
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    ort_spinning: bool = False
    """Let ONNX Runtime's threads spin between calls (off: they would starve the event loop)."""
    graceful_timeout_s: float = 30.0
    forwarded_allow_ips: tuple[str, ...] = ()
    """Proxies whose X-Forwarded-For is trusted for the client address (none by default)."""
    access_log: bool = True
    log_level: LogLevel = field(default_factory=lambda: LogLevel.INFO)

    def check(self) -> None:
        """Refuse unsafe or inconsistent combinations before anything starts."""
        self.limits.check()
        self.batching.check()
        if self.batching.queue_size < self.limits.max_texts:
            raise UsageError(
                f"queue size {self.batching.queue_size} is smaller than max-texts "
                f"{self.limits.max_texts}: a full-size request could never be queued",
                hint="raise --queue-size or lower --max-texts",
            )
        if self.tls is not None:
            self.tls.check()
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port {self.port} is out of range")
        if self.api_keys_file is None and not self.allow_unauthenticated:
            raise UsageError(
                "no API keys file: every inference request must carry a key",
                hint="create a key with `onnxguard apikey new --id NAME --keys-file keys.txt` "
                "and pass --api-keys-file keys.txt (or set ONNXGUARD_API_KEYS_FILE); "
                "--allow-unauthenticated turns authentication off for local experiments",
            )
        if self.api_keys_file is not None and self.allow_unauthenticated:
            raise UsageError("--api-keys-file and --allow-unauthenticated exclude each other")
        if self.model_name is not None and not re.fullmatch(
            r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", self.model_name
        ):
            raise UsageError(
                f"model name {self.model_name!r} is not allowed",
                hint="use letters, digits, '.', '_' and '-' (up to 128)",
            )
        if self.default_model is not None and not re.fullmatch(
            r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", self.default_model
        ):
            raise UsageError(f"--default-model {self.default_model!r} is not a model name")
        if not 0 <= self.drift_window <= 1_000_000:
            raise UsageError("--drift-window must be 0 (off) to 1000000 texts")
        if not 0 <= self.repository_poll_s <= 86_400:
            raise UsageError("--repository-poll must be 0 (off) to 86400 seconds")
        for origin in self.cors_origins:
            if origin == "*" or not re.fullmatch(r"https?://[^/\s]+", origin):
                raise UsageError(
                    f"CORS origin {origin!r} is not allowed",
                    hint="list exact origins such as https://app.example.com; '*' is refused",
                )

    @property
    def loopback(self) -> bool:
        """Whether the bind address only accepts local connections."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"
