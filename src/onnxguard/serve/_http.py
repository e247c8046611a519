"""HTTP errors and small helpers shared by the guard, the V1 routes and the V2 routes.

Every error response is ``{"error": "..."}`` with a status that says whose fault it is; messages
name the limit or field at fault and never echo the request's text back.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from onnxguard.errors import HTTP_OUTCOMES, ApiError

if TYPE_CHECKING:
    from onnxguard.serve.service import Service

__all__ = [
    "CONTEXT_KEY",
    "ApiError",
    "RequestContext",
    "ServeState",
    "context_of",
    "describe_errors",
    "error_body",
    "error_response",
    "json_response",
    "outcome_for",
    "parse_json",
    "shown",
]


def outcome_for(status: int) -> str:
    return HTTP_OUTCOMES.get(status, "ok" if status < 400 else "error")


def error_body(message: str) -> bytes:
    # ASCII escapes: a message that quotes client input can never fail to encode (a lone
    # surrogate once turned a 400 into a 500).
    return json.dumps({"error": message}, ensure_ascii=True).encode("ascii")


def shown(value: object, limit: int = 64) -> str:
    """A client-controlled name as it may appear in an error message: bounded, printable ASCII,
    quoted (control characters, non-ASCII and lone surrogates escaped)."""
    text = value if isinstance(value, str) else repr(value)
    cut = text[:limit]
    escaped = cut.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return "'" + escaped.replace("'", "\\'") + "'" + ("..." if len(text) > limit else "")


@dataclass
class ServeState:
    """Server-wide state the request path reads: set by the server lifecycle."""

    draining: bool = False
    """SIGTERM received: in-flight requests finish, responses carry ``Connection: close``."""


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error_body(message), status_code=status, headers=headers, media_type="application/json"
    )


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Response(
        body.encode("utf-8"), status_code=status, headers=headers, media_type="application/json"
    )


@dataclass
class RequestContext:
    """Per-request facts the guard records (audit log, metrics); routes fill in the inputs."""

    request_id: str
    endpoint: str
    method: str
    client: str | None
    started: float
    key_id: str | None = None
    inputs: int | None = None
    inputs_sha256: str | None = None
    outcome: str | None = None
    tenant: str | None = None
    """Who the work is charged to (key id, or the client address without keys): rate limits,
    token budget and fair batching."""
    audit_in_full: bool = True
    """False for failed authentications counted in an ``auth_failures`` digest instead."""
    allowed_models: frozenset[str] | None = None
    """The models the request's key may use (None: every model)."""
    model: str | None = None
    version: str | None = None
    """The model version the request ran on (set when a route leases it)."""
    leases: list[Service] = field(default_factory=list)
    """Services leased by the route; the guard releases them when the response is done."""
    extra: dict[str, Any] = field(default_factory=dict)


CONTEXT_KEY = "onnxguard.context"


def context_of(scope: MutableMapping[str, Any]) -> RequestContext | None:
    ctx = scope.get(CONTEXT_KEY)
    return ctx if isinstance(ctx, RequestContext) else None


async def parse_json(request: Request, adapter: TypeAdapter[Any]) -> Any:
    """A JSON body validated in one pass (pydantic-core ``validate_json``): 415 unless JSON
    (``application/json`` or ``application/*+json``), 400 if malformed, 422 if off-schema;
    messages never echo the input."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ApiError(415, "Content-Type must be application/json")
    body = await request.body()
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        if any(e.get("type") == "json_invalid" for e in errors):
            raise ApiError(400, "request body is not valid JSON") from None
        raise ApiError(422, describe_errors(errors)) from None


def describe_errors(errors: Sequence[Any]) -> str:
    """A short message from pydantic errors: where and what, never the input itself."""
    parts = []
    for error in list(errors)[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
