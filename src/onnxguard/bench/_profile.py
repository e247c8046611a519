"""Where the time goes: ONNX Runtime's profiler trace, summed per operator type.

``--profile`` runs each ORT engine once more with ``SessionOptions.enable_profiling`` and
``optimized_model_filepath``, then reports the share of kernel time per operator type and the
operators of the graph as ORT runs it (after its own load-time fusions), which is how a missed
target is explained: e.g. time still in fp32 MatMul, or attention left unfused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOP = 12


def summarize_trace(trace: Path, session_graph: Path | None = None) -> dict[str, Any]:
    """Kernel milliseconds per op type (top ``TOP``), their shares, and the run's op counts."""
    events = json.loads(trace.read_text(encoding="utf-8"))
    per_op: dict[str, float] = {}
    runs = 0
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict):
            continue
        name = str(event.get("name", ""))
        if event.get("cat") == "Session" and name == "model_run":
            runs += 1
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        op = str((event.get("args") or {}).get("op_name", "?"))
        per_op[op] = per_op.get(op, 0.0) + float(event.get("dur", 0)) / 1e3
    total = sum(per_op.values())
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])
    top = dict(ranked[:TOP])
    if len(ranked) > TOP:
        top["(other)"] = sum(ms for _, ms in ranked[TOP:])
    result: dict[str, Any] = {
        "runs": runs,
        "kernel_ms": round(total, 2),
        "op_ms": {k: round(v, 2) for k, v in top.items()},
        "op_share": {k: round(v / total, 4) if total else 0.0 for k, v in top.items()},
    }
    if session_graph is not None and session_graph.is_file():
        from onnxguard.bench._prepare import graph_ops

        try:
            result["session_ops"] = graph_ops(session_graph)
        except Exception as exc:  # ORT may save a graph onnx cannot parse (internal ops)
            result["session_ops_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return result
