"""Triton's model repository extension, under the ``admin`` scope.

- ``POST /v2/repository/index``: every model version on disk or served, with its state
  (``READY`` / ``UNAVAILABLE`` and why); body ``{"ready": true}`` lists the ready ones only.
- ``POST /v2/repository/models/{name}/load``: (re)load a model as its policy says; clears a
  rollback's hold and retries refused versions; 400 with the reason when nothing could be loaded.
- ``POST /v2/repository/models/{name}/unload``: stop serving every version of it.
- ``POST /v2/repository/models/{name}/rollback`` (onnxguard's): serve the version before the
  current default; ``{"model", "from", "to"}``.

A key restricted to some models sees and manages only those.  Loading verifies and warms the
model up before the call returns (seconds), so these run in a worker thread.  A single-bundle
server lists its model and answers 409 to the changes: start it on a repository directory.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from onnxguard.errors import ModelNotFoundError, OnnxGuardError, RollbackError
from onnxguard.serve._http import ApiError, context_of, json_response
from onnxguard.serve.models import ModelSet
from onnxguard.serve.repository import Repository

_MAX_BODY = 4096


def add_repository_routes(app: FastAPI, repository: Repository | None, models: ModelSet) -> None:
    def allowed(request: Request, name: str) -> bool:
        ctx = context_of(request.scope)
        return ctx is None or ctx.allowed_models is None or name in ctx.allowed_models

    def need_repository() -> Repository:
        if repository is None:
            raise ApiError(
                409,
                "this server serves one bundle; start `onnxguard serve` on a model repository "
                "(NAME/VERSION/ bundles) to load, unload and roll back models",
            )
        return repository

    def actor(request: Request) -> str | None:
        ctx = context_of(request.scope)
        return ctx.key_id if ctx is not None else None

    async def run(call: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args)
        except OnnxGuardError as exc:
            status = (404 if isinstance(exc, ModelNotFoundError)
                      else 409 if isinstance(exc, RollbackError) else 400)
            raise ApiError(status, exc.message) from None

    @app.post("/v2/repository/index", tags=["repository"], summary="Model repository index")
    async def index(request: Request) -> Response:
        ready_only = _ready_only(await request.body())
        if repository is None:
            rows = [{"name": s.name, "version": str(s.version), "state": "READY"}
                    for s in models.served()]
        else:
            rows = await asyncio.to_thread(repository.index)
        rows = [r for r in rows if allowed(request, r["name"])]
        if ready_only:
            rows = [r for r in rows if r["state"] == "READY"]
        return json_response(rows)

    @app.post("/v2/repository/models/{model_name}/load", tags=["repository"],
              summary="Load a model (verify, warm up, then serve)")
    async def load(request: Request, model_name: str) -> Response:
        outcome = await run(need_repository().load, model_name, actor(request))
        return json_response({"model": model_name,
                              "loaded": [str(v) for v in outcome.loaded],
                              "unloaded": [str(v) for v in outcome.unloaded],
                              "refused": {str(v): r for v, r in outcome.refused.items()}})

    @app.post("/v2/repository/models/{model_name}/unload", tags=["repository"],
              summary="Stop serving a model")
    async def unload(request: Request, model_name: str) -> Response:
        outcome = await run(need_repository().unload, model_name, actor(request))
        return json_response({"model": model_name,
                              "unloaded": [str(v) for v in outcome.unloaded]})

    @app.post("/v2/repository/models/{model_name}/rollback", tags=["repository"],
              summary="Serve the version before the current one")
    async def rollback(request: Request, model_name: str) -> Response:
        previous, current = await run(need_repository().rollback, model_name, actor(request))
        return json_response({"model": model_name, "from": str(previous), "to": str(current)})


def _ready_only(body: bytes) -> bool:
    """Triton's index body: empty, or ``{"ready": bool}``."""
    if not body.strip():
        return False
    if len(body) > _MAX_BODY:
        raise ApiError(413, f"index request body over {_MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict) or set(data) - {"ready"} or not isinstance(
        data.get("ready", False), bool
    ):
        raise ApiError(400, 'index body must be {} or {"ready": true|false}')
    return bool(data.get("ready", False))
