"""Open Inference Protocol (KServe V2) over HTTP, with Triton's binary tensor extension.

The model takes one input, ``text`` (BYTES, shape ``[N]`` or ``[N, 1]``), and tokenizes it in the
server, so the unmodified ``tritonclient.http`` client works::

    text = InferInput("text", [2], "BYTES"); text.set_data_from_numpy(np.array([b"a", b"b"],
                                                                        dtype=object))
    client.infer(MODEL, [text], headers={"Authorization": f"Bearer {KEY}"})

Outputs by task: text classification: the model's ``logits`` (FP32 ``[N, labels]``),
``probabilities`` (FP32) and ``label`` (BYTES); feature extraction: the model's embedding output
(FP32 ``[N, dim]``); token classification: ``tokens`` (BYTES ``[N]``, one JSON document per
text).  ``classification: K`` on ``logits``/``probabilities`` returns Triton's top-K
``"value:index:label"`` strings.

Binary tensor extension: a body may be a JSON header of ``Inference-Header-Content-Length`` bytes
followed by the raw tensors (BYTES elements are a 4-byte little-endian length and the bytes).
Outputs come back binary when asked (``binary_data`` per output, or ``binary_data_output`` for
all); the response then carries the same header.  Every parse error is a 400 with
``{"error": ...}``; nothing here can raise past the route.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from onnxguard import __version__
from onnxguard.serve._http import ApiError, context_of, error_response, json_response, shown
from onnxguard.serve.models import ModelSet
from onnxguard.serve.service import Inference, Service
from onnxguard.tasks import Task

if TYPE_CHECKING:
    from onnxguard.runtime import Engine

INPUT_NAME = "text"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
_HEADER_LENGTH = "inference-header-content-length"
_DIGITS = re.compile(r"[0-9]{1,15}")
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_IGNORED_PARAMETERS = {"priority", "timeout", "binary_data_output"}
_INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
_OUTPUT_KEYS = {"name", "parameters"}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    texts: list[str]
    outputs: list[RequestedOutput] | None
    """None: every output, binary when ``binary_default``."""
    binary_default: bool


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    value: Any
    """np.ndarray for FP32, list[bytes] for BYTES."""


# --- request parsing -----------------------------------------------------------------------------
def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """A V2 inference request (JSON, or JSON header + binary tensors) → texts and outputs."""
    if header_length is not None:
        if not _DIGITS.fullmatch(header_length.strip()):
            raise _bad("Inference-Header-Content-Length must be a byte count")
        split = int(header_length)
        if split > len(body):
            raise _bad("Inference-Header-Content-Length is larger than the body")
        head, binary = body[:split], body[split:]
    else:
        head, binary = body, b""
    try:
        document = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        raise _bad("request body is not valid JSON") from None
    except RecursionError:
        raise _bad("request body is nested too deeply") from None
    if not isinstance(document, dict):
        raise _bad("request must be a JSON object")
    unknown = set(document) - _REQUEST_KEYS
    if unknown:
        raise _bad(f"unknown request field(s): {_names(unknown)}")
    request_id = document.get("id")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > 256 or not _is_text(request_id)
    ):
        raise _bad("id must be a string of at most 256 characters (valid Unicode)")
    parameters = _parameters(document.get("parameters"), "request")
    unsupported = set(parameters) - _IGNORED_PARAMETERS
    if unsupported:
        raise _bad(f"unsupported request parameter(s): {_names(unsupported)}")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise _bad("binary_data_output must be a boolean")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise _bad(f"inputs must be a list with exactly one tensor, '{INPUT_NAME}'")
    texts, used = _parse_input(inputs[0], binary)
    if used != len(binary):
        raise _bad("binary data after the input tensors does not belong to any input")
    outputs = _parse_outputs(document.get("outputs"))
    return InferRequest(request_id, texts, outputs, binary_default)


def _names(names: set[str]) -> str:
    """Client-chosen names for an error message: at most five, each bounded and escaped."""
    listed = [shown(name, 32) for name in sorted(names)[:5]]
    return ", ".join(listed) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _is_text(value: str) -> bool:
    """Valid Unicode (JSON can carry lone surrogates, which cannot be encoded back)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where} parameters must be an object")
    return value


def _parse_input(tensor: Any, binary: bytes) -> tuple[list[str], int]:
    if not isinstance(tensor, dict):
        raise _bad("each input must be an object")
    unknown = set(tensor) - _INPUT_KEYS
    if unknown:
        raise _bad(f"unknown input field(s): {_names(unknown)}")
    if tensor.get("name") != INPUT_NAME:
        raise _bad(f"the model has one input, '{INPUT_NAME}'")
    if tensor.get("datatype") != "BYTES":
        raise _bad(f"input '{INPUT_NAME}' must have datatype BYTES")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _bad(f"input '{INPUT_NAME}' shape must be [N] or [N, 1]")
    count = shape[0] * (shape[1] if len(shape) == 2 else 1)
    parameters = _parameters(tensor.get("parameters"), "input")
    if any(key.startswith("shared_memory") for key in parameters):
        raise _bad("shared memory is not supported")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise _bad(f"input '{INPUT_NAME}' has both data and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise _bad("binary_data_size does not match the binary data sent")
        items = _deserialize_bytes(binary[:size])
        try:
            texts = [item.decode("utf-8") for item in items]
        except UnicodeDecodeError:
            raise _bad(f"input '{INPUT_NAME}' holds bytes that are not UTF-8 text") from None
        used = size
    else:
        texts = _flatten_strings(tensor.get("data"))
        used = 0
    if len(texts) != count:
        raise _bad(f"input '{INPUT_NAME}' has {len(texts)} elements but its shape says {count}")
    return texts, used


def _flatten_strings(data: Any) -> list[str]:
    if not isinstance(data, list):
        raise _bad(f"input '{INPUT_NAME}' needs data (a list of strings) or binary data")
    flat: list[str] = []
    for item in data:
        if isinstance(item, list):
            if not all(isinstance(inner, str) for inner in item):
                raise _bad(f"input '{INPUT_NAME}' data must hold strings")
            flat.extend(item)
        elif isinstance(item, str):
            flat.append(item)
        else:
            raise _bad(f"input '{INPUT_NAME}' data must hold strings")
    return flat


def _parse_outputs(outputs: Any) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or len(outputs) > 16:
        raise _bad("outputs must be a list of at most 16 entries")
    result: list[RequestedOutput] = []
    for entry in outputs:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or set(entry) - _OUTPUT_KEYS
        ):
            raise _bad("each output must be an object with a name (and parameters)")
        parameters = _parameters(entry.get("parameters"), "output")
        if any(key.startswith("shared_memory") for key in parameters):
            raise _bad("shared memory is not supported")
        unknown = set(parameters) - {"binary_data", "classification"}
        if unknown:
            raise _bad(f"unsupported output parameter(s): {_names(unknown)}")
        binary = parameters.get("binary_data", False)
        classes = parameters.get("classification", 0)
        if not isinstance(binary, bool):
            raise _bad("binary_data must be a boolean")
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise _bad("classification must be a non-negative integer")
        result.append(RequestedOutput(entry["name"], binary, classes))
    return result


def _deserialize_bytes(buffer: bytes) -> list[bytes]:
    """Triton's BYTES serialization: (uint32 little-endian length, bytes)*."""
    items: list[bytes] = []
    offset = 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise _bad("binary BYTES tensor is truncated")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise _bad("binary BYTES tensor is truncated")
        items.append(buffer[offset : offset + length])
        offset += length
    return items


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# --- outputs -------------------------------------------------------------------------------------
def output_specs(engine: Engine) -> list[TensorSpec]:
    """The outputs the model offers, by task."""
    if engine.task is Task.TEXT_CLASSIFICATION:
        labels = len(engine.labels) or -1
        return [
            TensorSpec(engine.output_name, "FP32", [-1, labels]),
            TensorSpec("probabilities", "FP32", [-1, labels]),
            TensorSpec("label", "BYTES", [-1]),
        ]
    if engine.task is Task.FEATURE_EXTRACTION:
        return [TensorSpec(engine.output_name, "FP32", [-1, _embedding_dim(engine)])]
    if engine.task is Task.RERANKING:  # single texts scored alone: the raw relevance logits
        return [TensorSpec(engine.output_name, "FP32", [-1, len(engine.labels) or -1])]
    if engine.task is Task.QUESTION_ANSWERING:
        return [TensorSpec(name, "FP32", [-1, -1]) for name in engine.manifest.outputs]
    return [TensorSpec("tokens", "BYTES", [-1])]


def _embedding_dim(engine: Engine) -> int:
    try:
        dim = engine.session.get_outputs()[0].shape[-1]
    except (AttributeError, IndexError):
        return -1
    return dim if isinstance(dim, int) else -1


def build_outputs(
    engine: Engine, inference: Inference, wanted: list[RequestedOutput] | None
) -> list[tuple[OutputTensor, bool]]:
    """Compute the requested outputs; (tensor, binary) pairs in the order asked for."""
    specs = {spec.name: spec for spec in output_specs(engine)}
    requested = (
        wanted if wanted is not None else [RequestedOutput(name, binary=False) for name in specs]
    )
    for item in requested:
        if item.name not in specs:
            raise _bad(f"unknown output {shown(item.name)}; the model offers {', '.join(specs)}")
    count = len(inference.rows)
    values: dict[str, Any] = {}
    if engine.task is Task.TOKEN_CLASSIFICATION:
        docs = [
            engine.postprocess_tokens(row, enc)
            for row, enc in zip(inference.rows, inference.encodings, strict=True)
        ]
        values["tokens"] = [json.dumps(d, ensure_ascii=False).encode("utf-8") for d in docs]
    else:
        stacked = np.stack(inference.rows).astype(np.float32, copy=False)
        values[engine.output_name] = stacked
        if engine.task is Task.TEXT_CLASSIFICATION:
            from onnxguard.runtime import softmax

            probabilities = softmax(stacked.astype(np.float64)).astype(np.float32)
            values["probabilities"] = probabilities
            values["label"] = [
                engine.label_of(int(i)).encode("utf-8") for i in probabilities.argmax(axis=-1)
            ]
    result: list[tuple[OutputTensor, bool]] = []
    for item in requested:
        value = values[item.name]
        if item.classification:
            if not isinstance(value, np.ndarray):
                raise _bad(
                    f"classification is only available on FP32 outputs, not {shown(item.name)}"
                )
            tensor = _top_k(engine, item.name, value, item.classification)
        elif isinstance(value, np.ndarray):
            tensor = OutputTensor(item.name, "FP32", list(value.shape), value)
        else:
            tensor = OutputTensor(item.name, "BYTES", [count], value)
        result.append((tensor, item.binary))
    return result


def _top_k(engine: Engine, name: str, values: np.ndarray, k: int) -> OutputTensor:
    k = min(k, values.shape[-1])
    order = np.argsort(-values, axis=-1, kind="stable")[:, :k]
    items = [
        f"{values[r, i]:f}:{i}:{engine.label_of(int(i))}".encode()
        for r in range(values.shape[0])
        for i in order[r]
    ]
    return OutputTensor(name, "BYTES", [values.shape[0], k], items)


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[OutputTensor, bool]],
    binary_default: bool,
    explicit: bool,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary tensors follow it."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, binary_asked in outputs:
        binary = binary_asked if explicit else binary_default
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary:
            blob = (
                tensor.value.astype("<f4").tobytes()
                if tensor.datatype == "FP32"
                else serialize_bytes(tensor.value)
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif tensor.datatype == "FP32":
            entry["data"] = tensor.value.ravel().tolist()
        else:
            entry["data"] = [item.decode("utf-8") for item in tensor.value]
        entries.append(entry)
    document: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": entries,
    }
    if request_id is not None:
        document["id"] = request_id
    head = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


# --- routes --------------------------------------------------------------------------------------
_STRING_OR_NULL = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_INFER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["inputs"],
    "properties": {
        "id": _STRING_OR_NULL,
        "parameters": {"type": "object"},
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string", "description": f"Always '{INPUT_NAME}'."},
                    "shape": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "description": "[N] or [N, 1].",
                    },
                    "datatype": {"type": "string", "description": "Always 'BYTES'."},
                    "data": {"type": "array", "items": {"type": "string"}},
                    "parameters": {"type": "object"},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _INFER_SCHEMA}}},
}


_V2_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for status, text in (
        (400, "Malformed request (JSON, tensors, parameters)"),
        (401, "Missing or invalid API key"),
        (403, "The key lacks the scope"),
        (404, "Unknown model or version"),
        (413, "Body or input over a limit"),
        (415, "Unsupported Content-Encoding"),
        (429, "Rate limit or token budget exceeded"),
        (503, "Not ready, overloaded or shutting down"),
        (504, "Timed out in the queue"),
    )
}


class _V2Routes:
    """The V2 handlers, bound to the model set (one small method per route)."""

    def __init__(self, models: ModelSet, is_ready: Callable[[], bool]) -> None:
        self.models = models
        self.is_ready = is_ready

    def lease(self, request: Request, model_name: str, version: str | None) -> Service:
        """The named model version (404 unknown, 503 not ready), leased for this request."""
        service = self.models.lease(context_of(request.scope), model_name, version)
        service.engine  # noqa: B018 (503 until it is ready)
        return service

    async def server_metadata(self) -> Response:
        return json_response(
            {"name": "onnxguard", "version": __version__, "extensions": EXTENSIONS}
        )

    async def live(self) -> Response:
        return json_response({"live": True})

    async def ready(self) -> Response:
        if self.is_ready():
            return json_response({"ready": True})
        return error_response(503, "not ready", {"Retry-After": "1"})

    def metadata(self, request: Request, model_name: str, version: str | None) -> Response:
        service = self.lease(request, model_name, version)
        engine = service.engine
        versions = [str(v) for v in sorted(self.models.versions_of(model_name))]
        return json_response(
            {
                "name": model_name,
                "versions": versions if version is None else [version],
                "platform": PLATFORM,
                "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [spec.__dict__ for spec in output_specs(engine)],
            }
        )

    def model_ready(self, request: Request, model_name: str, version: str | None) -> Response:
        self.lease(request, model_name, version)
        return json_response({"name": model_name, "ready": True})

    def config(self, request: Request, model_name: str, version: str | None) -> Response:
        service = self.lease(request, model_name, version)
        return json_response(triton_config(service, service.engine))

    async def infer(self, request: Request, model_name: str, version: str | None) -> Response:
        service = self.lease(request, model_name, version)
        engine = service.engine
        body = await request.body()
        parsed = parse_infer_request(body, request.headers.get(_HEADER_LENGTH))
        if engine.task is Task.QUESTION_ANSWERING:  # a V2 text tensor has no question/context
            raise _bad("this model answers questions: use POST /v1/answer")
        inference = await service.infer(parsed.texts, context_of(request.scope))
        outputs = build_outputs(engine, inference, parsed.outputs)
        payload, header_length = encode_response(
            model_name,
            service.version,
            parsed.id,
            outputs,
            parsed.binary_default,
            explicit=parsed.outputs is not None,
        )
        if header_length is None:
            return Response(payload, media_type="application/json")
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )

    # Each model route twice: without and with /versions/{model_version} (tritonclient uses both).
    async def get_metadata(self, request: Request, model_name: str) -> Response:
        return self.metadata(request, model_name, None)

    async def get_metadata_v(
        self, request: Request, model_name: str, model_version: str
    ) -> Response:
        return self.metadata(request, model_name, model_version)

    async def get_ready(self, request: Request, model_name: str) -> Response:
        return self.model_ready(request, model_name, None)

    async def get_ready_v(self, request: Request, model_name: str, model_version: str) -> Response:
        return self.model_ready(request, model_name, model_version)

    async def get_config(self, request: Request, model_name: str) -> Response:
        return self.config(request, model_name, None)

    async def get_config_v(
        self, request: Request, model_name: str, model_version: str
    ) -> Response:
        return self.config(request, model_name, model_version)

    async def post_infer(self, request: Request, model_name: str) -> Response:
        return await self.infer(request, model_name, None)

    async def post_infer_v(self, request: Request, model_name: str, model_version: str) -> Response:
        return await self.infer(request, model_name, model_version)


def triton_config(service: Service, engine: Engine) -> dict[str, Any]:
    """The model's configuration in Triton's format."""
    settings = service.config.batching
    return {
        "name": service.model_name,
        "version": service.version,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": 0,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_STRING", "dims": [-1]}],
        "output": [
            {"name": spec.name, "data_type": _triton_type(spec.datatype), "dims": spec.shape}
            for spec in output_specs(engine)
        ],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(settings.max_wait_ms * 1000),
            "preferred_batch_size": [settings.max_batch],
        },
        "parameters": {
            "task": {"string_value": engine.task.value},
            "max_length": {"string_value": str(engine.max_length)},
            "bundle_digest": {"string_value": engine.digest},
        },
    }


def make_router(models: ModelSet, is_ready: Callable[[], bool]) -> APIRouter:
    """The V2 routes, bound to the model set; ``is_ready`` answers server readiness."""
    routes = _V2Routes(models, is_ready)
    router = APIRouter(tags=["Open Inference Protocol (V2)"])
    router.add_api_route(
        "/v2",
        routes.server_metadata,
        methods=["GET"],
        summary="Server metadata",
        responses=_V2_ERRORS,
    )
    router.add_api_route(
        "/v2/health/live", routes.live, methods=["GET"], summary="Liveness (no key needed)"
    )
    router.add_api_route(
        "/v2/health/ready",
        routes.ready,
        methods=["GET"],
        summary="Readiness: verified, warmed up, audit log writable (no key needed)",
        responses={503: _V2_ERRORS[503]},
    )
    _add_model_routes(router, routes)
    return router


def _add_model_routes(router: APIRouter, routes: _V2Routes) -> None:
    base = "/v2/models/{model_name}"
    versioned = base + "/versions/{model_version}"
    for prefix, handlers in (
        (base, (routes.get_metadata, routes.get_ready, routes.get_config, routes.post_infer)),
        (
            versioned,
            (routes.get_metadata_v, routes.get_ready_v, routes.get_config_v, routes.post_infer_v),
        ),
    ):
        meta, rdy, cfg, inf = handlers
        common: dict[str, Any] = {"responses": _V2_ERRORS}
        router.add_api_route(prefix, meta, methods=["GET"], summary="Model metadata", **common)
        router.add_api_route(
            prefix + "/ready", rdy, methods=["GET"], summary="Model readiness", **common
        )
        router.add_api_route(
            prefix + "/config",
            cfg,
            methods=["GET"],
            summary="Model configuration (Triton format)",
            **common,
        )
        router.add_api_route(
            prefix + "/infer",
            inf,
            methods=["POST"],
            summary="Inference",
            openapi_extra=_INFER_OPENAPI,
            **common,
        )


def _triton_type(datatype: str) -> str:
    return {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}[datatype]
