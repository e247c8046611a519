"""The graph's FLOP count, for the roofline: matrix multiplies are >95% of a BERT's work.

Counted from the ONNX graph itself (not from a formula for one architecture): every node that
multiplies by a constant weight matrix (MatMul, Gemm, their int8 and QDQ forms, fused Attention's
QKV projection) costs 2·K·N FLOPs per row of its input; rows are tokens when the input is
[batch, sequence, K] and sequences when it is [batch, K] (the pooler, the classifier).
Attention's two activation×activation products (QKᵀ and AV) cost 2·S²·H per sequence each.
Element-wise work (softmax, layer norm, GELU) is left out, so the count is a slight undercount.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LINEAR = {"MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
           "FusedMatMul", "QGemm", "QLinearMatMul"}
_ATTENTION = {"Attention", "QAttention", "MultiHeadAttention"}
_PASS_THROUGH = {"Transpose", "Cast", "DequantizeLinear", "Identity", "Reshape"}


@dataclass(frozen=True)
class FlopModel:
    """FLOPs of one forward pass as a function of the padded batch shape."""

    per_token: int
    """2·K·N summed over token-wise weight multiplies."""
    per_sequence: int
    """2·K·N summed over per-sequence weight multiplies (pooler, classifier)."""
    attention_products: int
    """Activation×activation products (2 per attention layer)."""
    hidden_size: int
    weight_shapes: dict[str, int] = field(default_factory=dict)
    """``KxN`` → how many weight matrices have that shape (the roofline's kernel sizes)."""

    def flops(self, batch: int, seq: int) -> float:
        return float(batch * seq * self.per_token + batch * self.per_sequence
                     + self.attention_products * 2 * batch * seq * seq * self.hidden_size)

    def common_shapes(self, count: int = 3) -> list[tuple[int, int]]:
        ranked = sorted(self.weight_shapes.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(int(k), int(n)) for k, n in (s.split("x") for s, _ in ranked[:count])]

    def to_dict(self) -> dict[str, Any]:
        return {"flops_per_token": self.per_token, "flops_per_sequence": self.per_sequence,
                "attention_products": self.attention_products, "hidden_size": self.hidden_size,
                "weight_shapes": self.weight_shapes,
                "gflops_batch8_seq128": round(self.flops(8, 128) / 1e9, 3)}


def count_flops(model_path: Path, hidden_size: int | None = None) -> FlopModel:
    """Walk the graph once; shapes of activations come from ONNX shape inference when it can."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    # Contrib ops or odd graphs: without inferred ranks every weight counts as token-wise.
    with contextlib.suppress(Exception):
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {
        t.name: tuple(int(d) for d in t.dims) for t in graph.initializer
    }
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(int(d) for d in attr.t.dims)
    producers = {out: node for node in graph.node for out in node.output}
    ranks: dict[str, int] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)

    def weight_shape(name: str) -> tuple[int, ...] | None:
        for _ in range(4):  # follow Transpose/Cast/DequantizeLinear back to a constant
            if name in shapes:
                return shapes[name]
            node = producers.get(name)
            if node is None or node.op_type not in _PASS_THROUGH or not node.input:
                return None
            name = node.input[0]
        return None

    per_token = per_sequence = products = 0
    counter: Counter[str] = Counter()
    attention_hidden: list[int] = []
    for node in graph.node:
        if node.op_type in _ATTENTION and len(node.input) > 1:
            w = weight_shape(node.input[1])
            if w is not None and len(w) == 2:
                per_token += 2 * w[0] * w[1]
                attention_hidden.append(w[1] // 3)
                counter[f"{w[0]}x{w[1] // 3}"] += 3
            products += 2
            continue
        if node.op_type not in _LINEAR:
            continue
        weight_index = 3 if node.op_type == "QLinearMatMul" else 1
        if len(node.input) <= weight_index:
            continue
        w = weight_shape(node.input[weight_index])
        if w is None:
            a_known = weight_shape(node.input[0]) is not None
            if not a_known:
                products += 1
            continue
        if len(w) != 2:
            continue
        k, n = w
        if node.op_type in ("Gemm", "QGemm") and _attr(node, "transB"):
            k, n = n, k
        macs = 2 * k * n
        if ranks.get(node.input[0]) == 2:
            per_sequence += macs
        else:
            per_token += macs
            counter[f"{k}x{n}"] += 1
    hidden = hidden_size or (attention_hidden[0] if attention_hidden else _guess_hidden(counter))
    return FlopModel(per_token, per_sequence, products, hidden, dict(counter))


def _attr(node: Any, name: str) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), 0)


def _guess_hidden(counter: Counter[str]) -> int:
    """The most common square weight's side (BERT's Q/K/V/output projections)."""
    square = [(count, int(shape.split("x")[0])) for shape, count in counter.items()
              if shape.split("x")[0] == shape.split("x")[1]]
    return max(square)[1] if square else 0
