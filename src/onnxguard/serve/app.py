"""The FastAPI app: ``create_app(config) -> FastAPI``.

Endpoints: ``POST /v1/classify``, ``POST /v1/embed`` (by the model's task), the Open Inference
Protocol under ``/v2`` (see ``v2.py``), the OpenAI/TEI routes (``compat.py``), the model
repository under ``/v2/repository`` (``admin.py``, ``admin`` scope), ``GET /metrics``
(Prometheus, ``metrics`` scope) and the OpenAPI docs (``/docs``, ``/openapi.json``; a key is
needed unless ``--docs public``).  Every request passes the guard (``_guard.py``): keys, rate
limits, body limits, audit, metrics.  The app serves one bundle or a repository of models
(``models.py``, ``repository.py``); routes lease the model version they run on.

Schemas are strict (unknown fields, wrong types → 422; malformed JSON → 400) and every error,
including FastAPI's own, is answered as ``{"error": "..."}``; an unexpected exception is a bare
500 and is logged by type only, since exception text could carry request content.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from onnxguard import __version__
from onnxguard.errors import AuditLogError
from onnxguard.serve._authfail import AuthFailures
from onnxguard.serve._guard import Guard
from onnxguard.serve._http import (
    ApiError,
    ServeState,
    context_of,
    describe_errors,
    error_response,
    json_response,
    parse_json,
)
from onnxguard.serve._shared import AuditSink, Limiter, SharedState
from onnxguard.serve.admin import add_repository_routes
from onnxguard.serve.audit import AuditLog
from onnxguard.serve.auth import KeyStore
from onnxguard.serve.compat import add_compat_routes
from onnxguard.serve.metrics import CONTENT_TYPE, ServeMetrics
from onnxguard.serve.models import Lifecycle, ModelSet, SingleBundle
from onnxguard.serve.qa import QA_PATHS, add_qa_routes
from onnxguard.serve.ratelimit import RateLimiter
from onnxguard.serve.repository import Repository, is_repository
from onnxguard.serve.service import EngineLoader, Service, default_loader, token_limiter
from onnxguard.serve.settings import DocsMode, ServeConfig
from onnxguard.serve.v2 import make_router
from onnxguard.tasks import Task

log = logging.getLogger("onnxguard.serve")

# FastAPI's native telemetry would record validation failures (with request content) to any
# globally configured OpenTelemetry provider; the server's own metrics and audit log replace it.
_TELEMETRY_OFF: Any = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


class TextsRequest(BaseModel):
    """Texts in; limits on count, characters and tokens are enforced with 413s that name them."""

    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[str] = Field(min_length=1, description="The texts to run, in order.")
    model: str | None = Field(
        default=None,
        max_length=256,
        description="NAME or NAME/VERSION (a repository); default: the server's default model.",
    )


class ClassificationResult(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class TokenLabel(BaseModel):
    token: str
    start: int
    end: int
    label: str
    score: float


class TokenResult(BaseModel):
    tokens: list[TokenLabel]


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassificationResult] | list[TokenResult]


class EmbedResponse(BaseModel):
    model: str
    dimensions: int
    embeddings: list[list[float]]


class ErrorResponse(BaseModel):
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Malformed request"),
        (401, "Missing or invalid API key"),
        (403, "The key lacks the scope"),
        (413, "Body or input over a limit"),
        (415, "Not JSON, or an unsupported Content-Encoding"),
        (422, "Request does not match the schema"),
        (429, "Rate limit or token budget exceeded"),
        (503, "Not ready, overloaded or shutting down"),
        (504, "Timed out in the queue"),
    )
}


@dataclass(frozen=True)
class ServerHandles:
    """What an embedding program (or a test) may want to reach: kept on ``app.state.onnxguard``."""

    config: ServeConfig
    lifecycle: Lifecycle
    metrics: ServeMetrics
    keys: KeyStore | None
    audit: AuditSink | None
    state: ServeState
    auth_failures: AuthFailures
    shared: SharedState = field(default_factory=SharedState)

    @property
    def models(self) -> ModelSet:
        return self.lifecycle.models

    @property
    def service(self) -> Service:
        """The one model of a single-bundle server."""
        if not isinstance(self.lifecycle, SingleBundle):
            raise TypeError("a repository server has one service per model version")
        return self.lifecycle.service

    @property
    def local_ready(self) -> bool:
        """This process: the models are loaded and the audit log (if any) is writable."""
        return self.lifecycle.ready and (self.audit is None or self.audit.healthy)

    @property
    def ready(self) -> bool:
        """Serving: ``local_ready``; with replicas, every replica is ready too."""
        local = self.local_ready
        return self.shared.ready(local) if self.shared.ready is not None else local

    def drain(self) -> None:
        """SIGTERM: answer with ``Connection: close``, run queued texts without waiting."""
        self.state.draining = True
        self.lifecycle.drain()


def create_app(
    config: ServeConfig,
    *,
    keys: KeyStore | None = None,
    loader: EngineLoader | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
    shared: SharedState | None = None,
) -> FastAPI:
    """Build the app.  The bundle (or the repository's models) is verified and loaded after the
    server starts (readiness follows); a failure calls ``on_fatal`` (the CLI stops the server
    with the error).  ``shared`` replaces the local rate limits, audit log, readiness and
    metrics with ones that several replicas share (``serve --ray``)."""
    config.check()
    if keys is None and config.api_keys_file is not None:
        keys = KeyStore.from_file(config.api_keys_file)
    shared = shared or SharedState()
    metrics = ServeMetrics()
    tokens: Limiter | None = shared.tokens
    if tokens is None and config.token_limit is not None:
        tokens = token_limiter(config.token_limit)  # one budget per key across every model
    limiter: Limiter | None = shared.limiter
    if limiter is None and config.rate_limit is not None:
        limiter = RateLimiter(config.rate_limit)
    audit: AuditSink | None = shared.audit or _audit_log(config)
    auth_failures = AuthFailures(config.limits.auth_failures_per_minute)
    lifecycle: Lifecycle
    repository: Repository | None = None
    if is_repository(Path(config.bundle)):
        if loader is not None:
            raise TypeError("a repository loads each version with its own loader")
        repository = Repository(
            config, metrics, tokens=tokens, audit=audit, on_ready=lambda: metrics.ready.set(1)
        )
        lifecycle = repository
    else:
        service = Service(config, metrics, loader or default_loader(config), tokens=tokens)
        lifecycle = SingleBundle(service, on_ready=lambda: metrics.ready.set(1))
    models = lifecycle.models
    metrics.before_render.append(lambda: _export_drift(models, metrics))

    def fatal(exc: BaseException) -> None:
        if on_fatal is not None:
            on_fatal(exc)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if audit is not None and not audit.is_open:  # `serve` opens it before binding
            try:
                audit.open()
            except Exception as exc:
                fatal(exc)
                raise

        if repository is not None:
            repository.bind_loop(asyncio.get_running_loop())

        async def load() -> None:
            try:
                await asyncio.to_thread(lifecycle.start)
            except Exception as exc:
                message = getattr(exc, "message", None) or type(exc).__name__
                log.error("the model could not be loaded, the server stops: %s", message)
                fatal(exc)

        task = asyncio.create_task(load())
        try:
            yield
        finally:
            if not task.done():
                task.cancel()
            metrics.ready.set(0)
            await asyncio.to_thread(lifecycle.stop)
            if audit is not None:
                for summary in auth_failures.due(everything=True):
                    with contextlib.suppress(AuditLogError):
                        await audit.append(summary, kind="auth_failures")
                audit.close()

    docs = config.docs is not DocsMode.OFF
    app = FastAPI(
        title="onnxguard",
        version=__version__,
        lifespan=lifespan,
        summary="Verified ONNX transformer models, served securely.",
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        redirect_slashes=False,
        telemetry=_TELEMETRY_OFF,
    )
    handles = ServerHandles(
        config, lifecycle, metrics, keys, audit, ServeState(), auth_failures, shared
    )
    app.state.onnxguard = handles
    _install_error_handlers(app)
    _add_v1_routes(app, models, metrics, shared)
    add_compat_routes(app, models, question_answering=add_qa_routes(app, models))
    app.include_router(make_router(models, lambda: handles.ready))
    add_repository_routes(app, repository, models)
    _openapi_for_the_task(app, models)

    app.add_middleware(
        Guard,
        config=config,
        keys=keys,
        limiter=limiter,
        audit=audit,  # type: ignore[arg-type]
        metrics=metrics,
        state=handles.state,
        auth_failures=auth_failures,
        tokens=tokens,
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),  # type: ignore[arg-type]
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Content-Encoding",
                "Inference-Header-Content-Length",
            ],
            expose_headers=["X-Request-ID", "Retry-After", "Inference-Header-Content-Length"],
            max_age=600,
        )
    return app


def _export_drift(models: ModelSet, metrics: ServeMetrics) -> None:
    """Drift gauges of the versions served now (a retired version's series disappear)."""
    for gauge in (metrics.drift_psi, metrics.drift_kl, metrics.drift_texts):
        gauge.clear()
    for served in models.served():
        window = served.service.drift
        if window is None:
            continue
        version = str(served.version)
        metrics.drift_texts.labels(served.name, version).set(window.count)
        for feature, value in window.scores().items():
            metrics.drift_psi.labels(served.name, version, feature).set(value)
        for feature, value in window.kl().items():
            metrics.drift_kl.labels(served.name, version, feature).set(value)


def _audit_log(config: ServeConfig) -> AuditLog | None:
    if config.audit.path is None:
        return None
    return AuditLog(
        config.audit.path,
        max_bytes=config.audit.max_bytes,
        keep=config.audit.keep,
        fsync=config.audit.fsync,
        server_info={
            "version": __version__,
            "bundle": str(config.bundle),
            "host": config.host,
            "port": config.port,
        },
    )


def _openapi_for_the_task(app: FastAPI, models: ModelSet) -> None:
    """The OpenAPI document says what the server answers: only the V1 routes of the served
    models' tasks (once they are known), and no 422 on V2 routes."""
    generate = app.openapi
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        key = tuple((s.name, s.version) for s in models.served())
        if cached.get("key") == key and "schema" in cached:
            return cached["schema"]  # type: ignore[no-any-return]
        cached["key"] = key
        app.openapi_schema = None
        schema = copy.deepcopy(generate())
        paths = schema.get("paths", {})
        for path, operations in paths.items():
            if path.startswith("/v2"):  # FastAPI adds 422 for path parameters; V2 answers 400
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
        served = models.served()
        if not served:
            return schema
        tasks = {s.service.engine.task for s in served}
        if Task.FEATURE_EXTRACTION not in tasks:
            paths.pop("/v1/embed", None)
        if Task.QUESTION_ANSWERING not in tasks:
            for path in QA_PATHS:
                paths.pop(path, None)
        if tasks <= {Task.FEATURE_EXTRACTION, Task.QUESTION_ANSWERING}:
            paths.pop("/v1/classify", None)
        cached["schema"] = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_v1_routes(
    app: FastAPI, models: ModelSet, metrics: ServeMetrics, shared: SharedState
) -> None:
    @app.post(
        "/v1/classify",
        tags=["v1"],
        summary="Classify texts (labels and scores)",
        response_model=None,
        responses={200: {"model": ClassifyResponse}, **_ERRORS},
        openapi_extra=_TEXTS_BODY,
    )
    async def classify(request: Request) -> Response:
        body = await parse_json(request, _TEXTS_ADAPTER)
        texts = body.texts
        service = models.lease(context_of(request.scope), body.model)
        engine = service.engine
        if engine.task is Task.FEATURE_EXTRACTION:
            raise ApiError(400, "this model computes embeddings: use POST /v1/embed")
        if engine.task is Task.QUESTION_ANSWERING:
            raise ApiError(400, "this model answers questions: use POST /v1/answer")
        inference = await service.infer(texts, context_of(request.scope))
        if engine.task is Task.TOKEN_CLASSIFICATION:
            results = [
                engine.postprocess_tokens(row, enc)
                for row, enc in zip(inference.rows, inference.encodings, strict=True)
            ]
        else:
            results = engine.postprocess(np.stack(inference.rows))
        return json_response({"model": service.model_name, "results": results})

    @app.post(
        "/v1/embed",
        tags=["v1"],
        summary="Embed texts (one vector per text)",
        response_model=None,
        responses={200: {"model": EmbedResponse}, **_ERRORS},
        openapi_extra=_TEXTS_BODY,
    )
    async def embed(request: Request) -> Response:
        body = await parse_json(request, _TEXTS_ADAPTER)
        texts = body.texts
        service = models.lease(context_of(request.scope), body.model)
        engine = service.engine
        if engine.task is not Task.FEATURE_EXTRACTION:
            raise ApiError(400, f"this model is {engine.task.value}: use POST /v1/classify")
        inference = await service.infer(texts, context_of(request.scope))
        vectors = np.stack(inference.rows).astype(np.float64)
        return json_response(
            {
                "model": service.model_name,
                "dimensions": int(vectors.shape[1]),
                "embeddings": vectors.tolist(),
            }
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics (metrics scope)",
        response_model=None,
        responses={
            200: {"content": {"text/plain": {}}},
            **{status: _ERRORS[status] for status in (401, 403, 429)},
        },
    )
    async def prometheus() -> Response:
        local = metrics.render()
        if shared.metrics is None:
            return Response(local, media_type=CONTENT_TYPE)
        combined = await asyncio.to_thread(shared.metrics, local)
        return Response(combined, media_type=CONTENT_TYPE)


# The body is parsed and validated by pydantic-core in one pass (``validate_json``) rather than
# through FastAPI's dependency machinery: the same strict schema, a fraction of the CPU per
# request.  The schema is still published in the OpenAPI document.
_TEXTS_ADAPTER = TypeAdapter(TextsRequest)
_TEXTS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": TextsRequest.model_json_schema()}},
    },
}


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        ctx = context_of(request.scope)
        if ctx is not None:
            ctx.outcome = exc.outcome
        return error_response(exc.status, exc.message, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "request body is not valid JSON")
        return error_response(422, describe_errors(errors))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, detail.lower(), dict(exc.headers or {}))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
