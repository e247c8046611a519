"""Which projections does int8 hurt most?  One pass over the fp32 and the full-int8 graph.

Why not leave-one-out: that is one quantization and one validation per MatMul (26 on MiniLM,
minutes of build time).  Instead both graphs run once on selection texts with every weight
node's input and output exposed, and each node is scored by the relative error it *adds*:
error at its output minus error already present at its input.  Keeping the top few fp32 fixes
most of the accuracy loss at a small cost in speed; the gate then judges each such candidate
like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHT_OPS = ("MatMul", "Gemm", "Attention")


@dataclass(frozen=True)
class Sensitivity:
    node: str
    added_error: float
    """Relative L2 error at the node's output minus that at its input (int8 vs fp32)."""


def rank_nodes(
    fp32: Path, int8: Path, feeds: Sequence[dict[str, np.ndarray]], work: Path
) -> list[Sensitivity]:
    """Weight nodes of ``fp32``, most harmful first (ties broken by name: deterministic)."""
    import onnx

    model = onnx.load(str(fp32), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in WEIGHT_OPS
             and len(n.input) > 1 and n.input[1] in weights]
    tensors = sorted({t for n in nodes for t in (n.input[0], n.output[0])})
    fp32_values = _run_with_outputs(fp32, tensors, feeds, work / "sens.fp32.onnx")
    int8_values = _run_with_outputs(int8, tensors, feeds, work / "sens.int8.onnx")
    error = {t: _relative_error(fp32_values[t], int8_values[t]) for t in tensors
             if t in fp32_values and t in int8_values}
    ranked = [Sensitivity(n.name, error[n.output[0]] - error.get(n.input[0], 0.0))
              for n in nodes if n.output[0] in error]
    return sorted(ranked, key=lambda s: (-round(s.added_error, 6), s.node))


def _run_with_outputs(
    path: Path, tensors: Sequence[str], feeds: Sequence[dict[str, np.ndarray]], dst: Path
) -> dict[str, list[np.ndarray]]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(path), load_external_data=False)
    produced = {o for n in model.graph.node for o in n.output}
    existing = {o.name for o in model.graph.output}
    names = [t for t in tensors if t in produced]
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                              for t in names if t not in existing)
    onnx.save(model, str(dst))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"])
    values: dict[str, list[np.ndarray]] = {t: [] for t in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            values[name].append(np.asarray(value, dtype=np.float64).reshape(-1))
    dst.unlink()
    return values


def _relative_error(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    num = sum(float(((r - a) ** 2).sum()) for r, a in zip(reference, actual, strict=True))
    den = sum(float((r ** 2).sum()) for r in reference)
    return float(np.sqrt(num / max(den, 1e-30)))
