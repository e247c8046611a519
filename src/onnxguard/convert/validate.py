"""Validate an ONNX graph against PyTorch on real tokenized sentences; failing fails the build.

Cases cover what a server sees and what a trace can get wrong: batch 1, batch 8 with dynamic
padding, batch 8 padded to the maximum length (a long text truncated there), a batch at a shape
unlike the export trace, and the whole validation set in batches of 8.  The PyTorch reference
comes from a freshly loaded model (an exported module can drift) and is computed once, then
reused for every candidate graph (fp32, int8, ...).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from onnxguard._tokenize import pad_batch, pad_id_of
from onnxguard.errors import UsageError
from onnxguard.tasks import Task

BATCH = 8


@dataclass(frozen=True)
class Tolerance:
    """fp32 must match tightly; quantized graphs get an accuracy budget."""

    fp32_atol: float = 1e-3
    fp32_min_cosine: float = 0.9999
    min_agreement: float = 0.99
    min_cosine: float = 0.99
    min_speedup: float = 1.05
    """An int8 candidate must also be this much faster than fp32 (measured, interleaved)."""


@dataclass(frozen=True)
class ValidationCase:
    name: str
    texts: tuple[str, ...]
    pad_to: int | None = None


@dataclass(frozen=True)
class Reference:
    """Inputs and PyTorch outputs of every case (computed once)."""

    cases: tuple[ValidationCase, ...]
    inputs: tuple[dict[str, np.ndarray], ...]
    outputs: tuple[np.ndarray, ...]
    seconds: float


@dataclass(frozen=True)
class ValidationResult:
    graph: str
    passed: bool
    max_abs_diff: float
    mean_abs_diff: float
    min_cosine: float
    mean_cosine: float
    agreement: float | None
    sequences: int
    reason: str
    per_case: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "passed": self.passed,
            "max_abs_diff": _r(self.max_abs_diff),
            "mean_abs_diff": _r(self.mean_abs_diff),
            "min_cosine": _r(self.min_cosine),
            "mean_cosine": _r(self.mean_cosine),
            "top1_agreement": None if self.agreement is None else _r(self.agreement),
            "sequences": self.sequences,
            "reason": self.reason,
            "max_abs_diff_per_case": {k: _r(v) for k, v in self.per_case.items()},
        }


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def builtin_sentences() -> list[str]:
    text = resources.files("onnxguard").joinpath("data/validation_sentences.txt").read_text(
        encoding="utf-8"
    )
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def read_text_lines(path: Path, what: str) -> list[str]:
    """Text lines from a file; a ``label<TAB>text`` TSV is accepted (header skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read {what} file {path}: {exc}",
            hint="pass a UTF-8 text file with one sentence per line (or label<TAB>text)",
        ) from exc
    texts = []
    for i, line in enumerate(lines):
        if i == 0 and line.lower().startswith("label\t"):
            continue
        text = line.split("\t", 1)[1] if "\t" in line else line
        if text.strip():
            texts.append(text)
    if not texts:
        raise UsageError(f"{what} file {path} has no sentences", hint="add one sentence per line")
    return texts


def make_cases(sentences: Sequence[str], max_length: int) -> tuple[ValidationCase, ...]:
    """The fixed set of shapes every graph is checked at."""
    by_len = sorted(sentences, key=len)
    long_text = " ".join(by_len[-8:]) * (1 + max_length // 16)
    eight = tuple(sentences[:BATCH])
    cases = [
        ValidationCase("batch1-short", (by_len[0],)),
        ValidationCase("batch8-dynamic-padding", eight),
        ValidationCase("batch8-max-length", (long_text, *eight[1:]), pad_to=max_length),
        ValidationCase("batch3-odd-shape", tuple(sentences[BATCH:BATCH + 3]) or eight[:3],
                       pad_to=min(37, max_length)),
    ]
    for start in range(0, len(sentences), BATCH):
        cases.append(ValidationCase(f"set-{start // BATCH}", tuple(sentences[start:start + BATCH])))
    return tuple(cases)


def compute_reference(
    wrapper: Any,
    tokenizer: Tokenizer,
    input_names: Sequence[str],
    cases: tuple[ValidationCase, ...],
) -> Reference:
    """Run the PyTorch task wrapper on every case (no grad, eval mode)."""
    import torch

    start = time.perf_counter()
    pad_id = pad_id_of(tokenizer)
    inputs, outputs = [], []
    with torch.no_grad():
        for case in cases:
            feed = pad_batch(tokenizer.encode_batch(list(case.texts)), input_names, pad_id,
                             case.pad_to)
            out = wrapper(*(torch.from_numpy(feed[n]) for n in input_names))
            inputs.append(feed)
            outputs.append(out.detach().float().numpy())
    return Reference(tuple(cases), tuple(inputs), tuple(outputs), time.perf_counter() - start)


def run_onnx(model_path: Path, reference: Reference) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0] for feed in reference.inputs]


def compare(
    graph: str,
    task: Task,
    reference: Reference,
    actual: list[np.ndarray],
    *,
    quantized: bool,
    tolerance: Tolerance,
) -> ValidationResult:
    """Per-output metrics and the pass/fail decision for one graph."""
    diffs, cosines, agree = [], [], []
    per_case: dict[str, float] = {}
    for case, feed, ref, out in zip(reference.cases, reference.inputs, reference.outputs, actual,
                                    strict=True):
        if ref.shape != out.shape:
            return ValidationResult(graph, False, float("inf"), float("inf"), -1.0, -1.0, None,
                                    0, f"output shape {out.shape} != PyTorch {ref.shape} "
                                    f"in case {case.name}")
        if task is Task.TOKEN_CLASSIFICATION:
            keep = feed["attention_mask"].astype(bool)
            ref, out = ref[keep], out[keep]
        diff = np.abs(ref - out)
        per_case[case.name] = float(diff.max())
        diffs.append(diff.reshape(-1))
        cosines.append(_row_cosine(ref, out))
        if task is not Task.FEATURE_EXTRACTION:
            agree.append(ref.argmax(-1) == out.argmax(-1))
    all_diff = np.concatenate(diffs)
    all_cos = np.concatenate(cosines)
    agreement = float(np.concatenate(agree).mean()) if agree else None
    max_diff, min_cos = float(all_diff.max()), float(all_cos.min())
    if quantized:
        failures = []
        if agreement is not None and agreement < tolerance.min_agreement:
            failures.append(f"top-1 agreement {agreement:.2%} < {tolerance.min_agreement:.2%}")
        if task is Task.FEATURE_EXTRACTION and min_cos < tolerance.min_cosine:
            failures.append(f"min cosine {min_cos:.4f} < {tolerance.min_cosine}")
    else:
        failures = []
        if max_diff > tolerance.fp32_atol:
            failures.append(f"max abs diff {max_diff:.3g} > {tolerance.fp32_atol}")
        if min_cos < tolerance.fp32_min_cosine:
            failures.append(f"min cosine {min_cos:.6f} < {tolerance.fp32_min_cosine}")
    n = sum(len(c.texts) for c in reference.cases)
    return ValidationResult(
        graph=graph,
        passed=not failures,
        max_abs_diff=max_diff,
        mean_abs_diff=float(all_diff.mean()),
        min_cosine=min_cos,
        mean_cosine=float(all_cos.mean()),
        agreement=agreement,
        sequences=n,
        reason="; ".join(failures) or "within tolerance",
        per_case=per_case,
    )


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a2 * b2).sum(axis=1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    result: np.ndarray = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    return result
