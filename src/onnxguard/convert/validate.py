"""Validate an ONNX graph against PyTorch on real tokenized texts; failing fails the build.

Cases cover what a server sees and what a trace can get wrong: batch 1, batch 8 with dynamic
padding, batch 8 padded to the maximum length (a long text truncated there), a batch at a shape
unlike the export trace, and every validation text in batches of 8 (length-sorted within its
split, see ``gate``).  The PyTorch reference comes from a freshly loaded model (an exported
module can drift) and is computed once, then reused for every candidate graph (fp32, int8, ...).
fp32 graphs must match tightly on every case; quantized graphs go through ``gate``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from onnxguard._qa import context_mask
from onnxguard._tokenize import pad_batch, pad_id_of
from onnxguard.convert.gate import (
    Budget,
    Split,
    SplitMetrics,
    measure,
    measure_ranking,
    measure_spans,
    row_cosine,
    split_of,
)
from onnxguard.errors import UsageError
from onnxguard.tasks import Task

BATCH = 8


@dataclass(frozen=True)
class Tolerance:
    """fp32 must match tightly; quantized graphs get an accuracy budget (``gate.Budget``)."""

    fp32_atol: float = 1e-3
    fp32_min_cosine: float = 0.9999
    min_agreement: float = 0.95
    max_accuracy_drop: float = 0.5
    min_cosine: float = 0.99
    min_recall: float = 0.95
    min_speedup: float = 1.05
    """An int8 candidate must also be this much faster than fp32 (measured, interleaved)."""

    def budget(self) -> Budget:
        return Budget(min_agreement=self.min_agreement, max_accuracy_drop=self.max_accuracy_drop,
                      min_cosine=self.min_cosine, min_recall=self.min_recall)


@dataclass(frozen=True)
class ValidationData:
    """The texts every graph is checked on, with labels when the file had them."""

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    source: str

    def describe(self) -> dict[str, Any]:
        splits = [split_of(t) for t in self.texts]
        return {"data": self.source, "texts": len(self.texts), "labelled": self.labels is not None,
                "selection_texts": splits.count(Split.SELECTION),
                "report_texts": splits.count(Split.REPORT),
                "split": "sha256(text)[0] even: selection (picks the candidate), odd: report "
                         "(confirms it and gives the figures)"}


@dataclass(frozen=True)
class ValidationCase:
    name: str
    texts: tuple[str, ...]
    pad_to: int | None = None
    split: Split | None = None
    rows: tuple[int, ...] = ()
    """Indices into ``ValidationData.texts`` (split cases only)."""
    documents: tuple[str, ...] = ()
    """Reranking: the document paired with each text (the query); question answering: the
    context of each text (the question).  Empty for single texts."""

    def encode(self, tokenizer: Tokenizer) -> list[Any]:
        """Tokenized texts, or pairs truncated together at max length."""
        if self.documents:
            return list(tokenizer.encode_batch(list(zip(self.texts, self.documents,
                                                        strict=True))))
        return list(tokenizer.encode_batch(list(self.texts)))


@dataclass(frozen=True)
class Reference:
    """Inputs and PyTorch outputs of every case (computed once)."""

    cases: tuple[ValidationCase, ...]
    inputs: tuple[dict[str, np.ndarray], ...]
    outputs: tuple[np.ndarray, ...]
    seconds: float
    labels: tuple[int, ...] | None = None
    context_masks: tuple[np.ndarray, ...] = ()
    """Question answering: per case, True where a token is context (where answers may be)."""


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
    selection: SplitMetrics | None = None
    report: SplitMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "graph": self.graph,
            "passed": self.passed,
            "max_abs_diff": _r(self.max_abs_diff),
            "mean_abs_diff": _r(self.mean_abs_diff),
            "min_cosine": _r(self.min_cosine),
            "mean_cosine": _r(self.mean_cosine),
            "top1_agreement": None if self.agreement is None else _r(self.agreement),
            "sequences": self.sequences,
            "reason": self.reason,
            "max_abs_diff_per_case": {k: _r(v) for k, v in self.per_case.items()
                                      if not k.startswith(("selection-", "report-"))},
        }
        if self.selection is not None:
            data["selection"] = self.selection.to_dict()
        if self.report is not None:
            data["report"] = self.report.to_dict()
        return data


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def builtin_data() -> ValidationData:
    """The packaged set (see data/VALIDATION_SENTENCES_LICENSE.md): 1,072 unlabelled texts."""
    text = resources.files("onnxguard").joinpath("data/validation_sentences.txt").read_text(
        encoding="utf-8"
    )
    texts = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return ValidationData(tuple(texts), None, "built-in")


def builtin_sentences() -> list[str]:
    return list(builtin_data().texts)


def read_text_lines(path: Path, what: str) -> list[str]:
    """Text lines from a file; a ``label<TAB>text`` TSV is accepted (header skipped)."""
    return [text for _label, text in _read_rows(path, what)]


def read_validation_data(
    path: Path, label_names: Sequence[str] = (), what: str = "validation"
) -> ValidationData:
    """The one reader of text files: one text per line, or ``label<TAB>text`` (a ``label`` or
    ``sentence`` header skipped; each label a class index or one of the model's label names,
    case-insensitive).  Labels count only when every line has one; a file that mixes both is
    refused rather than silently used without them.  ``bench --data`` reads the same way."""
    rows = _read_rows(path, what)
    given = [label.strip() for label, _ in rows if label is not None]
    texts = tuple(t for _, t in rows)
    if not given:
        return ValidationData(texts, None, str(path))
    if len(given) != len(rows):
        raise UsageError(
            f"{what} file {path}: {len(given)} of {len(rows)} lines carry a label",
            hint="label every line (label<TAB>text) or none of them",
        )
    return ValidationData(texts, _label_indices(given, label_names, path, what), str(path))


def _label_indices(
    raw: Sequence[str], names: Sequence[str], path: Path, what: str
) -> tuple[int, ...]:
    lookup = {name.lower(): i for i, name in enumerate(names)}
    unknown = sorted({r for r in raw if not r.lstrip("-").isdigit() and r.lower() not in lookup})
    if unknown:
        raise UsageError(
            f"{what} file {path} has labels the model does not know: {', '.join(unknown[:5])}",
            hint=f"use class indices or the model's labels ({', '.join(names) or 'none'})",
        )
    indices = tuple(int(r) if r.lstrip("-").isdigit() else lookup[r.lower()] for r in raw)
    if names and any(not 0 <= i < len(names) for i in indices):
        raise UsageError(
            f"{what} file {path} has label indices outside 0..{len(names) - 1}",
            hint=f"the model's labels are {', '.join(names)}",
        )
    return indices


def _read_rows(path: Path, what: str) -> list[tuple[str | None, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read {what} file {path}: {exc}",
            hint="pass a UTF-8 text file with one text per line (or label<TAB>text)",
        ) from exc
    rows: list[tuple[str | None, str]] = []
    for i, line in enumerate(lines):
        if i == 0 and line.lower().startswith(("label\t", "sentence\t")):
            continue
        label, text = line.split("\t", 1) if "\t" in line else (None, line)
        if text.strip():
            rows.append((label, text))
    if not rows:
        raise UsageError(f"{what} file {path} has no texts", hint="add one text per line")
    return rows


def question_for(text: str) -> str:
    """A question about ``text``, made from its first words, for validating question answering
    without labelled data: the check is agreement with PyTorch, so the question needs to be a
    plausible query over the context, not a gold one."""
    words = text.split()[:4]
    return f"what is said about {' '.join(words)} ?"


def qa_pairs(texts: Sequence[str]) -> list[tuple[str, str]]:
    """(question, context) pairs from single texts: each text is the context of its question."""
    return [(question_for(t), t) for t in texts]


def make_cases(
    data: ValidationData, max_length: int, pairs: bool = False, questions: bool = False
) -> tuple[ValidationCase, ...]:
    """The fixed shape cases, then every text in batches of 8 per split, length-sorted.

    With ``pairs`` (reranking) each text is a query paired with the text after it (the last
    with the first) as its document: a cross-encoder is validated on the pairs it will see.
    With ``questions`` (question answering) each text is the context of a question made from
    its first words (``question_for``).
    """
    cases = _single_cases(data, max_length)
    if questions:
        return tuple(replace(c, texts=tuple(question_for(t) for t in c.texts),
                             documents=c.texts) for c in cases)
    if not pairs:
        return cases
    sentences = data.texts
    following = {t: sentences[(i + 1) % len(sentences)] for i, t in enumerate(sentences)}
    return tuple(replace(c, documents=tuple(following.get(t, sentences[0]) for t in c.texts))
                 for c in cases)


def _single_cases(data: ValidationData, max_length: int) -> tuple[ValidationCase, ...]:
    sentences = data.texts
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
    for split in Split:
        rows = sorted((i for i, t in enumerate(sentences) if split_of(t) is split),
                      key=lambda i: (len(sentences[i]), i))
        for start in range(0, len(rows), BATCH):
            chunk = tuple(rows[start:start + BATCH])
            cases.append(ValidationCase(f"{split.value}-{start // BATCH}",
                                        tuple(sentences[i] for i in chunk), split=split,
                                        rows=chunk))
    return tuple(cases)


def compute_reference(
    wrapper: Any,
    tokenizer: Tokenizer,
    input_names: Sequence[str],
    cases: tuple[ValidationCase, ...],
    labels: tuple[int, ...] | None = None,
) -> Reference:
    """Run the PyTorch task wrapper on every case (no grad, eval mode)."""
    import torch

    start = time.perf_counter()
    pad_id = pad_id_of(tokenizer)
    inputs, outputs, masks = [], [], []
    threads = torch.get_num_threads()
    # One thread: every batch-8 matmul otherwise ends at an OpenMP barrier, and on a shared
    # machine a preempted thread stalls it (a tiny model's reference took 97 s instead of 2 s,
    # MiniLM's 167 s at load 5).  It also makes the reference's float rounding independent of
    # the core count, so the gate sees the same numbers on every machine.
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for case in cases:
                encodings = case.encode(tokenizer)
                feed = pad_batch(encodings, input_names, pad_id, case.pad_to)
                out = wrapper(*(torch.from_numpy(feed[n]) for n in input_names))
                if isinstance(out, tuple):  # question answering: start, end -> last axis
                    out = torch.stack(out, dim=-1)
                inputs.append(feed)
                outputs.append(out.detach().float().numpy())
                masks.append(_context_masks(encodings, feed) if case.documents else
                             np.zeros(0, dtype=bool))
    finally:
        torch.set_num_threads(threads)
    return Reference(tuple(cases), tuple(inputs), tuple(outputs), time.perf_counter() - start,
                     labels, tuple(masks))


def _context_masks(encodings: Sequence[Any], feed: dict[str, np.ndarray]) -> np.ndarray:
    mask = np.zeros(feed["input_ids"].shape, dtype=bool)
    for row, encoding in enumerate(encodings):
        mask[row, :len(encoding.ids)] = context_mask(encoding)
    return mask


def run_onnx(model_path: Path, reference: Reference) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # no spin-waiting between the many small runs: on a shared machine it only steals cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return [_stacked(session.run(None, feed)) for feed in reference.inputs]


def _stacked(outputs: list[Any]) -> np.ndarray:
    """The one output, or several (question answering's start, end) stacked on a last axis."""
    out: np.ndarray = outputs[0] if len(outputs) == 1 else np.stack(outputs, axis=-1)
    return out


def compare(
    graph: str,
    task: Task,
    reference: Reference,
    actual: list[np.ndarray],
    *,
    quantized: bool,
    tolerance: Tolerance,
) -> ValidationResult:
    """Per-output metrics and the pass/fail decision for one graph.

    fp32: every case within ``fp32_atol`` and ``fp32_min_cosine``.  Quantized: the budget on
    the selection split decides; the report split is measured too (``gate`` module docstring).
    """
    diffs, cosines, agree = [], [], []
    per_case: dict[str, float] = {}
    for case, feed, ref, out in zip(reference.cases, reference.inputs, reference.outputs, actual,
                                    strict=True):
        if ref.shape != out.shape:
            return ValidationResult(graph, False, float("inf"), float("inf"), -1.0, -1.0, None,
                                    0, f"output shape {out.shape} != PyTorch {ref.shape} "
                                    f"in case {case.name}")
        if task is Task.QUESTION_ANSWERING:  # padding masked; a row's logits as one vector
            keep = feed["attention_mask"].astype(bool)[..., None]
            ref, out = np.where(keep, ref, 0.0), np.where(keep, out, 0.0)
            diff = np.abs(ref - out)
            cosines.append(row_cosine(ref, out))
        else:
            if task is Task.TOKEN_CLASSIFICATION:
                keep = feed["attention_mask"].astype(bool)
                ref, out = ref[keep], out[keep]
            diff = np.abs(ref - out)
            # a reranker's row is often one logit, whose cosine is only its sign: compare the
            # batch's score columns instead
            cosines.append(row_cosine(ref.T, out.T) if task is Task.RERANKING
                           else row_cosine(ref, out))
        per_case[case.name] = float(diff.max())
        diffs.append(diff.reshape(-1))
        if task in (Task.TEXT_CLASSIFICATION, Task.TOKEN_CLASSIFICATION):
            agree.append(ref.argmax(-1) == out.argmax(-1))
    all_diff = np.concatenate(diffs)
    all_cos = np.concatenate(cosines)
    agreement = float(np.concatenate(agree).mean()) if agree else None
    if task is Task.QUESTION_ANSWERING:
        agreement = measure_spans(Split.SELECTION, list(reference.outputs), list(actual),
                                  list(reference.context_masks)).agreement
    max_diff, min_cos = float(all_diff.max()), float(all_cos.min())
    selection = split_metrics(task, reference, actual, Split.SELECTION)
    report = split_metrics(task, reference, actual, Split.REPORT)
    if quantized:
        failures = selection.failures(tolerance.budget())
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
        reason="; ".join(failures) or ("within the budget on the selection split" if quantized
                                      else "within tolerance"),
        per_case=per_case,
        selection=selection,
        report=report,
    )


def split_metrics(
    task: Task, reference: Reference, actual: Sequence[np.ndarray], split: Split
) -> SplitMetrics:
    """Gate metrics of one graph on one split (rows gathered from that split's cases)."""
    picked = [(c, f, r, a) for c, f, r, a in zip(reference.cases, reference.inputs,
                                                 reference.outputs, actual, strict=True)
              if c.split is split]
    if not picked:
        return SplitMetrics(split, 0)
    texts = sum(len(c.texts) for c, *_ in picked)
    if task is Task.RERANKING:
        return measure_ranking(split, [r for _, _, r, _ in picked], [a for *_, a in picked])
    if task is Task.QUESTION_ANSWERING:
        masks = [m for c, m in zip(reference.cases, reference.context_masks, strict=True)
                 if c.split is split]
        return measure_spans(split, [r for _, _, r, _ in picked], [a for *_, a in picked],
                             masks)
    if task is Task.TOKEN_CLASSIFICATION:
        keeps = [f["attention_mask"].astype(bool) for _, f, _, _ in picked]
        ref = np.concatenate([r[k] for (_, _, r, _), k in zip(picked, keeps, strict=True)])
        out = np.concatenate([a[k] for (_, _, _, a), k in zip(picked, keeps, strict=True)])
        metrics = measure(split, ref, out, embeddings=False)
        return SplitMetrics(**(vars(metrics) | {"texts": texts}))
    ref = np.concatenate([r for _, _, r, _ in picked])
    out = np.concatenate([a for *_, a in picked])
    labels = None
    if reference.labels is not None and task is Task.TEXT_CLASSIFICATION:
        labels = np.array([reference.labels[i] for c, *_ in picked for i in c.rows])
    return measure(split, ref, out, embeddings=task is Task.FEATURE_EXTRACTION, labels=labels)
