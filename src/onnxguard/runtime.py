"""Engine: a verified bundle → ONNX Runtime session + tokenizer → predictions.

Serve-side only: onnxruntime, tokenizers and numpy (a test proves torch and transformers are not
imported).  The bundle is verified and read into memory by ``integrity.loader.open_bundle``;
ONNX Runtime gets the model as bytes, so a decrypted model never touches the disk.

Speed: texts are tokenized once without padding, sorted by length and batched, so each batch is
padded only to its own longest text (SST-2 averages ~25 tokens; fixed padding to 128 wastes ~5x).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding

from onnxguard._qa import ContextWindow, WindowTokenizer, decode_answers
from onnxguard._tokenize import load_tokenizer, pad_batch, pad_id_of, unk_id_of
from onnxguard.drift import Reference as DriftReference
from onnxguard.errors import (
    EmptyTextError,
    EngineError,
    TaskMismatchError,
    UnknownPromptError,
    UsageError,
)
from onnxguard.integrity.loader import LoadedBundle, open_bundle
from onnxguard.tasks import Task

# Preference order for automatic provider selection.
PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
_PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """Explicit providers must be available; automatic picks TensorRT → CUDA → CPU."""
    available = ort.get_available_providers()
    if not requested:
        return [p for p in PROVIDER_PREFERENCE if p in available] or ["CPUExecutionProvider"]
    names = [_PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in requested if p.strip()]
    missing = [n for n in names if n not in available]
    if missing:
        raise UsageError(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime",
            hint=f"available: {', '.join(available)}; leave --providers unset to choose "
            "automatically",
        )
    return names


@dataclass(frozen=True)
class EngineConfig:
    providers: tuple[str, ...] | None = None
    intra_op_threads: int | None = None
    batch_size: int = 32
    session_config: tuple[tuple[str, str], ...] = ()
    """Extra ONNX Runtime session config entries, e.g. ("session.intra_op.allow_spinning", "0")."""


class Engine:
    """Run a verified bundle.  Thread-safe for concurrent ``run_batch`` calls (ORT sessions are)."""

    def __init__(self, loaded: LoadedBundle, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.bundle = loaded
        self.manifest = loaded.manifest
        self.task = Task(self.manifest.task)
        self.labels = list(self.manifest.labels)
        self.input_names = list(self.manifest.inputs)
        self.max_length = self.manifest.max_length
        self.tokenizer = load_tokenizer(loaded.tokenizer_json, self.max_length)
        self.pad_id = pad_id_of(self.tokenizer)
        self.windows = WindowTokenizer(self.tokenizer, self.max_length)
        self.unk_id = unk_id_of(self.tokenizer)
        """The tokenizer's unknown-token id (None: it has none); drift's ``unk_rate`` counts it."""
        self.threads = self.config.intra_op_threads or available_cores()
        self.session, self.provider_notes = self._create_session(loaded.model_bytes)
        self.providers = list(self.session.get_providers())

    @classmethod
    def from_bundle(
        cls,
        path: Path | str,
        *,
        public_key: Path | None = None,
        key_source: str | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
        session_config: Mapping[str, str] | None = None,
    ) -> Engine:
        """Verify (hashes; signature when ``public_key``; decrypt with ``key_source``) and load."""
        loaded = open_bundle(Path(path), public_key=public_key, key_source=key_source)
        config = EngineConfig(
            providers=tuple(providers) if providers else None,
            intra_op_threads=intra_op_threads,
            batch_size=batch_size,
            session_config=tuple((session_config or {}).items()),
        )
        return cls(loaded, config)

    # --- properties used by the server and the CLI ----------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def digest(self) -> str:
        return self.bundle.digest

    @property
    def drift_reference(self) -> DriftReference | None:
        """The build's drift statistics (None for bundles built before they were recorded)."""
        return self.manifest.drift_reference

    @property
    def output_name(self) -> str:
        return self.manifest.outputs[0]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task.value,
            "precision": self.manifest.precision,
            "providers": self.providers,
            "provider_notes": self.provider_notes,
            "intra_op_threads": self.threads,
            "max_length": self.max_length,
            "labels": self.labels,
            "bundle_digest": self.digest,
            "signed": self.bundle.signed,
        }

    # --- inference ------------------------------------------------------------------------------
    @property
    def prompts(self) -> dict[str, str]:
        """The model's sentence-transformers prompts by name (empty when it defines none)."""
        spec = self.manifest.prompts
        return dict(spec.prompts) if spec is not None else {}

    def apply_prompt(self, texts: Sequence[str], prompt_name: str | None = None) -> list[str]:
        """Prefix each text with the named prompt, as ``SentenceTransformer.encode`` does.

        With no name, the model's ``default_prompt_name`` applies (if it has one).  The prompt
        is part of the text from here on: it is tokenized, truncated and counted with it.
        """
        spec = self.manifest.prompts
        name = prompt_name if prompt_name is not None else (spec.default if spec else None)
        if name is None:
            return list(texts)
        if spec is None or not spec.prompts:
            raise UnknownPromptError(
                f"prompt {name[:64]!r} asked for, but this model defines no prompts",
                hint="leave the prompt name out, or build a model whose "
                "config_sentence_transformers.json defines `prompts`", prompt_name=name[:64],
            )
        prompt = spec.prompts.get(name)
        if prompt is None:
            known = ", ".join(sorted(spec.prompts))
            raise UnknownPromptError(
                f"unknown prompt {name[:64]!r}; this model defines: {known}",
                hint=f"use one of: {known}", prompt_name=name[:64], known=sorted(spec.prompts),
            )
        return [prompt + text for text in texts]

    def encode(self, texts: Sequence[str | tuple[str, str]]) -> list[Encoding]:
        """Tokenize without padding (batch encode runs in Rust and releases the GIL); a
        (query, document) pair is tokenized as one sequence, truncated together; a
        (question, ``ContextWindow``) pair is already tokenized (a window of a long context)."""
        items = list(texts)
        made = {i: t[1].encoding for i, t in enumerate(items)
                if isinstance(t, tuple) and isinstance(t[1], ContextWindow)}
        if not made:
            return list(self.tokenizer.encode_batch(items))
        rest = iter(self.tokenizer.encode_batch([t for i, t in enumerate(items) if i not in made]))
        return [made[i] if i in made else next(rest) for i in range(len(items))]

    def run_batch(self, encodings: Sequence[Encoding], pad_to: int | None = None) -> np.ndarray:
        """One ORT call on a batch padded to its longest row; returns the raw output (question
        answering: start and end logits stacked on a last axis, batch x tokens x 2)."""
        feed = pad_batch(encodings, self.input_names, self.pad_id, pad_to)
        outputs = self.session.run(list(self.manifest.outputs), feed)
        out: np.ndarray = outputs[0] if len(outputs) == 1 else np.stack(outputs, axis=-1)
        return out

    def predict_raw(self, texts: Sequence[str], batch_size: int | None = None) -> list[np.ndarray]:
        """Raw outputs in input order: length-sorted batches, dynamic padding."""
        return self._run_encoded(self.encode(texts), batch_size)

    def _run_encoded(
        self, encodings: Sequence[Encoding], batch_size: int | None = None
    ) -> list[np.ndarray]:
        return rows_per_text(self.run_batch, encodings, batch_size or self.config.batch_size,
                             self.task)

    def predict(
        self, texts: Sequence[str], batch_size: int | None = None, *,
        prompt_name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Task-shaped results: labels+scores, embeddings, or token labels.

        An empty or whitespace-only text is refused (a label for nothing would look confident);
        a text cut at ``max_length`` tokens says so with ``"truncated": true``.  Embeddings get
        the named prompt (else the model's default prompt) prefixed, see ``apply_prompt``.
        """
        if self.task is Task.QUESTION_ANSWERING:
            raise TaskMismatchError(
                "a question-answering model answers (question, context) pairs, not single texts",
                hint="use Engine.answer(question, context) (CLI: predict --question Q --context C)",
                task=self.task.value,
            )
        check_texts(texts)
        encodings = self.encode(self.apply_prompt(texts, prompt_name))
        raw = self._run_encoded(encodings, batch_size)
        if self.task is Task.TOKEN_CLASSIFICATION:
            results = [self.postprocess_tokens(r, e) for r, e in zip(raw, encodings, strict=True)]
        else:
            results = self.postprocess(np.stack(raw)) if raw else []
        for result, encoding in zip(results, encodings, strict=True):
            if encoding.overflowing:
                result["truncated"] = True
        return results

    def postprocess(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """Rows of a classification or embedding output → JSON-friendly results."""
        if self.task is Task.FEATURE_EXTRACTION:
            return [{"embedding": row.astype(float).tolist()} for row in outputs]
        if self.task is Task.RERANKING:
            return [{"score": float(s)} for s in relevance(outputs)]
        probs = softmax(outputs)
        results = []
        for row in probs:
            best = int(row.argmax())
            results.append({
                "label": self.label_of(best),
                "score": float(row[best]),
                "scores": {self.label_of(i): float(p) for i, p in enumerate(row)},
            })
        return results

    def postprocess_tokens(self, logits: np.ndarray, encoding: Encoding) -> dict[str, Any]:
        probs = softmax(logits)
        tokens = []
        for i, (token, (start, end)) in enumerate(zip(encoding.tokens, encoding.offsets,
                                                      strict=True)):
            if encoding.special_tokens_mask[i]:
                continue
            best = int(probs[i].argmax())
            tokens.append({"token": token, "start": start, "end": end,
                           "label": self.label_of(best), "score": float(probs[i, best])})
        return {"tokens": tokens}

    def encode_pairs(self, query: str, texts: Sequence[str]) -> list[Encoding]:
        """(query, text) pairs tokenized together, the longer side cut first at max length."""
        return list(self.tokenizer.encode_batch([(query, t) for t in texts]))

    def rerank(
        self, query: str, texts: Sequence[str], *, raw_scores: bool = False,
        batch_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Texts by relevance to ``query``, best first: ``{"index", "score"}`` (+``truncated``).

        The score is the sigmoid of a single logit, or the softmax probability of the last
        (positive) label; ``raw_scores`` gives the logit (the last label's) instead.
        """
        if self.task is not Task.RERANKING:
            raise TaskMismatchError(
                f"this model is {self.task.value}, not a reranker",
                hint="build a cross-encoder with --task reranking", task=self.task.value,
            )
        check_texts([query, *texts])
        encodings = self.encode_pairs(query, texts)
        logits = self.rerank_encoded(encodings, batch_size)
        return rank_results(logits, [bool(e.overflowing) for e in encodings], raw_scores)

    def rerank_encoded(
        self, encodings: Sequence[Encoding], batch_size: int | None = None
    ) -> np.ndarray:
        """Logits (n, labels) of tokenized pairs, in input order."""
        raw = self._run_encoded(encodings, batch_size)
        return np.stack(raw).reshape(len(raw), -1) if raw else np.zeros((0, 1))

    def answer(
        self, question: str, context: str, *, top_k: int = 1, max_answer_len: int = 30,
        doc_stride: int = 128, handle_impossible_answer: bool = False,
        batch_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Extractive answers to ``question`` from ``context``, best first:
        ``{"answer", "score", "start", "end"}`` (character offsets into ``context``).

        A context longer than one window is read in windows overlapping by ``doc_stride``
        tokens; spans are decoded as transformers' question-answering pipeline did (``_qa``).
        """
        if self.task is not Task.QUESTION_ANSWERING:
            raise TaskMismatchError(
                f"this model is {self.task.value}, not extractive question answering",
                hint="build a *ForQuestionAnswering model (--task question-answering)",
                task=self.task.value,
            )
        check_answer_options(top_k, max_answer_len, doc_stride)
        check_texts([question, context])
        windows = self.windows.windows(question, context, doc_stride)
        logits = self._run_encoded(windows, batch_size)
        return decode_answers(context, windows, logits, top_k=top_k,
                              max_answer_len=max_answer_len,
                              handle_impossible_answer=handle_impossible_answer)

    def label_of(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else f"LABEL_{index}"

    # --- session --------------------------------------------------------------------------------
    def _create_session(self, model_bytes: bytes) -> tuple[ort.InferenceSession, list[str]]:
        """Try the providers in order; a provider that fails to initialise is skipped, noted."""
        wanted = resolve_providers(self.config.providers)
        notes: list[str] = []
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        for key, value in self.config.session_config:
            options.add_session_config_entry(key, value)
        explicit = self.config.providers is not None
        candidates = [wanted] if explicit else [wanted[i:] for i in range(len(wanted))]
        last_error: Exception | None = None
        for providers in candidates:
            try:
                session = ort.InferenceSession(model_bytes, options, providers=providers)
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
                last_error = exc
                notes.append(f"{providers[0]} failed to initialise: {str(exc)[:200]}")
                continue
            inactive = [p for p in providers if p not in session.get_providers()]
            notes.extend(f"{p} requested but not active" for p in inactive)
            return session, notes
        raise EngineError(
            f"ONNX Runtime could not load the model: {last_error}",
            hint="rebuild the bundle, or choose other providers with --providers",
        ) from last_error


def rows_per_text(
    run: Callable[[Sequence[Encoding]], np.ndarray], encodings: Sequence[Encoding], size: int,
    task: Task,
) -> list[np.ndarray]:
    """Outputs in input order from length-sorted batches: one row per text (per token, cut to
    the text's length, for token classification and question answering).  The build's drift
    reference uses it too, so its rows are exactly the server's."""
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    results: list[np.ndarray] = [np.empty(0)] * len(encodings)
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        out = run([encodings[i] for i in idx])
        for row, i in enumerate(idx):
            n = len(encodings[i].ids)
            results[i] = out[row, :n] if task.per_token else out[row]
    return results


def check_texts(texts: Sequence[str]) -> None:
    """Refuse empty and whitespace-only texts: there is nothing in them to predict on."""
    for number, text in enumerate(texts, 1):
        if not text.strip():
            raise EmptyTextError(
                f"text {number} is empty or only whitespace",
                hint="every text needs at least one non-space character",
                index=number - 1,
            )


def check_answer_options(top_k: int, max_answer_len: int, doc_stride: int) -> None:
    """Refuse answer options that cannot mean anything (the server checks the same)."""
    for name, value, least in (("top_k", top_k, 1), ("max_answer_len", max_answer_len, 1),
                               ("doc_stride", doc_stride, 0)):
        if value < least:
            raise UsageError(f"{name} must be at least {least}, not {value}",
                             hint=f"pass {name} >= {least}")


def relevance(logits: np.ndarray, raw_scores: bool = False) -> np.ndarray:
    """Per-pair relevance: sigmoid of one logit, else softmax of the last label (or raw logit)."""
    logits = logits.reshape(logits.shape[0], -1).astype(np.float64)
    if raw_scores:
        last: np.ndarray = logits[:, -1]
        return last
    if logits.shape[1] == 1:
        sig: np.ndarray = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return sig
    probs: np.ndarray = softmax(logits)[:, -1]
    return probs


def rank_results(
    logits: np.ndarray, truncated: Sequence[bool], raw_scores: bool = False
) -> list[dict[str, Any]]:
    """``{"index", "score"}`` best first (ties keep input order); ``truncated`` when cut."""
    scores = relevance(logits, raw_scores)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    results: list[dict[str, Any]] = []
    for i in order:
        item: dict[str, Any] = {"index": i, "score": float(scores[i])}
        if truncated[i]:
            item["truncated"] = True
        results.append(item)
    return results


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    result: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return result
