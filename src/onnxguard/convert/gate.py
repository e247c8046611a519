"""The accuracy gate for quantized graphs: metrics with confidence bounds, on split data.

Why a gate needs statistics: on 63 sentences one flipped prediction moved agreement by 1.6
points, so the old decision was noise.  The gate now works on at least a thousand texts, split
by a hash of each text into a *selection* half (which picks the candidate) and a *report* half
(which confirms the chosen one and gives the figures written to the manifest), and it states
each figure with a 95% interval:

* labelled data (``label<TAB>text``, text classification): accuracy of PyTorch and of the
  candidate, the drop in points with a paired-difference interval; the budget is the drop;
* unlabelled classification: top-1 agreement with PyTorch and its Wilson lower bound; the
  budget is on the lower bound ("with 95% confidence at least X% of texts like these agree");
* reranking (cross-encoders, often a single logit where top-1 means nothing): pairwise order
  agreement of the relevance scores within each batch of eight (query, document) pairs, and its
  Wilson lower bound, against the same ``min_agreement`` budget;
* question answering: agreement of the best answer span (start and end token, decoded as the
  runtime does) per (question, context) pair, and its Wilson lower bound, against
  ``min_agreement``; without labelled QA data the questions are made from each text's first
  words and the text is the context (``validate.question_for``);
* embeddings: cosine to PyTorch *and* recall@10 of PyTorch's ten nearest neighbours among the
  split's texts, because cosine ≥ 0.99 still lets a retrieval user lose rankings.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

Z95 = 1.959963984540054
RECALL_K = 10


class Split(StrEnum):
    SELECTION = "selection"
    REPORT = "report"


def split_of(text: str) -> Split:
    """A text's split, from its content alone: stable across runs, files and orderings."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return Split.SELECTION if digest[0] % 2 == 0 else Split.REPORT


@dataclass(frozen=True)
class Budget:
    """What a quantized graph must keep; see the module docstring for how each is measured."""

    min_agreement: float = 0.95
    """Wilson 95% lower bound of top-1 agreement with PyTorch (unlabelled classification)."""
    max_accuracy_drop: float = 0.5
    """Accuracy points a candidate may lose against PyTorch (labelled text classification)."""
    min_cosine: float = 0.99
    min_recall: float = 0.95
    """recall@10 of PyTorch's nearest neighbours (embeddings)."""


@dataclass(frozen=True)
class SplitMetrics:
    """One graph on one split, against PyTorch outputs (and labels when the data has them)."""

    split: Split
    texts: int
    agreement: float | None = None
    agreement_lower95: float | None = None
    accuracy_reference: float | None = None
    accuracy: float | None = None
    accuracy_drop_points: float | None = None
    accuracy_drop_ci95: tuple[float, float] | None = None
    min_cosine: float | None = None
    mean_cosine: float | None = None
    recall_at_10: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"split": self.split.value, "texts": self.texts}
        for key, value in vars(self).items():
            if key in ("split", "texts") or value is None:
                continue
            data[key] = [_r(v) for v in value] if isinstance(value, tuple) else _r(value)
        return data

    def failures(self, budget: Budget) -> list[str]:
        """Why this graph misses the budget (empty: it meets it)."""
        out = []
        if self.accuracy_drop_points is not None:
            if self.accuracy_drop_points > budget.max_accuracy_drop:
                out.append(f"accuracy drop {self.accuracy_drop_points:.2f} pt > "
                           f"{budget.max_accuracy_drop} pt ({self.split.value} split)")
        elif self.agreement_lower95 is not None and self.agreement_lower95 < budget.min_agreement:
            out.append(f"agreement {self.agreement:.2%} (95% lower bound "
                       f"{self.agreement_lower95:.2%}) < {budget.min_agreement:.2%} "
                       f"({self.split.value} split)")
        if self.min_cosine is not None and self.min_cosine < budget.min_cosine:
            out.append(f"min cosine {self.min_cosine:.4f} < {budget.min_cosine} "
                       f"({self.split.value} split)")
        if self.recall_at_10 is not None and self.recall_at_10 < budget.min_recall:
            out.append(f"recall@10 {self.recall_at_10:.3f} < {budget.min_recall} "
                       f"({self.split.value} split)")
        return out

    def line(self) -> str:
        """One human line: the figures that decide, with their intervals."""
        parts = []
        if self.accuracy is not None and self.accuracy_reference is not None:
            lo, hi = self.accuracy_drop_ci95 or (0.0, 0.0)
            parts.append(f"accuracy {self.accuracy:.2%} vs PyTorch {self.accuracy_reference:.2%} "
                         f"(drop {self.accuracy_drop_points:+.2f} pt, 95% CI {lo:+.2f}..{hi:+.2f})")
        if self.agreement is not None:
            parts.append(f"agreement {self.agreement:.2%} (≥ {self.agreement_lower95:.2%})")
        if self.recall_at_10 is not None:
            parts.append(f"recall@10 {self.recall_at_10:.3f}")
        if self.min_cosine is not None:
            parts.append(f"min cos {self.min_cosine:.4f}")
        return ", ".join(parts) + f" on {self.texts} {self.split.value} texts"


def measure(
    split: Split,
    reference: np.ndarray,
    actual: np.ndarray,
    *,
    embeddings: bool,
    labels: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> SplitMetrics:
    """Metrics of one graph's outputs against PyTorch's, row-aligned (one row per text).

    ``mask`` (token classification) selects the real tokens; agreement is then per token.
    """
    texts = int(reference.shape[0])
    if embeddings:
        cos = row_cosine(reference, actual)
        return SplitMetrics(split, texts, min_cosine=float(cos.min()),
                            mean_cosine=float(cos.mean()),
                            recall_at_10=recall_at_k(reference, actual, RECALL_K))
    ref_top, out_top = reference.argmax(-1), actual.argmax(-1)
    if mask is not None:
        ref_top, out_top = ref_top[mask], out_top[mask]
    same = ref_top.reshape(-1) == out_top.reshape(-1)
    agreement = float(same.mean()) if same.size else 1.0
    lower = wilson_lower(int(same.sum()), int(same.size))
    if labels is None:
        return SplitMetrics(split, texts, agreement=agreement, agreement_lower95=lower)
    ref_ok = reference.argmax(-1) == labels
    out_ok = actual.argmax(-1) == labels
    drop, ci = paired_drop_points(ref_ok, out_ok)
    return SplitMetrics(split, texts, agreement=agreement, agreement_lower95=lower,
                        accuracy_reference=float(ref_ok.mean()), accuracy=float(out_ok.mean()),
                        accuracy_drop_points=drop, accuracy_drop_ci95=ci)


def relevance_scores(logits: np.ndarray) -> np.ndarray:
    """A reranker's scores, monotone in what the runtime returns: the single logit (sigmoid is
    monotone), or the softmax probability of the last (positive) label."""
    logits = logits.reshape(logits.shape[0], -1).astype(np.float64)
    if logits.shape[1] == 1:
        return logits[:, 0]
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores: np.ndarray = z[:, -1] / z.sum(axis=1)
    return scores


def measure_ranking(
    split: Split, references: list[np.ndarray], actuals: list[np.ndarray]
) -> SplitMetrics:
    """Pairwise order agreement of relevance scores within each group (one batch of pairs).

    Pairs that PyTorch scores equally carry no order and are skipped.  The comparisons within a
    group are not independent, so the Wilson bound is optimistic; it is still the budget's scale.
    """
    same = total = texts = 0
    for ref, out in zip(references, actuals, strict=True):
        r, a = relevance_scores(ref), relevance_scores(out)
        texts += r.size
        dr = np.sign(r[:, None] - r[None, :])
        da = np.sign(a[:, None] - a[None, :])
        upper = np.triu(np.ones_like(dr, dtype=bool), k=1) & (dr != 0)
        same += int((dr[upper] == da[upper]).sum())
        total += int(upper.sum())
    agreement = same / total if total else 1.0
    lower = wilson_lower(same, total) if total else 1.0
    return SplitMetrics(split, texts, agreement=agreement, agreement_lower95=lower)


def measure_spans(
    split: Split, references: list[np.ndarray], actuals: list[np.ndarray],
    context_masks: list[np.ndarray],
) -> SplitMetrics:
    """Share of (question, context) rows whose best answer span is the same as PyTorch's.

    Each array is batch x tokens x [start, end]; a mask is True on the row's context tokens.
    """
    from onnxguard._qa import best_span

    same = texts = 0
    for ref, out, mask in zip(references, actuals, context_masks, strict=True):
        for row in range(ref.shape[0]):
            texts += 1
            same += best_span(ref[row], mask[row]) == best_span(out[row], mask[row])
    agreement = same / texts if texts else 1.0
    return SplitMetrics(split, texts, agreement=agreement,
                        agreement_lower95=wilson_lower(same, texts) if texts else 1.0)


def wilson_lower(successes: int, n: int, z: float = Z95) -> float:
    """Wilson score lower bound: honest near 100%, where the normal interval passes 1."""
    if n == 0:
        return 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def paired_drop_points(
    reference_ok: np.ndarray, candidate_ok: np.ndarray, z: float = Z95
) -> tuple[float, tuple[float, float]]:
    """Accuracy drop (reference − candidate) in points with a paired 95% interval.

    Paired because both graphs see the same texts: only the texts where they differ carry
    information, so the interval is much tighter than two independent accuracies'.
    """
    diff = reference_ok.astype(np.float64) - candidate_ok.astype(np.float64)
    n = diff.size
    mean = float(diff.mean()) if n else 0.0
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return 100 * mean, (100 * (mean - z * se), 100 * (mean + z * se))


def recall_at_k(reference: np.ndarray, actual: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of each text's k nearest neighbours under PyTorch that the graph keeps.

    Neighbours are by cosine among the other texts of the same set (self excluded); ties in the
    reference are broken by index, the same way for both.
    """
    n = reference.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return 1.0

    def neighbours(x: np.ndarray) -> np.ndarray:
        unit = x.reshape(n, -1).astype(np.float64)
        unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-30)
        sim = unit @ unit.T
        np.fill_diagonal(sim, -np.inf)
        order: np.ndarray = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        return order

    ref_nn, out_nn = neighbours(reference), neighbours(actual)
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref_nn, out_nn, strict=True))
    return float(hits) / float(n * k)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a2 * b2).sum(axis=1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    result: np.ndarray = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    return result


def _r(x: float) -> float:
    return float(f"{x:.6g}")
