"""The guard: one pure-ASGI middleware every HTTP request passes through, in this order.

1. route class (health: public, never reads a body; ``/metrics``: ``metrics`` scope; everything
   else: ``infer``); framing: Content-Length with Transfer-Encoding is a 400 and the connection
   is closed (RFC 9112), Content-Length must be ASCII digits
2. API key (401) and scope (403), compared in constant time (``auth.KeyStore``), before any body
   byte is read; failed authentications are limited per client address (429) and audited in
   bounded form (``_authfail.py``)
3. per-key rate limit and spent token budget (429 + Retry-After), before the body is read
4. body: declared and received size (413), slow senders (408), gzip/deflate decoded in a worker
   thread with a bound on output bytes and members (``_codec.py``)
5. the app; an unexpected exception becomes a 500 with no detail (logged with its type)
6. before the response starts: the audit record is written and fsynced (a failed write turns the
   response into a 503: nothing is served unaudited), metrics are counted, security headers
   added, and ``Connection: close`` while the server drains

Request text and keys never reach a log: the access log has the request id, key id, endpoint,
status and latency; the audit log has a hash of the inputs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from onnxguard.errors import AuditLogError
from onnxguard.serve._authfail import AuthFailures
from onnxguard.serve._codec import decode_body
from onnxguard.serve._http import (
    CONTEXT_KEY,
    ApiError,
    RequestContext,
    ServeState,
    error_body,
    outcome_for,
)
from onnxguard.serve._shared import AuditSink, Limiter
from onnxguard.serve.auth import (
    SCOPE_ADMIN,
    SCOPE_INFER,
    SCOPE_METRICS,
    SCOPES,
    KeyStore,
    Principal,
)
from onnxguard.serve.compat import COMPAT_PATHS
from onnxguard.serve.metrics import ServeMetrics
from onnxguard.serve.models import check_model_allowed
from onnxguard.serve.qa import QA_PATHS
from onnxguard.serve.settings import DocsMode, ServeConfig

log = logging.getLogger("onnxguard.serve")
access_log = logging.getLogger("onnxguard.serve.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")
_V2_MODEL = re.compile(r"/v2/models/([^/]+)(/versions/[^/]+)?(/ready|/config|/infer)?")
_REPOSITORY = re.compile(r"/v2/repository/models/([^/]+)/(load|unload|rollback)")
_ANONYMOUS = Principal("anonymous", SCOPES)
_DIGITS = re.compile(r"[0-9]{1,15}")
_CLOSE = (b"connection", b"close")
_SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


@dataclass(frozen=True)
class RouteClass:
    label: str
    """Bounded label for metrics and the audit log (a route template, never the raw path)."""
    scope: str | None
    """Scope a key needs; None: public."""
    audited: bool
    model: str | None = None
    """The model a path names (V2, repository routes): the key must be allowed to use it."""


def classify(path: str, docs: DocsMode) -> RouteClass:
    if path in HEALTH_PATHS:
        return RouteClass(path, None, audited=False)
    if path == "/metrics":
        return RouteClass(path, SCOPE_METRICS, audited=True)
    if path in ("/v1/classify", "/v1/embed", "/v2") or path in COMPAT_PATHS or path in QA_PATHS:
        return RouteClass(path, SCOPE_INFER, audited=True)
    if path in DOCS_PATHS:
        if docs is DocsMode.PUBLIC:
            return RouteClass(path, None, audited=False)
        return RouteClass(path, SCOPE_INFER, audited=True)
    if path == "/v2/repository/index":
        return RouteClass(path, SCOPE_ADMIN, audited=True)
    match = _REPOSITORY.fullmatch(path)
    if match:
        label = "/v2/repository/models/{name}/" + match.group(2)
        return RouteClass(label, SCOPE_ADMIN, audited=True, model=match.group(1))
    match = _V2_MODEL.fullmatch(path)
    if match:
        label = "/v2/models/{name}" + ("/versions/{version}" if match.group(2) else "")
        return RouteClass(
            label + (match.group(3) or ""), SCOPE_INFER, audited=True, model=match.group(1)
        )
    return RouteClass("other", SCOPE_INFER, audited=True)


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Guard:
    """Wraps the FastAPI app (inside Starlette's error middleware, outside the router)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: ServeConfig,
        keys: KeyStore | None,
        limiter: Limiter | None,
        audit: AuditSink | None,
        metrics: ServeMetrics,
        state: ServeState,
        auth_failures: AuthFailures,
        tokens: Limiter | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.keys = keys
        self.limiter = limiter
        self.audit = audit
        self.metrics = metrics
        self.state = state
        self.auth_failures = auth_failures
        self.tokens = tokens
        # Request ids: a random per-process prefix and a counter (unique, and no syscall per
        # request as uuid4 would make).
        self._id_prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)
        self._next_sweep = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = classify(scope.get("path", ""), self.config.docs)
        ctx = RequestContext(
            request_id=f"{self._id_prefix}{next(self._counter):010x}",
            endpoint=route.label,
            method=str(scope.get("method", "")),
            client=_client(scope),
            started=time.perf_counter(),
        )
        scope[CONTEXT_KEY] = ctx
        responder = _Responder(self, send, ctx, route)
        if ctx.started >= self._next_sweep:  # failure windows that ended get their digest
            self._next_sweep = ctx.started + 5.0
            await self.write_summaries(self.auth_failures.due())
        self.metrics.in_flight.inc()
        try:
            try:
                receive = await self._admit(scope, receive, route, ctx)
            except ApiError as err:
                self.metrics.rejected.labels(err.outcome).inc()
                await responder.error(err)
                return
            except _ClientGone:
                ctx.outcome = "client_disconnected"
                await responder.record(499)
                return
            try:
                await self.app(scope, receive, responder.send)
            except Exception as exc:  # a bug: answer 500 without detail, log the type
                log.error(
                    "request %s failed: %s",
                    ctx.request_id,
                    type(exc).__name__,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                if not responder.started:
                    await responder.error(ApiError(500, "internal error"))
        finally:
            for service in ctx.leases:  # the model version may now retire, if it was swapped
                service.release()
            ctx.leases.clear()
            self.metrics.in_flight.dec()
            responder.log_access()

    # --- admission -----------------------------------------------------------------------------
    async def _admit(
        self, scope: Scope, receive: Receive, route: RouteClass, ctx: RequestContext
    ) -> Receive:
        headers = _headers(scope)
        declared = headers.get("content-length")
        if declared is not None and "transfer-encoding" in headers:
            raise ApiError(
                400,
                "Content-Length and Transfer-Encoding together are not allowed",
                headers={"Connection": "close"},
            )
        if declared is not None and not _DIGITS.fullmatch(declared.strip()):
            raise ApiError(400, "invalid Content-Length", headers={"Connection": "close"})
        if route.scope is None:
            return receive  # public routes never read (or decode) a body
        await self._authorize(headers, route, ctx)
        has_body = (
            ctx.method in ("POST", "PUT", "PATCH")
            or (declared not in (None, "0"))
            or "transfer-encoding" in headers
        )
        if not has_body:
            return receive
        body = await self._read_body(receive, declared)
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding and encoding != "identity":
            body = await asyncio.to_thread(
                decode_body, body, encoding, self.config.limits.max_body_bytes
            )
        scope["headers"] = [
            (k, v)
            for k, v in scope.get("headers", [])
            if k not in (b"content-length", b"content-encoding", b"transfer-encoding")
        ]
        scope["headers"].append((b"content-length", str(len(body)).encode("ascii")))
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _authorize(
        self, headers: dict[str, str], route: RouteClass, ctx: RequestContext
    ) -> None:
        """Key, scope, model and per-key rate; a failed key costs the address part of its
        budget."""
        needed = route.scope
        if self.keys is None:
            principal = _ANONYMOUS
        else:
            found = self.keys.authenticate(headers.get("authorization"))
            if found is None:
                await self._auth_failed(ctx)
            assert found is not None
            principal = found
            ctx.key_id = principal.key_id
        if needed not in principal.scopes:
            raise ApiError(403, f"this API key lacks the '{needed}' scope")
        ctx.allowed_models = principal.models
        if route.model is not None:
            check_model_allowed(ctx, unquote(route.model))
        ctx.tenant = principal.key_id if self.keys is not None else f"client:{ctx.client}"
        if self.limiter is not None:
            decision = self.limiter.acquire(ctx.tenant)
            if not decision.allowed:
                raise ApiError(
                    429,
                    f"rate limit exceeded ({self.limiter.limit} per key)",
                    headers={"Retry-After": str(decision.retry_after_s)},
                )
        if self.tokens is not None and needed == SCOPE_INFER:
            spent = self.tokens.acquire(ctx.tenant, 0.0)  # a spent token budget: no body read
            if not spent.allowed:
                raise ApiError(
                    429,
                    f"token budget exceeded ({self.tokens.limit} tokens per key)",
                    headers={"Retry-After": str(spent.retry_after_s)},
                    outcome="token_limited",
                )

    async def _auth_failed(self, ctx: RequestContext) -> None:
        client = ctx.client or "-"
        decision = self.auth_failures.charge(client)
        if decision.allowed:
            err = ApiError(
                401,
                "missing or invalid API key (send Authorization: Bearer KEY)",
                headers={"WWW-Authenticate": 'Bearer realm="onnxguard"'},
            )
        else:
            err = ApiError(
                429,
                "too many failed authentications from this address",
                headers={"Retry-After": str(decision.retry_after_s)},
                outcome="auth_rate_limited",
            )
        full, summaries = self.auth_failures.note(client, err.status)
        ctx.audit_in_full = full
        await self.write_summaries(summaries)
        raise err

    async def write_summaries(self, summaries: list[dict[str, Any]]) -> None:
        """Write ``auth_failures`` digest records (a failed write fails the log, as any)."""
        if self.audit is None:
            return
        for summary in summaries:
            try:
                await self.audit.append(summary, kind="auth_failures")
                self.metrics.audit_records.inc()
            except AuditLogError as exc:
                log.error("auth failure digest not written: %s", exc.message)
                return

    async def _read_body(self, receive: Receive, declared: str | None) -> bytes:
        limit = self.config.limits.max_body_bytes
        if declared is not None and int(declared) > limit:
            raise ApiError(
                413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes"
            )
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.config.limits.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise ApiError(
                408, f"request body not received within {self.config.limits.body_timeout_s:g} s"
            ) from None
        return b"".join(chunks)


class _Responder:
    """Wraps ``send``: audit + metrics + headers before the response starts."""

    def __init__(self, guard: Guard, send: Send, ctx: RequestContext, route: RouteClass) -> None:
        self.guard = guard
        self._send = send
        self.ctx = ctx
        self.route = route
        self.started = False
        self.replaced = False
        self.status = 0
        self.logged = False

    async def error(self, err: ApiError) -> None:
        self.ctx.outcome = self.ctx.outcome or err.outcome
        body = error_body(err.message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        headers += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()
        ]
        await self.send({"type": "http.response.start", "status": err.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            status = int(message["status"])
            if not await self.record(status):
                self.replaced = True
                body = error_body("audit log unavailable")
                message = {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode("ascii")),
                    ],
                }
                await self._send(self._decorate(message))
                await self._send({"type": "http.response.body", "body": body})
                return
            await self._send(self._decorate(message))
            return
        if kind == "http.response.body" and self.replaced:
            return
        await self._send(message)

    def _decorate(self, message: Message) -> Message:
        headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
        headers += _SECURITY_HEADERS
        headers.append((b"x-request-id", self.ctx.request_id.encode("ascii")))
        if self.guard.state.draining and not any(k.lower() == b"connection" for k, _ in headers):
            headers.append(_CLOSE)  # keep-alive clients learn to reconnect elsewhere
        return {**message, "headers": headers}

    async def record(self, status: int) -> bool:
        """Audit (durably) and count; False when the audit record could not be written."""
        ctx, guard = self.ctx, self.guard
        self.status = status
        elapsed = time.perf_counter() - ctx.started
        outcome = ctx.outcome if ctx.outcome and status >= 400 else outcome_for(status)
        ok = True
        if self.route.audited and guard.audit is not None and ctx.audit_in_full:
            digest = ctx.leases[-1].bundle_digest if ctx.leases else None
            record = {
                "request_id": ctx.request_id,
                "key_id": ctx.key_id,
                "client": ctx.client,
                "method": ctx.method,
                "endpoint": ctx.endpoint,
                "model": ctx.model,
                "version": ctx.version,
                "bundle_digest": digest,
                "inputs": ctx.inputs,
                "inputs_sha256": ctx.inputs_sha256,
                "outcome": outcome,
                "status": status,
                "latency_ms": round(elapsed * 1000.0, 3),
            }
            try:
                await guard.audit.append(record)
                guard.metrics.audit_records.inc()
            except AuditLogError as exc:
                log.error("request %s refused: %s", ctx.request_id, exc.message)
                ok = False
                status = 503
        self.status = status
        guard.metrics.requests.labels(ctx.endpoint, str(status)).inc()
        guard.metrics.latency.labels(ctx.endpoint).observe(elapsed)
        if ctx.model is not None and ctx.version is not None:
            outcome = ctx.outcome if ctx.outcome and status >= 400 else outcome_for(status)
            guard.metrics.model_requests.labels(ctx.model, ctx.version, outcome).inc()
            guard.metrics.model_latency.labels(ctx.model, ctx.version).observe(elapsed)
        return ok

    def log_access(self) -> None:
        if self.logged or not self.guard.config.access_log:
            return
        self.logged = True
        ctx = self.ctx
        access_log.info(
            "%s %s %s %s %d %.1fms key=%s",
            ctx.request_id,
            ctx.client or "-",
            ctx.method,
            ctx.endpoint,
            self.status,
            (time.perf_counter() - ctx.started) * 1000.0,
            ctx.key_id or "-",
        )


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers, lower-cased names; a repeated header keeps its first value."""
    result: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        name = key.decode("latin-1").lower()
        if name not in result:
            result[name] = value.decode("latin-1")
    return result


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    if not client:
        return None
    return str(client[0])
