"""ONNX checks: everything in the file is walked — main graph, every subgraph, every function,
training graphs, attribute tensors — without loading external data or running anything.

Covered here: external-data locations and ranges, the operator allowlist per domain, tensors
whose fields or dims disagree, size limits, runtime-changing metadata and ``onnx.checker``.  The
graph analyses (shape-inference resource bounds, loops, nesting, backdoor triggers) live in
``_onnx_graph``.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onnxguard.scan._context import Sink, Unscannable
from onnxguard.scan._opsets import classify_op, is_known_domain

if TYPE_CHECKING:
    import onnx

# bits per element of each TensorProto data type (None: variable size, i.e. strings)
_DTYPE_BITS: dict[int, int | None] = {
    1: 32,
    2: 8,
    3: 8,
    4: 16,
    5: 16,
    6: 32,
    7: 64,
    8: None,
    9: 8,
    10: 16,
    11: 64,
    12: 32,
    13: 64,
    14: 64,
    15: 128,
    16: 16,
    17: 8,
    18: 8,
    19: 8,
    20: 8,
    21: 4,
    22: 4,
    23: 4,
    24: 8,
    25: 2,
    26: 2,
    27: 6,
    28: 6,
}
_INT32_TYPES = {2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28}
_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})
ORT_MEM_ADDR_TAG = "*/_ORT_MEM_ADDR_/*"
RUNTIME_METADATA_KEYS = frozenset({"ort_config"})


@dataclass
class GraphRef:
    """A graph and where it sits: ``main``, ``node 'loop' attr body``, ``function f``."""

    graph: onnx.GraphProto
    where: str
    depth: int


@dataclass
class ModelWalk:
    """Everything the checks iterate over, collected in one pass."""

    graphs: list[GraphRef] = field(default_factory=list)
    nodes: list[tuple[onnx.NodeProto, str, int]] = field(default_factory=list)
    tensors: list[tuple[onnx.TensorProto, str]] = field(default_factory=list)
    max_depth: int = 0
    deepest: str = "main graph"


def walk_model(model: onnx.ModelProto, max_depth: int) -> ModelWalk:
    """Collect graphs, nodes (with depth) and tensors, stopping at ``max_depth`` + 1 levels."""
    walk = ModelWalk()
    stack: list[GraphRef] = [GraphRef(model.graph, "main graph", 0)]
    for i, info in enumerate(model.training_info):
        stack.append(GraphRef(info.initialization, f"training_info[{i}].initialization", 1))
        stack.append(GraphRef(info.algorithm, f"training_info[{i}].algorithm", 1))
    for function in model.functions:
        where = f"function {function.domain}::{function.name}"
        for node in function.node:
            _collect_node(node, where, 1, walk, stack)
    while stack:
        ref = stack.pop()
        walk.graphs.append(ref)
        if ref.depth > walk.max_depth:
            walk.max_depth, walk.deepest = ref.depth, ref.where
        if ref.depth > max_depth:
            continue  # reported by the caller; do not descend further
        for tensor in ref.graph.initializer:
            walk.tensors.append((tensor, f"{ref.where}, initializer {tensor.name!r}"))
        for sparse in ref.graph.sparse_initializer:
            name = sparse.values.name
            walk.tensors.append((sparse.values, f"{ref.where}, sparse initializer {name!r}"))
            walk.tensors.append((sparse.indices, f"{ref.where}, sparse indices {name!r}"))
        for node in ref.graph.node:
            _collect_node(node, ref.where, ref.depth, walk, stack)
    return walk


def _collect_node(
    node: onnx.NodeProto, where: str, depth: int, walk: ModelWalk, stack: list[GraphRef]
) -> None:
    walk.nodes.append((node, where, depth))
    label = node_label(node, where)
    for attr in node.attribute:
        at = f"{label} attribute {attr.name}"
        if attr.HasField("t"):
            walk.tensors.append((attr.t, at))
        for i, tensor in enumerate(attr.tensors):
            walk.tensors.append((tensor, f"{at}[{i}]"))
        for sparse in [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []:
            walk.tensors.append((sparse.values, at))
            walk.tensors.append((sparse.indices, at))
        for sparse in attr.sparse_tensors:
            walk.tensors.append((sparse.values, at))
            walk.tensors.append((sparse.indices, at))
        if attr.HasField("g"):
            stack.append(GraphRef(attr.g, at, depth + 1))
        for i, graph in enumerate(attr.graphs):
            stack.append(GraphRef(graph, f"{at}[{i}]", depth + 1))


def node_label(node: onnx.NodeProto, where: str) -> str:
    name = node.name or (node.output[0] if node.output else "?")
    return f"{where}, node {name!r} ({node.domain + '::' if node.domain else ''}{node.op_type})"


# --- entry point ---------------------------------------------------------------------------------
def scan_onnx(path: Path, size: int, sink: Sink, file: str, model_dir: Path) -> set[Path]:
    """Check one ONNX file; returns the external data files it references (validated ones)."""
    import onnx
    from google.protobuf.message import DecodeError

    config = sink.config
    if size > config.max_onnx_file_bytes:
        raise Unscannable(
            f"{size:,} bytes, above max_onnx_file_bytes ({config.max_onnx_file_bytes:,})"
        )
    try:
        with open(path, "rb") as fh:
            model = onnx.load_model_from_string(fh.read())
    except (DecodeError, ValueError, RuntimeError, RecursionError, OSError) as exc:
        raise Unscannable(f"not a parseable ONNX model: {exc}") from exc
    if not model.opset_import or not (model.ir_version or model.graph.node):
        raise Unscannable("protobuf file that is not an ONNX model (no opset import or graph)")

    walk = walk_model(model, config.max_nesting_depth)
    _check_ops(model, walk, sink, file)
    ext_files, ext_problem = _check_tensors(walk, sink, file, model_dir)
    _check_metadata(model, sink, file)
    if model.training_info:
        sink.add(
            "ONNX034",
            file,
            "training_info",
            f"{len(model.training_info)} training graph(s) travel with the model",
        )

    from onnxguard.scan import _onnx_graph

    _onnx_graph.check_structure(model, walk, sink, file)
    _onnx_graph.check_resources(model, sink, file)
    _onnx_graph.check_backdoor(model.graph, sink, file)
    if not ext_problem:  # the checker would stat escaping locations itself
        _run_checker(path, sink, file)
    return ext_files


# --- operators -----------------------------------------------------------------------------------
def _check_ops(model: onnx.ModelProto, walk: ModelWalk, sink: Sink, file: str) -> None:
    local = {(f.domain, f.name) for f in model.functions}
    used_domains: set[str] = set()
    seen: set[tuple[str, str, str]] = set()
    for node, where, _depth in walk.nodes:
        domain = "" if node.domain == "ai.onnx" else node.domain
        used_domains.add(domain)
        if (node.domain, node.op_type) in local:
            continue
        rule = classify_op(domain, node.op_type)
        if rule is None:
            continue
        key = (rule, domain, node.op_type)
        if key in seen:
            continue  # one finding per operator kind; the location names the first node
        seen.add(key)
        count = sum(
            1 for n, _, _ in walk.nodes if n.domain == node.domain and n.op_type == node.op_type
        )
        shown = f"{domain}::{node.op_type}" if domain else node.op_type
        sink.add(rule, file, node_label(node, where), f"operator {shown} ({count} node(s))")
    local_domains = {d for d, _ in local}
    unused = sorted(
        f"{opset.domain} v{opset.version}"
        for opset in model.opset_import
        if opset.domain not in used_domains
        and not is_known_domain(opset.domain)
        and opset.domain not in local_domains
    )
    if unused:
        sink.add(
            "ONNX015", file, "opset_import", f"imports {', '.join(unused)} but no node uses them"
        )


# --- tensors and external data -------------------------------------------------------------------
def _field_counts(t: onnx.TensorProto) -> dict[str, int]:
    counts = {
        "float_data": len(t.float_data),
        "int32_data": len(t.int32_data),
        "string_data": len(t.string_data),
        "int64_data": len(t.int64_data),
        "double_data": len(t.double_data),
        "uint64_data": len(t.uint64_data),
        "raw_data": len(t.raw_data),
    }
    if t.data_location == 1 or len(t.external_data):
        counts["external_data"] = max(1, len(t.external_data))
    return {k: v for k, v in counts.items() if v}


def tensor_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims need (None for strings or unknown types)."""
    bits = _DTYPE_BITS.get(t.data_type)
    if bits is None:
        return None
    elements: int = math.prod(t.dims)
    return (elements * bits + 7) // 8


def _expected_typed(t: onnx.TensorProto, fieldname: str, n: int) -> set[int]:
    dtype = t.data_type
    bits = _DTYPE_BITS.get(dtype) or 0
    if fieldname == "float_data":
        return {n} if dtype == 1 else {2 * n} if dtype == 14 else set()
    if fieldname == "int32_data" and dtype in _INT32_TYPES:
        return {n, (n * bits + 31) // 32, (n * bits + 7) // 8} if bits < 8 else {n}
    if fieldname == "int64_data":
        return {n} if dtype == 7 else set()
    if fieldname == "double_data":
        return {n} if dtype == 11 else {2 * n} if dtype == 15 else set()
    if fieldname == "uint64_data":
        return {n} if dtype in (12, 13) else set()
    if fieldname == "string_data":
        return {n} if dtype == 8 else set()
    return set()


def _check_tensors(
    walk: ModelWalk, sink: Sink, file: str, model_dir: Path
) -> tuple[set[Path], bool]:
    config = sink.config
    total = 0
    ext_files: set[Path] = set()
    ext_problem = False
    for tensor, where in walk.tensors:
        if any(d < 0 for d in tensor.dims):
            sink.add("ONNX021", file, where, f"negative dimension in dims {list(tensor.dims)}")
            continue
        n = math.prod(tensor.dims)
        if n > config.max_tensor_elements:
            sink.add(
                "ONNX022",
                file,
                where,
                f"{n:,} elements, above the limit of {config.max_tensor_elements:,}",
            )
            continue
        nbytes = tensor_nbytes(tensor)
        total += nbytes or 0
        fields = _field_counts(tensor)
        if len(fields) > 1:
            sink.add(
                "ONNX020",
                file,
                where,
                f"data in {', '.join(sorted(fields))}: readers that "
                "pick different fields see different weights",
            )
        if not fields:
            if n:
                sink.add(
                    "ONNX021",
                    file,
                    where,
                    f"dims {list(tensor.dims)} declare {n:,} elements but the tensor holds no data",
                )
            continue
        if "external_data" in fields:
            found, problem = _check_external(tensor, nbytes, sink, file, where, model_dir)
            ext_problem |= problem
            if found is not None:
                ext_files.add(found)
            continue
        for fieldname, count in fields.items():
            if fieldname == "raw_data":
                ok = nbytes is not None and count == nbytes
                want = f"{nbytes} bytes"
            else:
                expected = _expected_typed(tensor, fieldname, n)
                ok = count in expected
                want = " or ".join(str(e) for e in sorted(expected)) or "no values there"
            if not ok:
                sink.add(
                    "ONNX021",
                    file,
                    where,
                    f"dims {list(tensor.dims)} (type "
                    f"{tensor.data_type}) need {want}, {fieldname} holds {count}",
                )
    if total > config.max_total_bytes:
        sink.add(
            "ONNX023",
            file,
            "",
            f"tensors declare {total:,} bytes, above the limit of {config.max_total_bytes:,}",
        )
    return ext_files, ext_problem


def _check_external(
    tensor: onnx.TensorProto,
    nbytes: int | None,
    sink: Sink,
    file: str,
    where: str,
    model_dir: Path,
) -> tuple[Path | None, bool]:
    """Validate one tensor's external_data; returns (data file, whether a problem was found)."""
    keys = Counter(e.key for e in tensor.external_data)
    info = {e.key: e.value for e in tensor.external_data}
    odd = sorted(k for k in keys if k not in _EXTERNAL_KEYS or keys[k] > 1)
    if odd:
        sink.add("ONNX007", file, where, f"external_data keys {odd} are unknown or repeated")
    if tensor.data_location != 1:
        sink.add(
            "ONNX020",
            file,
            where,
            "external_data entries on a tensor whose data_location is not EXTERNAL",
        )
    location = info.get("location", "")
    if location == ORT_MEM_ADDR_TAG:
        sink.add(
            "ONNX008",
            file,
            where,
            f"location {location!r}: ONNX Runtime reads offset "
            f"{info.get('offset', '0')!r} as a memory address",
        )
        return None, True
    data_file = resolve_external(location, model_dir, sink, file, where)
    if data_file is None:
        return None, True
    try:
        offset = _parse_uint(info.get("offset", "0"))
        length = _parse_uint(info["length"]) if "length" in info else None
    except ValueError as exc:
        sink.add("ONNX006", file, where, str(exc))
        return data_file, True
    size = data_file.stat().st_size
    need = length if length is not None else nbytes
    problem = False
    if length is not None and nbytes is not None and length != nbytes:
        sink.add(
            "ONNX006",
            file,
            where,
            f"length {length:,} but dims {list(tensor.dims)} need {nbytes:,} bytes",
        )
        problem = True
    if need is not None and offset + need > size:
        sink.add(
            "ONNX006",
            file,
            where,
            f"reads bytes [{offset:,}, {offset + need:,}) of {location!r}, which has {size:,}",
        )
        problem = True
    return data_file, problem


def _parse_uint(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,20}", text):
        raise ValueError(f"external_data value {text!r} is not a non-negative integer")
    return int(text)


def resolve_external(
    location: str, model_dir: Path, sink: Sink, file: str, where: str
) -> Path | None:
    """Resolve a location strictly inside ``model_dir``; report and return None otherwise."""
    norm = location.replace("\\", "/")
    if not location:
        sink.add("ONNX005", file, where, "external data without a location")
        return None
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or "\x00" in norm:
        sink.add("ONNX001", file, where, f"location {location!r} is absolute")
        return None
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if not parts:
        sink.add("ONNX002", file, where, f"location {location!r} names the model directory")
        return None
    current = _walk_location(location, parts, model_dir, sink, file, where)
    if current is None:
        return None
    try:
        st = current.lstat()
    except OSError:
        sink.add("ONNX005", file, where, f"external data file {location!r} does not exist")
        return None
    import stat as stat_mod

    if not stat_mod.S_ISREG(st.st_mode):
        sink.add("ONNX005", file, where, f"external data {location!r} is not a regular file")
        return None
    if st.st_nlink > 1:
        sink.add(
            "ONNX004", file, where, f"external data file {location!r} has {st.st_nlink} hard links"
        )
        return None
    real, base = os.path.realpath(current), os.path.realpath(model_dir)
    if os.path.commonpath([real, base]) != base:
        sink.add(
            "ONNX002", file, where, f"location {location!r} resolves outside the model directory"
        )
        return None
    return current


def _walk_location(
    location: str, parts: list[str], model_dir: Path, sink: Sink, file: str, where: str
) -> Path | None:
    """Follow the location component by component as the kernel will when the runtime opens it.

    ``sub/../weights.bin`` stays inside (``sub`` must be a real directory: ``..`` of a link
    would lead to the link target's parent); a ``..`` above the model directory escapes; no
    component may be a link.
    """
    current, depth = model_dir, 0
    for part in parts:
        if part == "..":
            if depth == 0:
                sink.add(
                    "ONNX002", file, where, f"location {location!r} leaves the model directory"
                )
                return None
            if not current.is_dir():
                sink.add(
                    "ONNX005",
                    file,
                    where,
                    f"location {location!r}: {current.name!r} is not a "
                    "directory, so the path cannot be opened",
                )
                return None
            current, depth = current.parent, depth - 1
            continue
        current, depth = current / part, depth + 1
        if current.is_symlink():
            sink.add(
                "ONNX003",
                file,
                where,
                f"location {location!r} goes through the link "
                f"{current.name!r} -> {os.readlink(current)!r}",
            )
            return None
    return current


# --- metadata and checker ------------------------------------------------------------------------
def _check_metadata(model: onnx.ModelProto, sink: Sink, file: str) -> None:
    for prop in model.metadata_props:
        if prop.key in RUNTIME_METADATA_KEYS:
            preview = prop.value[:120] + ("…" if len(prop.value) > 120 else "")
            sink.add(
                "ONNX030",
                file,
                f"metadata_props {prop.key!r}",
                f"metadata {prop.key!r} = "
                f"{preview!r} configures the ONNX Runtime session from inside the model "
                "(ORT_LOAD_CONFIG_FROM_MODEL=1)",
            )


def _run_checker(path: Path, sink: Sink, file: str) -> None:
    """``onnx.checker`` full check, from the path: external data is resolved next to the model
    and the model is parsed in C++ rather than re-serialised from Python."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sink.add("ONNX032", file, "", first[:400])
    except (ValueError, RuntimeError) as exc:  # protobuf size limits and the like
        sink.add("ONNX032", file, "", f"{type(exc).__name__}: {str(exc)[:400]}")


def iter_graph_inputs(graph: onnx.GraphProto) -> Iterator[str]:
    initializers = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name not in initializers:
            yield value.name
