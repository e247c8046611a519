"""Extractive question answering: context windows and answer-span decoding.

Serve-side only (tokenizers + numpy), shared by the runtime, the server and the build's gate.
It follows what transformers' ``QuestionAnsweringPipeline`` did (transformers 5 removed that
pipeline; its decoding lives on as ``document_question_answering.select_starts_ends``), so an
answer here is the answer users got from the pipeline:

* (question, context) is tokenized with ``only_second`` truncation; a context longer than one
  window overflows into further windows that overlap by ``stride`` tokens;
* per window, start and end logits outside the context (question, special and padding tokens)
  are masked except the first token (the "no answer" position), softmaxed, and a span scores
  ``p_start * p_end`` with start <= end and at most ``max_answer_len`` tokens;
* the best spans of all windows compete on that score; offsets are characters of the context,
  widened to whole words as the pipeline's ``align_to_words`` did.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from onnxguard.errors import QuestionTooLongError

_MASKED = -10000.0


@dataclass(frozen=True)
class Span:
    """One candidate answer in one window: token indices and its probability."""

    window: int
    start: int
    end: int
    score: float


class ContextWindow(str):
    """The text of one context window, carrying the window's tokenization.

    The server runs windows through the shared batcher, whose items are (text, text) pairs that
    the engine tokenizes; a window cut out of a longer context cannot be tokenized again from
    its text (it may begin inside a word), so ``Engine.encode`` takes this encoding as made.
    As a string it is the window's context characters: what limits and the audit hash see.
    """

    encoding: Encoding

    @classmethod
    def of(cls, context: str, encoding: Encoding) -> ContextWindow:
        spans = [o for o, s in zip(encoding.offsets, encoding.sequence_ids, strict=True)
                 if s == 1]
        window = cls(context[spans[0][0]:spans[-1][1]] if spans else "")
        window.encoding = encoding
        return window


class WindowTokenizer:
    """Pair tokenization into overlapping context windows, one tokenizer per stride.

    ``enable_truncation`` mutates a tokenizer, so each stride gets its own copy (built once,
    then only read, which is thread-safe); the engine's own tokenizer is left as it is.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self._base = tokenizer
        self._json = tokenizer.to_str()
        self.max_length = max_length
        self._by_stride: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()
        self._specials = tokenizer.num_special_tokens_to_add(True)

    def room(self, question: str) -> int:
        """Context tokens per window once the question and special tokens are in."""
        asked = len(self._base.encode(question, add_special_tokens=False).ids)
        return self.max_length - asked - self._specials

    def stride_for(self, question: str, doc_stride: int) -> int:
        """The overlap actually used: ``doc_stride``, at most half the window (the pipeline's
        default) and less than the room left for the context, so each window moves forward."""
        room = self.room(question)
        if room < 2:
            raise QuestionTooLongError(
                f"the question leaves no room for the context in a {self.max_length}-token "
                "window",
                hint="ask a shorter question",
                max_length=self.max_length,
            )
        return max(0, min(doc_stride, self.max_length // 2, room - 1))

    def windows(self, question: str, context: str, doc_stride: int) -> list[Encoding]:
        """Every window of ``context`` paired with ``question``, in order."""
        tokenizer = self._tokenizer(self.stride_for(question, doc_stride))
        first = tokenizer.encode(question, context)
        return [first, *first.overflowing]

    def count(self, question: str, context: str, doc_stride: int) -> int:
        return len(self.windows(question, context, doc_stride))

    def _tokenizer(self, stride: int) -> Tokenizer:
        with self._lock:
            tokenizer = self._by_stride.get(stride)
            if tokenizer is None:
                tokenizer = Tokenizer.from_str(self._json)
                tokenizer.no_padding()
                tokenizer.enable_truncation(max_length=self.max_length, stride=stride,
                                            strategy="only_second")
                self._by_stride[stride] = tokenizer
            return tokenizer


def context_mask(encoding: Encoding) -> np.ndarray:
    """True where a token belongs to the context (the pair's second sequence)."""
    return np.array([s == 1 for s in encoding.sequence_ids], dtype=bool)


def window_spans(
    logits: np.ndarray, allowed: np.ndarray, *, window: int = 0, top_k: int = 1,
    max_answer_len: int = 30,
) -> tuple[list[Span], float]:
    """The ``top_k`` spans of one window (``logits``: tokens x [start, end]) and the score of
    "no answer" (both ends on the first token), as the pipeline computed them."""
    n = logits.shape[0]
    keep = allowed[:n].copy()
    keep[0] = True  # the first token ([CLS]) stays in the softmax: it is the null answer
    start = np.where(keep, logits[:, 0], _MASKED)
    end = np.where(keep, logits[:, 1], _MASKED)
    start = np.exp(start - start.max())
    start = start / start.sum()
    end = np.exp(end - end.max())
    end = end / end.sum()
    null = float(start[0] * end[0])
    start[0] = end[0] = 0.0
    candidates = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
    flat = candidates.ravel()
    if top_k == 1:
        order = np.array([int(np.argmax(flat))])
    elif flat.size <= top_k:
        order = np.argsort(-flat)
    else:
        part = np.argpartition(-flat, top_k)[:top_k]
        order = part[np.argsort(-flat[part])]
    starts, ends = np.unravel_index(order, candidates.shape)
    spans = [Span(window, int(s), int(e), float(candidates[s, e]))
             for s, e in zip(starts, ends, strict=True) if keep[s] and keep[e]]
    return spans, null


def best_span(logits: np.ndarray, allowed: np.ndarray, max_answer_len: int = 30) -> tuple[int, int]:
    """(start, end) token indices of the best span of one window (the gate compares these)."""
    spans, _ = window_spans(logits, allowed, max_answer_len=max_answer_len)
    return (spans[0].start, spans[0].end) if spans else (0, 0)


def char_span(
    encoding: Encoding, start: int, end: int, align_to_words: bool = True
) -> tuple[int, int]:
    """Character offsets in the context of tokens ``start..end``, widened to whole words."""
    if not align_to_words:
        return int(encoding.offsets[start][0]), int(encoding.offsets[end][1])
    try:
        first_word = encoding.token_to_word(start)
        last_word = encoding.token_to_word(end)
        if first_word is None or last_word is None:
            raise ValueError("a special token")
        first = encoding.word_to_chars(first_word, sequence_index=1)
        last = encoding.word_to_chars(last_word, sequence_index=1)
        if first is None or last is None:
            raise ValueError("no characters")
        return int(first[0]), int(last[1])
    except (ValueError, TypeError, IndexError):
        return int(encoding.offsets[start][0]), int(encoding.offsets[end][1])


def decode_answers(
    context: str, windows: Sequence[Encoding], logits: Sequence[np.ndarray], *, top_k: int = 1,
    max_answer_len: int = 30, handle_impossible_answer: bool = False,
    align_to_words: bool = True,
) -> list[dict[str, object]]:
    """``{"answer", "score", "start", "end"}`` best first: the best spans of every window
    (``logits`` per window: tokens x [start, end], padding after the window's tokens ignored).

    Overlapping windows can find the same characters twice; each answer is listed once (the
    pipeline listed duplicates), with its best score.
    """
    spans: list[Span] = []
    null_score = 1_000_000.0
    for index, (encoding, rows) in enumerate(zip(windows, logits, strict=True)):
        found, null = window_spans(rows[:len(encoding.ids)], context_mask(encoding),
                                   window=index, top_k=top_k, max_answer_len=max_answer_len)
        spans.extend(found)
        null_score = min(null_score, null)
    answers: list[dict[str, object]] = []
    seen: set[tuple[int, int]] = set()
    for span in sorted(spans, key=lambda s: -s.score):
        start, end = char_span(windows[span.window], span.start, span.end, align_to_words)
        if (start, end) in seen:
            continue
        seen.add((start, end))
        answers.append({"answer": context[start:end], "score": span.score, "start": start,
                        "end": end})
    if handle_impossible_answer:
        answers.append({"answer": "", "score": null_score, "start": 0, "end": 0})
        answers.sort(key=lambda a: -float(a["score"]))  # type: ignore[arg-type]
    return answers[:top_k]
