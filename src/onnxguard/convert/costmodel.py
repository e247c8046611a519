"""A cost model for choosing between quantized graphs: same graph in, same choice out.

Why not a stopwatch: two identical builds timed 1.36× and then 1.24× on this shared machine, so
a timed choice flips with the load.  The model counts, per token, the multiply-accumulates of
every weight matrix (an int8 one costs a quarter of an fp32 one with AVX-512 VNNI) plus the
layer norms, whose fused CPU kernel is a scalar loop.  The constants come from profiles of
MiniLM on this CPU (see docs/BENCHMARKS.md); only the *order* of candidates matters, and the
measured speed of the chosen graph is still recorded next to the estimate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INT8_MAC = 0.25
"""Relative cost of an int8 multiply-accumulate (VNNI: 4 per fp32 FMA lane)."""
SKIP_LAYERNORM_PER_HIDDEN = 150.0
"""com.microsoft SkipLayerNormalization: ~2.0 ms on [8,128,384] (scalar loop), in fp32-MAC units."""
LAYERNORM_PER_HIDDEN = 30.0
"""Add + Sum + LayerNormalization: ~0.4 ms on the same shape."""
FP32_WEIGHT_OPS = ("MatMul", "Gemm", "Attention", "FusedMatMul", "FusedGemm")
ATTENTION_OPS = ("Attention", "QAttention")
REFERENCE_SEQUENCE = 128
"""Attention's score and context products cost 2·S·hidden per token; S is taken as 128."""
INT8_WEIGHT_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "MatMulIntegerToFloat",
                   "QLinearMatMul", "QGemm")


@dataclass(frozen=True)
class GraphCost:
    """Estimated per-token cost of a graph in fp32 multiply-accumulates."""

    fp32_macs: int
    int8_macs: int
    layernorm_cost: float
    ops: dict[str, int]

    @property
    def total(self) -> float:
        return self.fp32_macs + INT8_MAC * self.int8_macs + self.layernorm_cost

    def to_dict(self) -> dict[str, Any]:
        return {"fp32_weight_macs_per_token": self.fp32_macs,
                "int8_weight_macs_per_token": self.int8_macs,
                "estimated_cost_per_token": round(self.total),
                "ops": dict(sorted(self.ops.items()))}


def graph_cost(path: Path) -> GraphCost:
    """Count weight MACs per token by precision; QDQ MatMuls count as int8 (their weight is)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {init.name: tuple(init.dims) for init in graph.initializer}
    dq_weights = {n.output[0]: n.input[0] for n in graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0] in sizes}
    fp32 = int8 = 0
    norm = 0.0
    ops: Counter[str] = Counter(n.op_type for n in graph.node)
    for node in graph.node:
        weight = _weight_dims(node, sizes, dq_weights)
        if node.op_type in ATTENTION_OPS and weight:
            fp32 += 2 * REFERENCE_SEQUENCE * weight[0]
        if node.op_type in INT8_WEIGHT_OPS and weight:
            int8 += weight[0] * weight[1]
        elif node.op_type in FP32_WEIGHT_OPS and weight:
            if node.input[1] in dq_weights:
                int8 += weight[0] * weight[1]
            else:
                fp32 += weight[0] * weight[1]
        elif node.op_type == "SkipLayerNormalization":
            norm += SKIP_LAYERNORM_PER_HIDDEN * _hidden(node, sizes)
        elif node.op_type == "LayerNormalization":
            norm += LAYERNORM_PER_HIDDEN * _hidden(node, sizes)
    return GraphCost(fp32, int8, norm, dict(ops))


def _weight_dims(
    node: Any, sizes: dict[str, tuple[int, ...]], dq: dict[str, str]
) -> tuple[int, int] | None:
    """[K, N] of the node's 2-D weight input (an initializer, possibly behind DequantizeLinear)."""
    for name in node.input[1:3]:
        dims = sizes.get(dq.get(name, name))
        if dims is not None and len(dims) == 2:
            return int(dims[0]), int(dims[1])
    return None


def _hidden(node: Any, sizes: dict[str, tuple[int, ...]]) -> int:
    gamma = node.input[2] if node.op_type == "SkipLayerNormalization" else node.input[1]
    dims = sizes.get(gamma, ())
    return int(dims[0]) if dims else 1
