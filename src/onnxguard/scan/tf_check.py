"""TensorFlow SavedModel directories: say what they are and check the graph's ops.

``saved_model.pb`` is a protobuf, so content sniffing first takes it for ONNX.  It is decoded
field by field here (no TensorFlow import): every ``NodeDef`` of every meta graph and of every
function in the graph library is checked for ops that run Python (``PyFunc``, ``EagerPyFunc``)
or read/write files (``ReadFile``, ``WriteFile``, ``MatchingFiles``, ``ImmutableConst``).  The
checkpoint files under ``variables/`` are raw tensor data, like ONNX external data.
"""

from __future__ import annotations

import re
from pathlib import Path

from onnxguard.scan._context import Sink, Unscannable
from onnxguard.scan._filetype import protobuf_fields

UNSAFE_OPS = frozenset(
    {
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "ReadFile",
        "WriteFile",
        "MatchingFiles",
        "ImmutableConst",
    }
)
SAVED_MODEL_NAMES = frozenset({"saved_model.pb"})
_VARIABLES = re.compile(r"variables/variables\.(index|data-\d{5}-of-\d{5})")
_METADATA_NAMES = frozenset({"fingerprint.pb", "keras_metadata.pb"})
_MAX_BYTES = 2 << 30


def is_saved_model_file(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1] in SAVED_MODEL_NAMES


def saved_model_data_kind(rel: str, roots: set[str]) -> str | None:
    """The label of a parsed SavedModel's data file (variables, fingerprint), else None."""
    for root in roots:
        prefix = f"{root}/" if root else ""
        if not rel.startswith(prefix):
            continue
        tail = rel[len(prefix) :]
        if _VARIABLES.fullmatch(tail):
            return "tensorflow-variables"
        if tail in _METADATA_NAMES:
            return "tensorflow-metadata"
    return None


def scan_saved_model(path: Path, size: int, sink: Sink, file: str) -> int:
    """Decode ``saved_model.pb`` and report unsafe ops; returns the number of nodes seen."""
    if size > _MAX_BYTES:
        raise Unscannable(f"SavedModel graph of {size:,} bytes")
    data = path.read_bytes()
    try:
        ops = list(_ops(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unscannable(f"neither ONNX nor a readable TensorFlow SavedModel ({exc})") from exc
    if not ops:
        raise Unscannable("protobuf file that is neither ONNX nor a TensorFlow SavedModel")
    sink.add("FILE011", file, "", f"TensorFlow SavedModel graph with {len(ops):,} node(s)")
    seen: set[str] = set()
    for where, name, op in ops:
        if op in UNSAFE_OPS and op not in seen:
            seen.add(op)
            count = sum(1 for _w, _n, o in ops if o == op)
            sink.add(
                "FILE012",
                file,
                f"{where}, node {name!r}",
                f"op {op} ({count} node(s)): runs Python or touches files when the graph runs",
            )
    return len(ops)


def _ops(data: bytes) -> list[tuple[str, str, str]]:
    """(where, node name, op) for every NodeDef in every meta graph and library function."""
    top = protobuf_fields(data)
    if not any(f == 2 and w == 2 for f, w, _v in top):
        return []
    out: list[tuple[str, str, str]] = []
    for index, meta in enumerate(_messages(top, 2)):
        for graph in _messages(protobuf_fields(meta), 2):
            fields = protobuf_fields(graph)
            where = f"meta graph {index}"
            out.extend((where, n, o) for n, o in _nodes(_messages(fields, 1)))
            for library in _messages(fields, 2):
                for function in _messages(protobuf_fields(library), 1):
                    ffields = protobuf_fields(function)
                    fname = _function_name(ffields)
                    nodes = _nodes(_messages(ffields, 3))
                    out.extend((f"{where}, function {fname!r}", n, o) for n, o in nodes)
    return out


def _messages(fields: list[tuple[int, int, bytes | int]], number: int) -> list[bytes]:
    return [v for f, w, v in fields if f == number and w == 2 and isinstance(v, bytes)]


def _nodes(raw_nodes: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for raw in raw_nodes:
        fields = protobuf_fields(raw)
        names = _messages(fields, 1)
        ops = _messages(fields, 2)
        if not ops:
            raise ValueError("NodeDef without an op")
        out.append(((names[0] if names else b"").decode("utf-8"), ops[0].decode("utf-8")))
    return out


def _function_name(fields: list[tuple[int, int, bytes | int]]) -> str:
    for signature in _messages(fields, 1):
        names = _messages(protobuf_fields(signature), 1)
        if names:
            return names[0].decode("utf-8", "replace")
    return "?"
