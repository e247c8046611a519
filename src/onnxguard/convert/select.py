"""Choose the graph to ship: the cheapest candidate that the gate passes.

The decision is deterministic: candidates are ranked by the cost model (``costmodel``; ties by
name), judged in that order on the selection split, and the first that passes is confirmed on
the report split, which did not take part in choosing it.  A timed run then only vetoes int8
that is not faster than fp32 at all (tiny models).  Each step is written to the manifest, with
the ops of the shipped graph as ONNX Runtime runs it and a per-op profile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxguard.convert.costmodel import GraphCost, graph_cost
from onnxguard.convert.gate import Split
from onnxguard.convert.quantize import (
    FULL_INT8,
    QuantizedGraph,
    QuantizeMode,
    candidates_for,
    keep_fp32_candidate,
    measure_speedup,
    quantize_candidates,
)
from onnxguard.convert.validate import Reference, Tolerance, ValidationResult
from onnxguard.tasks import Task

SENSITIVE_KEEP = (1, 2, 4)
"""Sensitivity candidates: keep the top 1, 2 and 4 projections fp32."""
SENSITIVITY_BATCHES = 8
SPEED_CASES = ("batch8-dynamic-padding", "batch8-max-length")

Validator = Callable[[Path, str], ValidationResult]


@dataclass(frozen=True)
class Decision:
    path: Path
    precision: str
    record: dict[str, Any]


@dataclass(frozen=True)
class _Judged:
    graph: QuantizedGraph
    check: ValidationResult
    cost: GraphCost


def choose(
    fp32: Path,
    work: Path,
    task: Task,
    reference: Reference,
    tolerance: Tolerance,
    mode: QuantizeMode,
    validate: Validator,
    calibration_feeds: Sequence[dict[str, np.ndarray]] = (),
) -> Decision:
    """Rank, judge in rank order, confirm, and say why in ``record["decision"]``.

    Quantizing is cheap and the ranking needs only the graphs, so every candidate is quantized
    and ranked first; validation then runs in rank order and stops at the first that passes
    (same choice as validating all, a fraction of the build time).
    """
    record: dict[str, Any] = {"mode": mode.value, "attempts": []}
    if mode is QuantizeMode.NONE:
        record["decision"] = "fp32 (quantization disabled)"
        return Decision(fp32, "fp32", record)
    record["rule"] = ("candidates ranked by the cost model (requested mode first, then "
                      "estimated cost per token, then the fixed candidate order) and validated "
                      "in that order; the "
                      "first within the budget on the selection split is confirmed on the "
                      "report split and must be measurably faster than fp32")
    fp32_cost = graph_cost(fp32)
    # smoothing statistics come from --calibration texts, else from the selection split (never
    # the report split, which confirms the choice)
    feeds = list(calibration_feeds) or selection_feeds(reference)
    pool = _ranked(quantize_candidates(fp32, work, candidates_for(mode), feeds), mode)
    best: _Judged | None = None
    while pool and best is None:
        graph, cost = pool.pop(0)
        judged = _Judged(graph, validate(graph.path, graph.candidate.name), cost)
        record["attempts"].append(_attempt(judged, fp32_cost))
        if judged.check.passed:
            best = judged
        elif graph.candidate == FULL_INT8:
            extra = _sensitivity_candidates(fp32, judged, work, reference, record)
            pool = _ranked(iter([g for g, _ in pool] + extra), mode)
    record["not_validated"] = [g.candidate.name for g, _ in pool]
    if best is None:
        return _fp32(fp32, record, "no int8 candidate met the budget (" + "; ".join(
            f"{a['graph']}: {a['reason']}" for a in record["attempts"]) + ")")
    name = best.graph.candidate.name
    assert best.check.report is not None
    report_failures = best.check.report.failures(tolerance.budget())
    if report_failures:
        return _fp32(fp32, record, f"{name} passed on the selection split but not on the "
                     f"report split: {'; '.join(report_failures)}")
    speedup = measure_speedup(fp32, best.graph.path, speed_feeds(reference))
    record["measured_speedup_vs_fp32"] = round(speedup, 2)
    if speedup < tolerance.min_speedup:
        return _fp32(fp32, record, f"{name} is within the budget but only {speedup:.2f}x the "
                     f"fp32 speed (< {tolerance.min_speedup}x)")
    record["chosen"] = name
    record["decision"] = (f"int8 ({name}, estimated {fp32_cost.total / best.cost.total:.2f}x, "
                          f"measured {speedup:.2f}x fp32): {best.check.report.line()}")
    return Decision(best.graph.path, "int8", record)


def _ranked(
    graphs: Iterator[QuantizedGraph], mode: QuantizeMode
) -> list[tuple[QuantizedGraph, GraphCost]]:
    costed = [(g, graph_cost(g.path)) for g in graphs]
    # sorted() is stable: equal costs keep the candidates' own order (per-channel before
    # per-tensor, int8 embeddings before fp32 ones), which is fixed, so the choice is too
    return sorted(costed, key=lambda gc: (gc[0].candidate.kind is not mode, round(gc[1].total)))


def _sensitivity_candidates(
    fp32: Path, full: _Judged, work: Path, reference: Reference, record: dict[str, Any],
) -> list[QuantizedGraph]:
    """Full int8 missed the budget: keep its most harmful projections fp32 (see sensitivity)."""
    from onnxguard.convert.sensitivity import rank_nodes

    start = time.perf_counter()
    feeds = selection_feeds(reference)
    step = max(1, len(feeds) // SENSITIVITY_BATCHES)
    ranked = rank_nodes(work / "model.fp32.unfused-ln.onnx", full.graph.path,
                        feeds[::step][:SENSITIVITY_BATCHES], work)
    record["sensitivity"] = {
        "method": "relative error added per weight node (output minus input), full int8 vs "
                  f"fp32, on {min(len(feeds), SENSITIVITY_BATCHES)} selection batches",
        "top": {s.node: round(s.added_error, 4) for s in ranked[:8]},
        "seconds": round(time.perf_counter() - start, 2),
    }
    keeps = sorted({min(k, len(ranked)) for k in SENSITIVE_KEEP if ranked})
    candidates = [keep_fp32_candidate([s.node for s in ranked[:k]]) for k in keeps]
    return list(quantize_candidates(fp32, work, candidates))


def _attempt(judged: _Judged, fp32_cost: GraphCost) -> dict[str, Any]:
    return judged.check.to_dict() | {
        "description": judged.graph.candidate.description,
        "seconds": round(judged.graph.seconds, 2),
        "estimated_speedup_vs_fp32": round(fp32_cost.total / judged.cost.total, 2),
        "cost": judged.cost.to_dict(),
    }


def _fp32(fp32: Path, record: dict[str, Any], why: str) -> Decision:
    record["decision"] = f"fp32: {why}"
    record["hint"] = (
        "validate on data like yours (--validation-data, label<TAB>text for an accuracy budget), "
        "try --quantize static --calibration FILE, or relax --min-agreement / "
        "--max-accuracy-drop / --min-cosine / --min-recall"
    )
    return Decision(fp32, "fp32", record)


def selection_feeds(reference: Reference) -> list[dict[str, np.ndarray]]:
    """The selection split's batches (they choose; the report split only confirms)."""
    return [f for c, f in zip(reference.cases, reference.inputs, strict=True)
            if c.split is Split.SELECTION]


def speed_feeds(reference: Reference) -> list[dict[str, np.ndarray]]:
    return [feed for case, feed in zip(reference.cases, reference.inputs, strict=True)
            if case.name in SPEED_CASES]
