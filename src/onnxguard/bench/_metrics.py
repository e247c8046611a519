"""Latency statistics and quality metrics (accuracy, F1, agreement with PyTorch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxguard.convert.gate import row_cosine


@dataclass(frozen=True)
class LatencySummary:
    """Per-batch latency in milliseconds over every measured batch of every round."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencySummary:
        if not samples:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        a = np.asarray(samples, dtype=np.float64)
        p50, p95, p99 = (float(x) for x in np.percentile(a, [50, 95, 99]))
        return cls(len(a), float(a.mean()), p50, p95, p99, float(a.min()), float(a.max()))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean_ms": _r(self.mean), "p50_ms": _r(self.p50),
                "p95_ms": _r(self.p95), "p99_ms": _r(self.p99), "min_ms": _r(self.min),
                "max_ms": _r(self.max)}


@dataclass(frozen=True)
class Quality:
    """How one engine's outputs compare with the labels and with PyTorch's, in one input mode."""

    engine: str
    mode: str
    sequences: int
    accuracy: float | None = None
    f1: float | None = None
    agreement: float | None = None
    """Top-1 agreement with PyTorch (classification; token level for token classification)."""
    mean_cosine: float | None = None
    """Mean cosine similarity with PyTorch's outputs (embeddings)."""
    min_cosine: float | None = None
    max_abs_diff: float | None = None
    full_pass_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "mode": self.mode, "sequences": self.sequences,
                "accuracy": _opt(self.accuracy), "f1": _opt(self.f1),
                "agreement_with_pytorch": _opt(self.agreement),
                "mean_cosine_with_pytorch": _opt(self.mean_cosine),
                "min_cosine_with_pytorch": _opt(self.min_cosine),
                "max_abs_diff_vs_pytorch": _opt(self.max_abs_diff),
                "full_pass_seconds": round(self.full_pass_seconds, 3)}


def quality(
    engine: str,
    mode: str,
    task: str,
    outputs: np.ndarray,
    labels: Sequence[int] | None,
    reference: np.ndarray | None,
    seconds: float,
) -> Quality:
    """Metrics for one engine; ``reference`` is PyTorch's output in the same mode (if run)."""
    accuracy = f1 = agreement = mean_cos = min_cos = max_diff = None
    classifier = task != "feature-extraction"
    if classifier and labels is not None and task == "text-classification":
        predicted = outputs.argmax(-1)
        truth = np.asarray(labels)
        accuracy = float((predicted == truth).mean())
        f1 = f1_score(truth, predicted, outputs.shape[-1])
    if reference is not None and reference.shape == outputs.shape:
        max_diff = float(np.abs(reference - outputs).max()) if outputs.size else 0.0
        if classifier:
            agreement = float((reference.argmax(-1) == outputs.argmax(-1)).mean())
        cos = row_cosine(reference, outputs)
        mean_cos, min_cos = float(cos.mean()), float(cos.min())
    count = len(labels) if labels is not None and task == "text-classification" else (
        int(outputs.shape[0]) if outputs.ndim else 0)
    return Quality(engine, mode, count, accuracy, f1, agreement, mean_cos, min_cos, max_diff,
                   seconds)


def f1_score(truth: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Binary: F1 of class 1 (the positive label, as the seed reports it); else macro F1."""
    def f1_of(c: int) -> float:
        tp = float(((predicted == c) & (truth == c)).sum())
        fp = float(((predicted == c) & (truth != c)).sum())
        fn = float(((predicted != c) & (truth == c)).sum())
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    if classes == 2:
        return f1_of(1)
    present = sorted(set(truth.tolist()) | set(predicted.tolist()))
    return float(np.mean([f1_of(c) for c in present])) if present else 0.0


def _r(x: float) -> float:
    return float(f"{x:.4g}")


def _opt(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")
