"""Graph analyses of the ONNX scanner: structure limits, resource bounds, backdoor triggers.

Resource bounds come from ONNX shape inference with data propagation, so a ConstantOfShape,
Expand, Tile or Range whose size is computed from constants (however indirectly) is measured
before ONNX Runtime would allocate it.  The backdoor heuristic follows HiddenLayer's ShadowLogic:
a branch (If) or select (Where) whose condition comes from comparing a model input's *values*
with a constant; shape computations (Shape, Size) do not count, and a Where that only feeds
attention masking (Softmax or a fused attention operator) is the normal padding mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from onnxguard.scan._context import Sink
from onnxguard.scan.onnx_check import ModelWalk, iter_graph_inputs, node_label, walk_model

if TYPE_CHECKING:
    import onnx

_STANDARD = ("", "ai.onnx")
_SHAPE_OPS = frozenset({"Shape", "Size"})
_COMPARE_OPS = frozenset({"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"})
_RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
# Operators through which a comparison result keeps deciding a condition.
_CONDITION_OPS = frozenset(
    [
        "Not",
        "And",
        "Or",
        "Xor",
        "Cast",
        "CastLike",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Expand",
        "Identity",
        "Transpose",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "Concat",
        "Tile",
        "Split",
        "ReduceMax",
        "ReduceMin",
        "ReduceSum",
        "ReduceProd",
        "ReduceMean",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
        "ArgMax",
        "ArgMin",
        "Equal",
        "Greater",
        "Less",
        "GreaterOrEqual",
        "LessOrEqual",
        "Mul",
        "Add",
        "Sub",
        "Min",
        "Max",
        "Abs",
        "Neg",
        "Sign",
        "Clip",
        "Where",
        "Pad",
        "Compress",
    ]
)
_INDEX_OPS = frozenset({"Gather", "GatherElements", "GatherND"})
# A Where that only reaches these is attention masking, not output selection.
_MASK_SINKS = frozenset(
    [
        "Softmax",
        "LogSoftmax",
        "Attention",
        "MultiHeadAttention",
        "QAttention",
        "GroupQueryAttention",
        "PackedAttention",
        "PackedMultiHeadAttention",
        "DecoderAttention",
        "DecoderMaskedSelfAttention",
        "DecoderMaskedMultiHeadAttention",
        "LongformerAttention",
        "SparseAttention",
        "QOrderedAttention",
        "QOrderedLongformerAttention",
    ]
)


# --- structure -----------------------------------------------------------------------------------
def check_structure(model: onnx.ModelProto, walk: ModelWalk, sink: Sink, file: str) -> None:
    """Node count, nesting depth, recursive functions and loop bounds."""
    config = sink.config
    if len(walk.nodes) > config.max_nodes:
        sink.add(
            "ONNX029",
            file,
            "",
            f"{len(walk.nodes):,} nodes, above the limit of {config.max_nodes:,}",
        )
    if walk.max_depth > config.max_nesting_depth:
        sink.add(
            "ONNX027",
            file,
            walk.deepest,
            f"subgraphs nest deeper than the limit of {config.max_nesting_depth} levels; "
            "deeper levels were not checked",
        )
    _check_recursion(model, sink, file)
    constants = _constants(walk)
    for node, where, _depth in walk.nodes:
        if node.op_type == "Loop" and node.domain in _STANDARD:
            _check_loop(node, where, constants, sink, file)


def _check_recursion(model: onnx.ModelProto, sink: Sink, file: str) -> None:
    functions = {(f.domain, f.name): f for f in model.functions}
    calls: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for key, function in functions.items():
        inner = walk_model_nodes(function.node)
        calls[key] = {(n.domain, n.op_type) for n in inner} & functions.keys()
    state: dict[tuple[str, str], int] = {}  # 1 visiting, 2 done

    def visit(key: tuple[str, str], path: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
        state[key] = 1
        for callee in sorted(calls[key]):
            if state.get(callee) == 1:
                return [*path, key, callee]
            if callee not in state:
                cycle = visit(callee, [*path, key])
                if cycle:
                    return cycle
        state[key] = 2
        return None

    for key in sorted(functions):
        if key not in state:
            cycle = visit(key, [])
            if cycle:
                chain = " -> ".join(f"{d}::{n}" for d, n in cycle)
                sink.add("ONNX028", file, f"function {cycle[0][0]}::{cycle[0][1]}", chain)
                return


def walk_model_nodes(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes and, recursively, the nodes of their subgraph attributes."""
    out: list[onnx.NodeProto] = []
    stack = list(nodes)
    while stack:
        node = stack.pop()
        out.append(node)
        for attr in node.attribute:
            if attr.HasField("g"):
                stack.extend(attr.g.node)
            for graph in attr.graphs:
                stack.extend(graph.node)
    return out


def _constants(walk: ModelWalk) -> dict[str, onnx.TensorProto]:
    """Small constant tensors by name (initializers and Constant nodes, all scopes)."""
    out: dict[str, onnx.TensorProto] = {}
    for ref in walk.graphs:
        for tensor in ref.graph.initializer:
            if math.prod(tensor.dims) <= 16:
                out[tensor.name] = tensor
    for node, _where, _depth in walk.nodes:
        if node.op_type == "Constant" and node.domain in _STANDARD and node.output:
            for attr in node.attribute:
                if attr.name == "value" and math.prod(attr.t.dims) <= 16:
                    out[node.output[0]] = attr.t
    return out


def _scalar(name: str, constants: dict[str, onnx.TensorProto]) -> Any:
    tensor = constants.get(name)
    if tensor is None or tensor.data_location == 1:
        return None
    from onnx import numpy_helper

    try:
        values = numpy_helper.to_array(tensor).reshape(-1)
    except (ValueError, TypeError):
        return None
    return values[0].item() if values.size == 1 else None


def _check_loop(
    node: onnx.NodeProto,
    where: str,
    constants: dict[str, onnx.TensorProto],
    sink: Sink,
    file: str,
) -> None:
    limit = sink.config.max_loop_trip_count
    label = node_label(node, where)
    trip = node.input[0] if len(node.input) > 0 else ""
    cond = node.input[1] if len(node.input) > 1 else ""
    if trip:
        value = _scalar(trip, constants)
        if value is None:
            sink.add("ONNX026", file, label, f"trip count {trip!r} is computed at run time")
        elif value > limit:
            sink.add(
                "ONNX025", file, label, f"trip count {value:,} is above the limit of {limit:,}"
            )
        return
    cond_value = _scalar(cond, constants) if cond else True
    body = next((a.g for a in node.attribute if a.name == "body"), None)
    if cond_value and body is not None and _body_keeps_condition(body, constants):
        sink.add(
            "ONNX025",
            file,
            label,
            "loop has no trip count and its condition never becomes false: it never terminates",
        )
    else:
        sink.add(
            "ONNX026",
            file,
            label,
            "loop without a trip count runs until a condition computed at run time",
        )


def _body_keeps_condition(body: onnx.GraphProto, constants: dict[str, onnx.TensorProto]) -> bool:
    if len(body.input) < 2 or not body.output:
        return False
    cond_in, cond_out = body.input[1].name, body.output[0].name
    producers = {o: n for n in body.node for o in n.output}
    seen = 0
    while cond_out != cond_in and seen < 32:
        seen += 1
        node = producers.get(cond_out)
        if node is None:
            return bool(_scalar(cond_out, constants))
        if node.op_type == "Identity" and node.input:
            cond_out = node.input[0]
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    from onnx import numpy_helper

                    return bool(numpy_helper.to_array(attr.t).all().item())
        return False
    return bool(cond_out == cond_in)


# --- resource bounds -----------------------------------------------------------------------------
def check_resources(model: onnx.ModelProto, sink: Sink, file: str) -> None:
    """Measure every inferred tensor shape against ``max_tensor_elements``.

    Drops the model's large float weights (see ``_drop_weights``): run it after the tensor checks.
    """
    import onnx

    limit = sink.config.max_tensor_elements
    try:
        inferred = onnx.shape_inference.infer_shapes(
            _drop_weights(model), check_type=False, strict_mode=False, data_prop=True
        )
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError,
            RuntimeError) as exc:  # fmt: skip
        sink.add("ONNX033", file, "", f"{type(exc).__name__}: {str(exc)[:300]}")
        return
    walk = walk_model(inferred, sink.config.max_nesting_depth)
    reported: set[str] = set()
    for ref in walk.graphs:
        producers = {o: n for n in ref.graph.node for o in n.output}
        for value in [*ref.graph.value_info, *ref.graph.output]:
            elements = _static_elements(value)
            if elements is None or elements <= limit:
                continue
            node = producers.get(value.name)
            label = node_label(node, ref.where) if node else f"{ref.where}, value {value.name!r}"
            if label in reported:
                continue
            reported.add(label)
            sink.add(
                "ONNX024",
                file,
                label,
                f"output {value.name!r} has {elements:,} elements (limit {limit:,})",
            )


def _drop_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Clear large float weights *in place* (inference only needs their dims and integer data).

    Called after the tensor checks are done, on the scanner's own copy of the model: copying a
    90 MB model just to drop its weights would double the memory the scan needs.
    """
    for tensor in model.graph.initializer:
        if tensor.data_type in (1, 10, 11, 16) and len(tensor.raw_data) > 4096:
            tensor.ClearField("raw_data")
    return model


def _static_elements(value: onnx.ValueInfoProto) -> int | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim if d.HasField("dim_value")]
    return math.prod(dims) if dims else None


# --- backdoor heuristic --------------------------------------------------------------------------
def check_backdoor(graph: onnx.GraphProto, sink: Sink, file: str) -> None:
    """Report If/Where nodes switched by comparing model input values with constants."""
    taint = _Taint(graph)
    for node in graph.node:
        if node.domain in _STANDARD and node.op_type == "Constant":
            taint.constant_node(node)
            continue
        if node.domain in _STANDARD and node.op_type in _SHAPE_OPS:
            continue  # shapes are not values: the taint stops here
        taint.propagate(node)
        hit = taint.switch(node)
        if hit is not None:
            source_input, compare, constant = hit
            sink.add(
                "ONNX031",
                file,
                node_label(node, "main graph"),
                f"{node.op_type} is switched by comparing model input {source_input!r} with "
                f"constant {constant} (node {compare!r}); ShadowLogic-style backdoors use exactly "
                "this to change the output when a trigger token or value appears",
            )


class _Taint:
    """Data flow of one graph: which values come from model inputs, which are constants, and
    which carry the result of comparing an input with a constant (a trigger)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.const: set[str] = {t.name for t in graph.initializer}
        self.values: dict[str, onnx.TensorProto] = {
            t.name: t for t in graph.initializer if math.prod(t.dims) <= 8
        }
        self.origin: dict[str, str] = {name: name for name in iter_graph_inputs(graph)}
        self.trigger: dict[str, tuple[str, str, str]] = {}  # name -> (input, compare, constant)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def constant_node(self, node: onnx.NodeProto) -> None:
        self.const.update(node.output)
        for attr in node.attribute:
            if attr.name == "value" and node.output and math.prod(attr.t.dims) <= 8:
                self.values[node.output[0]] = attr.t

    def propagate(self, node: onnx.NodeProto) -> None:
        """Constants, input origins and triggers flow from a node's inputs to its outputs."""
        ins = [i for i in node.input if i]
        standard = node.domain in _STANDARD
        if ins and all(i in self.const for i in ins) and node.op_type not in _RANDOM_OPS:
            self.const.update(node.output)
        source = next((self.origin[i] for i in ins if i in self.origin), None)
        if source is not None and not (standard and node.op_type == "ConstantOfShape"):
            for out in node.output:
                self.origin[out] = source
        fired = _compare_trigger(node, self.origin, self.const, self.values) if standard else None
        if fired is None and standard and node.op_type in _CONDITION_OPS:
            relevant = ins[:1] if node.op_type in _INDEX_OPS else ins
            fired = next((self.trigger[i] for i in relevant if i in self.trigger), None)
        if fired is not None:
            for out in node.output:
                self.trigger[out] = fired

    def switch(self, node: onnx.NodeProto) -> tuple[str, str, str] | None:
        """The trigger an If/Where is switched by, unless it is a Where that only masks."""
        ins = [i for i in node.input if i]
        if node.domain not in _STANDARD or node.op_type not in ("If", "Where"):
            return None
        if not ins or ins[0] not in self.trigger:
            return None
        if node.op_type == "Where" and not _reaches_output(node, self.consumers, self.outputs):
            return None
        return self.trigger[ins[0]]


def _compare_trigger(
    node: onnx.NodeProto,
    origin: dict[str, str],
    const: set[str],
    values: dict[str, onnx.TensorProto],
) -> tuple[str, str, str] | None:
    if node.op_type not in _COMPARE_OPS or len(node.input) != 2:
        return None
    a, b = node.input
    for tainted, constant in ((a, b), (b, a)):
        if tainted in origin and constant in const:
            return (origin[tainted], node.name or node.output[0], _describe(constant, values))
    return None


def _describe(name: str, values: dict[str, onnx.TensorProto]) -> str:
    tensor = values.get(name)
    if tensor is None or tensor.data_location == 1:
        return repr(name)
    from onnx import numpy_helper

    try:
        shown = numpy_helper.to_array(tensor).reshape(-1).tolist()
    except (ValueError, TypeError):
        return repr(name)
    return f"{name!r} = {shown}"


def _reaches_output(
    start: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], outputs: set[str]
) -> bool:
    """Does a path from ``start`` reach a graph output without passing a masking sink?"""
    stack = list(start.output)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in outputs:
            return True
        for node in consumers.get(name, []):
            if node.op_type in _MASK_SINKS:
                continue
            if node.op_type in ("If", "Loop", "Scan"):
                return True  # opaque control flow: assume the worst
            stack.extend(node.output)
    return False
