"""Drift statistics: does live traffic still look like the data the model was validated on?

The build records a :class:`Reference` in the manifest (so the signature covers it): for each
feature, fixed bin edges chosen on the build's validation texts and the share of those texts in
each bin.  The server keeps a :class:`DriftWindow` per model version: the bin counts of the last
``window`` texts (never the texts, nor the tokens) and reports, per feature, the population
stability index (PSI) and KL(window || reference) against the recorded shares.

Features, and why each:

- ``tokens``: tokens per text (attention-mask count, specials included, after truncation;
  never padding).  Quantile bins.  Very long or very short inputs show here first, and length
  is what latency and truncation depend on.
- ``unk_rate``: share of a text's non-special tokens that are the tokenizer's unknown token.
  Fixed bins (0, <5%, <20%, more).  Text in a script the vocabulary does not cover (Chinese for an
  English WordPiece vocabulary, emoji, binary junk) maps to ``[UNK]``: the model sees nothing.
  Absent when the tokenizer has no unknown token (byte-level BPE never produces one).
- What the model makes of the input, per task (a shift in inputs that the model does not notice
  matters less than one it does):
  - classification: ``predicted_class`` (one bin per class: the label mix) and ``confidence``
    (max softmax probability, quantile bins: out-of-domain text is usually less certain).
  - feature extraction: ``embedding_norm`` (quantile bins; dropped when the graph normalizes,
    as every norm is then 1) and ``projection``: the cosine between the embedding and a fixed
    pseudo-random unit direction.  The direction is derived from ``Reference.seed`` and the
    embedding width with SHAKE-256 (see :func:`direction`), so any process, any numpy version,
    computes the same one; a topic shift moves embeddings off the reference's region.
  - token classification: ``token_label`` (predicted label per non-special token, counted per
    token) and ``token_confidence`` (a text's mean max probability over its tokens).
  - reranking: ``score`` (the relevance the API returns: sigmoid of one logit, else the last
    label's softmax probability).
  - question answering: ``answer_confidence`` (largest start probability times largest end
    probability over the context's tokens, per window: a context without an answer is less sure).

Quantile bins are the reference's deciles with open outer bins; edges that coincide (integer
lengths, saturated probabilities) are merged.  A feature whose reference values are all equal
(within :data:`CONSTANT_SPREAD`) carries no information and is left out.

Thresholds: the usual PSI rule of thumb, below :data:`WATCH` (0.1) no shift, between
:data:`WATCH` and :data:`PSI_ALERT` (0.25) watch, above :data:`PSI_ALERT` act.  PSI of two samples
of the same distribution is not 0, and an empty bin alone adds about 0.7 (its share is floored at
``epsilon``): on minilm-sst2 with a 436-text SST-2 reference, random SST-2 windows from the other
half gave a largest-feature PSI of median 0.38 at 36 texts, 0.12 at 108, 0.065 (p95 0.10) at 200,
0.033 at 436.  Hence no scores until :data:`MIN_TEXTS` texts are in the window, and a default
window of 1,000.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeGuard

import numpy as np

from onnxguard.errors import BundleError
from onnxguard.tasks import Task

if TYPE_CHECKING:
    from tokenizers import Encoding

PSI_ALERT = 0.25
"""PSI above this: the traffic has shifted; investigate (re-validate on recent data)."""
WATCH = 0.1
"""PSI between this and :data:`PSI_ALERT`: a moderate shift; keep watching."""
MIN_TEXTS = 200
"""Fewer texts in the window than this: no scores (sampling noise alone nears WATCH)."""
PROJECTION_SEED = 14
QUANTILES = tuple(i / 10 for i in range(1, 10))
UNK_RATE_EDGES = (1e-9, 0.05, 0.2)
"""Bins: no unknown token, under 5%, under 20%, 20% or more."""
CONSTANT_SPREAD = 1e-4
"""Values that all lie within this relative spread are one value plus float32 rounding (the
norms of a normalizing graph spread over ~4e-7): binning them would measure rounding noise."""
KL_ALPHA = 0.5
"""Additive (Jeffreys) smoothing of the window's counts for KL, so an empty bin is finite."""

TEXT_FEATURES = ("tokens", "unk_rate")
OUTPUT_FEATURES: dict[Task, tuple[str, ...]] = {
    Task.TEXT_CLASSIFICATION: ("predicted_class", "confidence"),
    Task.FEATURE_EXTRACTION: ("embedding_norm", "projection"),
    Task.TOKEN_CLASSIFICATION: ("token_label", "token_confidence"),
    Task.RERANKING: ("score",),
    Task.QUESTION_ANSWERING: ("answer_confidence",),
}
KNOWN_FEATURES = frozenset(TEXT_FEATURES).union(*OUTPUT_FEATURES.values())
_CATEGORICAL = frozenset({"predicted_class", "token_label"})


@dataclass(frozen=True)
class Histogram:
    """Fixed bin edges and the reference's share per bin.

    Bin ``k`` holds values ``v`` with ``edges[k-1] <= v < edges[k]``; the first and last bins are
    open-ended, so there are ``len(edges) + 1`` bins.  Categorical features (class indices) use
    half-integer edges, one bin per class.
    """

    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.edges, dtype=np.float64),
                               np.asarray(values, dtype=np.float64), side="right")

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "proportions": list(self.proportions)}


@dataclass(frozen=True)
class Reference:
    """What the build records (``drift_reference`` in the manifest); JSON-serializable.

    ``unk_id`` is the tokenizer's unknown-token id (None: no ``unk_rate`` feature); ``seed``
    derives the projection direction of embeddings.  Both are recorded so that the server
    computes exactly what the build did.
    """

    features: dict[str, Histogram]
    texts: int
    unk_id: int | None = None
    seed: int = PROJECTION_SEED

    def to_dict(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "unk_id": self.unk_id,
            "seed": self.seed,
            "features": {name: h.to_dict() for name, h in self.features.items()},
        }

    def summary(self) -> str:
        """One line for ``onnxguard inspect``: texts, and each feature with its bin count."""
        bins = ", ".join(f"{n} ({len(h.proportions)} bins)" for n, h in self.features.items())
        return f"{self.texts} texts; {bins}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        """Strict: anything malformed raises BundleError (a damaged or hand-edited manifest)."""
        if not isinstance(data, Mapping):
            _malformed(f"expected an object, got {type(data).__name__}")
        unknown = set(data) - {"texts", "unk_id", "seed", "features"}
        if unknown:
            _malformed(f"unknown keys {sorted(unknown)}")
        texts, unk_id, seed = data.get("texts"), data.get("unk_id"), data.get("seed")
        if not _is_int(texts) or texts < 1:
            _malformed(f"'texts' must be a positive integer, got {texts!r}")
        if unk_id is not None and (not _is_int(unk_id) or unk_id < 0):
            _malformed(f"'unk_id' must be null or a non-negative integer, got {unk_id!r}")
        if not _is_int(seed):
            _malformed(f"'seed' must be an integer, got {seed!r}")
        features = data.get("features")
        if not isinstance(features, Mapping) or not features:
            _malformed("'features' must be a non-empty object")
        parsed = {str(name): _histogram(str(name), h) for name, h in features.items()}
        if "unk_rate" in parsed and unk_id is None:
            _malformed("'unk_rate' needs an 'unk_id'")
        return cls(parsed, int(texts), None if unk_id is None else int(unk_id), int(seed))


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _malformed(why: str) -> NoReturn:
    raise BundleError(
        f"the manifest's drift_reference is malformed: {why}",
        hint="the bundle was damaged or edited after the build; rebuild it",
    )


def _histogram(name: str, data: Any) -> Histogram:
    if name not in KNOWN_FEATURES:
        _malformed(f"unknown feature {name!r} (known: {', '.join(sorted(KNOWN_FEATURES))})")
    if not isinstance(data, Mapping) or set(data) != {"edges", "proportions"}:
        _malformed(f"feature {name!r} must be an object with 'edges' and 'proportions'")
    edges, shares = data["edges"], data["proportions"]
    if not isinstance(edges, list) or not isinstance(shares, list):
        _malformed(f"feature {name!r}: 'edges' and 'proportions' must be lists")
    if not all(_is_number(x) for x in [*edges, *shares]):
        _malformed(f"feature {name!r}: edges and proportions must be finite numbers")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        _malformed(f"feature {name!r}: edges must increase strictly")
    if len(shares) != len(edges) + 1:
        _malformed(f"feature {name!r}: {len(edges)} edges need {len(edges) + 1} proportions, "
                   f"got {len(shares)}")
    if any(p < 0 for p in shares) or abs(sum(shares) - 1.0) > 1e-6:
        _malformed(f"feature {name!r}: proportions must be non-negative and sum to 1")
    return Histogram(tuple(float(e) for e in edges), tuple(float(p) for p in shares))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- features ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def direction(seed: int, width: int) -> np.ndarray:
    """A fixed unit vector of ``width`` from ``seed`` (SHAKE-256: the same everywhere); cached
    and read-only, as every text of a window projects onto it."""
    raw = hashlib.shake_256(f"onnxguard-drift:{seed}:{width}".encode()).digest(8 * width)
    ints = np.frombuffer(raw, dtype="<u8").astype(np.float64)
    vec = ints / float(2**64) * 2.0 - 1.0
    result: np.ndarray = vec / np.linalg.norm(vec)
    result.setflags(write=False)
    return result


def _token_count(enc: Encoding) -> float:
    return float(sum(enc.attention_mask))


def _content_mask(enc: Encoding) -> np.ndarray:
    """Real, non-special tokens (pads are special in tokenizers, and masked out anyway)."""
    attention = np.asarray(enc.attention_mask, dtype=bool)
    special = np.asarray(enc.special_tokens_mask, dtype=bool)
    mask: np.ndarray = attention & ~special
    return mask


def _unk_rate(enc: Encoding, unk_id: int) -> float:
    keep = _content_mask(enc)
    if not keep.any():
        return 0.0
    return float((np.asarray(enc.ids)[keep] == unk_id).mean())


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    result: np.ndarray = z / z.sum(axis=-1, keepdims=True)
    return result


def _score(row: np.ndarray) -> float:
    """The reranking API's relevance (runtime.relevance), for one pair's logits."""
    logits = np.asarray(row, dtype=np.float64).reshape(-1)
    if logits.size == 1:
        return float(1.0 / (1.0 + math.exp(-float(logits[0]))))
    return float(_softmax(logits)[-1])


def _token_probs(row: np.ndarray, enc: Encoding) -> np.ndarray:
    """Per-token probabilities of the non-special tokens (the row holds one per token)."""
    probs = _softmax(np.asarray(row).reshape(-1, np.asarray(row).shape[-1]))
    keep = _content_mask(enc)[: probs.shape[0]]
    picked: np.ndarray = probs[: keep.shape[0]][keep]
    return picked


Values = Callable[["Encoding", np.ndarray], np.ndarray]
"""A feature's values for one text: one scalar, or one per token (``token_label``)."""


def _answer_confidence(row: np.ndarray, enc: Encoding) -> float:
    """Question answering: how sure the best start and end are (the product of their largest
    probabilities over the context's tokens), from a ``tokens x 2`` row of start/end logits."""
    ids = enc.sequence_ids
    logits = np.asarray(row, dtype=np.float64).reshape(-1, 2)[: len(ids)]
    context = np.array([s == 1 for s in ids[: len(logits)]], dtype=bool)
    if not context.any():
        return 0.0
    start, end = logits[context, 0], logits[context, 1]
    return float(_softmax(start).max() * _softmax(end).max())


def _extractors(unk_id: int | None, seed: int) -> dict[str, Values]:
    def one(value: float) -> np.ndarray:
        return np.array([value], dtype=np.float64)

    def projection(_enc: Encoding, row: np.ndarray) -> np.ndarray:
        vec = np.asarray(row, dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(vec))
        return one(float(vec @ direction(seed, vec.size)) / norm if norm > 0 else 0.0)

    def token_confidence(enc: Encoding, row: np.ndarray) -> np.ndarray:
        probs = _token_probs(row, enc)
        return one(float(probs.max(axis=1).mean())) if len(probs) else np.empty(0)

    extract: dict[str, Values] = {
        "tokens": lambda enc, _row: one(_token_count(enc)),
        "predicted_class": lambda _enc, row: one(float(np.asarray(row).reshape(-1).argmax())),
        "confidence": lambda _enc, row: one(float(_softmax(np.asarray(row).reshape(-1)).max())),
        "embedding_norm": lambda _enc, row: one(float(np.linalg.norm(
            np.asarray(row, dtype=np.float64)))),
        "projection": projection,
        "token_label": lambda enc, row: _token_probs(row, enc).argmax(axis=1).astype(np.float64),
        "token_confidence": token_confidence,
        "score": lambda _enc, row: one(_score(row)),
        "answer_confidence": lambda enc, row: one(_answer_confidence(row, enc)),
    }
    if unk_id is not None:
        extract["unk_rate"] = lambda enc, _row: one(_unk_rate(enc, unk_id))
    return extract


# --- the reference -------------------------------------------------------------------------------
def reference_from(
    encodings: Sequence[Encoding], rows: Sequence[np.ndarray], task: Task, unk_id: int | None,
    *, seed: int = PROJECTION_SEED,
) -> Reference:
    """Bin edges and shares from the validation texts' encodings and the shipped graph's rows."""
    if len(encodings) != len(rows) or not encodings:
        raise ValueError(f"need as many rows as encodings, and some: {len(encodings)} encodings, "
                         f"{len(rows)} rows")
    extract = _extractors(unk_id, seed)
    names = [*TEXT_FEATURES, *OUTPUT_FEATURES[Task(task)]]
    features: dict[str, Histogram] = {}
    for name in names:
        if name not in extract:
            continue
        values = np.concatenate([extract[name](e, r) for e, r in zip(encodings, rows,
                                                                     strict=True)])
        edges = _edges(name, values, rows)
        if edges is None:
            continue
        counts = np.bincount(Histogram(edges, ()).bin_of(values), minlength=len(edges) + 1)
        features[name] = Histogram(edges, tuple(float(c) for c in counts / counts.sum()))
    return Reference(features, len(encodings), unk_id, seed)


def _edges(name: str, values: np.ndarray, rows: Sequence[np.ndarray]) -> tuple[float, ...] | None:
    """Fixed edges for rates and classes; deciles otherwise (None: no information)."""
    if name == "unk_rate":
        return UNK_RATE_EDGES
    if name in _CATEGORICAL:
        classes = int(np.asarray(rows[0]).shape[-1])
        return tuple(k + 0.5 for k in range(classes - 1)) if classes > 1 else None
    if values.size == 0:
        return None
    spread = float(values.max() - values.min())
    if spread <= CONSTANT_SPREAD * max(1.0, float(np.abs(values).max())):
        return None
    edges = np.unique(np.quantile(values, QUANTILES))
    return tuple(float(e) for e in edges)


# --- divergences ---------------------------------------------------------------------------------
def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    result: np.ndarray = counts / total if total > 0 else np.full(counts.shape, 1 / counts.size)
    return result


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` over bins.

    Both sides may be counts or shares (each is normalized); a share below ``epsilon`` is
    raised to it, so an empty bin on either side counts as a large but finite shift.
    """
    e = np.maximum(_shares(expected), epsilon)
    a = np.maximum(_shares(actual), epsilon)
    if e.shape != a.shape:
        raise ValueError(f"bins differ: {e.shape} vs {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


def kl_divergence(counts: np.ndarray, reference: np.ndarray, epsilon: float = 1e-4) -> float:
    """KL(window || reference): window counts smoothed by :data:`KL_ALPHA`, reference floored."""
    counts = np.asarray(counts, dtype=np.float64)
    p = _shares(counts + KL_ALPHA)
    q = _shares(np.maximum(_shares(reference), epsilon))
    return float(np.sum(p * np.log(p / q)))


# --- the window ----------------------------------------------------------------------------------
class DriftWindow:
    """Bin counts of the last ``window`` texts against a :class:`Reference`; thread-safe.

    Per feature a ring of per-text bin counts (small integers, never text or token ids) and their
    running sum; ``observe`` computes bins outside the lock and swaps them in under it.
    """

    def __init__(self, reference: Reference, window: int = 1000,
                 min_texts: int = MIN_TEXTS) -> None:
        if window < 1 or min_texts < 1:
            raise ValueError("window and min_texts must be positive")
        self.reference = reference
        self.window = window
        self.min_texts = min(min_texts, window)
        self._extract = _extractors(reference.unk_id, reference.seed)
        self._names = [n for n in reference.features if n in self._extract]
        self._ring = {n: np.zeros((window, len(reference.features[n].proportions)), np.int32)
                      for n in self._names}
        self._sums = {n: np.zeros(len(reference.features[n].proportions), np.int64)
                      for n in self._names}
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Texts in the window (at most ``window``)."""
        with self._lock:
            return self._count

    def observe(self, encodings: Sequence[Encoding], rows: Sequence[np.ndarray]) -> None:
        """Add texts: their encodings (unpadded, or padded with an attention mask) and their
        output rows exactly as ``Engine`` returns them per text."""
        if len(encodings) != len(rows):
            raise ValueError(f"{len(encodings)} encodings but {len(rows)} rows")
        binned = [self._bins(e, r) for e, r in zip(encodings, rows, strict=True)]
        if not binned:
            return
        binned = binned[-self.window:]
        with self._lock:
            for per_text in binned:
                slot = self._next
                for name, counts in per_text.items():
                    self._sums[name] += counts - self._ring[name][slot]
                    self._ring[name][slot] = counts
                self._next = (slot + 1) % self.window
                self._count = min(self._count + 1, self.window)

    def _bins(self, enc: Encoding, row: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name in self._names:
            hist = self.reference.features[name]
            bins = hist.bin_of(self._extract[name](enc, row))
            out[name] = np.bincount(bins, minlength=len(hist.proportions)).astype(np.int32)
        return out

    def counts(self) -> dict[str, np.ndarray]:
        """Per feature, the window's count per bin (a copy)."""
        with self._lock:
            return {n: s.copy() for n, s in self._sums.items()}

    def _ready(self) -> dict[str, np.ndarray]:
        with self._lock:
            if self._count < self.min_texts:
                return {}
            return {n: s.copy() for n, s in self._sums.items() if s.sum() > 0}

    def scores(self) -> dict[str, float]:
        """Feature name -> PSI of the window; empty while fewer than ``min_texts`` texts (a
        feature with no value in the window, e.g. token labels of empty texts, is left out)."""
        return {n: psi(np.asarray(self.reference.features[n].proportions), c)
                for n, c in self._ready().items()}

    def kl(self) -> dict[str, float]:
        """Feature name -> KL(window || reference), smoothed; empty like :meth:`scores`."""
        return {n: kl_divergence(c, np.asarray(self.reference.features[n].proportions))
                for n, c in self._ready().items()}
