"""Drift statistics: PSI/KL arithmetic, the reference's features per task, its strict reader,
the sliding window (slides, keeps only counts, is thread-safe)."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
from tokenizers import Encoding, Tokenizer

from onnxguard._tokenize import load_tokenizer, unk_id_of
from onnxguard.drift import (
    MIN_TEXTS,
    PSI_ALERT,
    WATCH,
    DriftWindow,
    Histogram,
    Reference,
    direction,
    kl_divergence,
    psi,
    reference_from,
)
from onnxguard.errors import BundleError
from onnxguard.tasks import Task
from tiny_models import make_tokenizer_json

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(make_tokenizer_json(), 64)


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[Encoding]:
    return list(tokenizer.encode_batch(texts))


def _texts(n: int, words: tuple[int, int] = (3, 12), seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = ["good", "bad", "movie", "the", "a", "film", "great", "plot", "actor", "boring"]
    return [" ".join(rng.choice(vocab, int(rng.integers(*words)))) for _ in range(n)]


def _logits(n: int, shift: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.normal(0, 2, (n, 2)).astype(np.float32) + np.array([shift, 0], np.float32))


# --- psi / kl ---------------------------------------------------------------------------------
def test_psi_is_zero_for_equal_distributions_and_counts_equal_shares() -> None:
    shares = np.array([0.2, 0.3, 0.5])
    assert psi(shares, shares) == 0.0
    assert psi(shares, shares * 1000) == pytest.approx(0.0)  # counts are normalized


def test_psi_matches_the_textbook_formula_and_is_symmetric() -> None:
    e, a = np.array([0.25, 0.25, 0.5]), np.array([0.1, 0.4, 0.5])
    expected = (0.1 - 0.25) * np.log(0.1 / 0.25) + (0.4 - 0.25) * np.log(0.4 / 0.25)
    assert psi(e, a) == pytest.approx(expected)
    assert psi(a, e) == pytest.approx(psi(e, a))


def test_psi_empty_bin_is_large_but_finite() -> None:
    value = psi(np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    assert np.isfinite(value) and value > PSI_ALERT


def test_psi_refuses_different_bins() -> None:
    with pytest.raises(ValueError, match="bins differ"):
        psi(np.array([0.5, 0.5]), np.array([0.2, 0.3, 0.5]))


def test_kl_is_zero_ish_when_equal_and_grows_with_shift() -> None:
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    assert kl_divergence(np.array([250, 250, 250, 250]), ref) == pytest.approx(0.0, abs=1e-9)
    near = kl_divergence(np.array([240, 260, 250, 250]), ref)
    far = kl_divergence(np.array([1000, 0, 0, 0]), ref)
    assert 0 < near < 0.01 < far and np.isfinite(far)


def test_thresholds_are_the_rule_of_thumb() -> None:
    assert (WATCH, PSI_ALERT) == (0.1, 0.25)


# --- reference ------------------------------------------------------------------------------
def test_classifier_reference_features(tokenizer: Tokenizer) -> None:
    encodings = _encode(tokenizer, _texts(300))
    ref = reference_from(encodings, _logits(300), Task.TEXT_CLASSIFICATION, unk_id_of(tokenizer))
    assert set(ref.features) == {"tokens", "unk_rate", "predicted_class", "confidence"}
    assert ref.texts == 300 and ref.unk_id == tokenizer.token_to_id("[UNK]")
    assert ref.features["predicted_class"].edges == (0.5,)
    for hist in ref.features.values():
        assert len(hist.proportions) == len(hist.edges) + 1
        assert sum(hist.proportions) == pytest.approx(1.0)
    # deciles: no bin holds much more than its tenth (ties on integer lengths merge edges)
    assert max(ref.features["confidence"].proportions) <= 0.12


def test_no_unk_id_means_no_unk_feature(tokenizer: Tokenizer) -> None:
    ref = reference_from(_encode(tokenizer, _texts(50)), _logits(50),
                         Task.TEXT_CLASSIFICATION, None)
    assert "unk_rate" not in ref.features and ref.unk_id is None


def test_token_length_counts_the_attention_mask_not_padding(tokenizer: Tokenizer) -> None:
    """A tokenizer that pads to a fixed length (the default model's pads to 128) must not make
    every text look 128 tokens long."""
    texts = _texts(200)
    plain = _encode(tokenizer, texts)
    padded_tok = Tokenizer.from_str(tokenizer.to_str())
    padded_tok.enable_padding(length=64, pad_id=0, pad_token="[PAD]")
    padded = _encode(padded_tok, texts)
    assert all(len(e.ids) == 64 for e in padded)
    a = reference_from(plain, _logits(200), Task.TEXT_CLASSIFICATION, 1)
    b = reference_from(padded, _logits(200), Task.TEXT_CLASSIFICATION, 1)
    assert a.features["tokens"] == b.features["tokens"]
    assert a.features["unk_rate"] == b.features["unk_rate"]


def test_embedding_features_and_normalized_output_drops_the_norm(tokenizer: Tokenizer) -> None:
    encodings = _encode(tokenizer, _texts(200))
    raw = [v for v in RNG.normal(0, 1, (200, 16)).astype(np.float32)]
    ref = reference_from(encodings, raw, Task.FEATURE_EXTRACTION, 1)
    assert {"embedding_norm", "projection"} <= set(ref.features)
    unit = [(v / np.linalg.norm(v)).astype(np.float32) for v in raw]  # norms 1 +- rounding
    ref = reference_from(encodings, unit, Task.FEATURE_EXTRACTION, 1)
    assert "embedding_norm" not in ref.features and "projection" in ref.features


def test_projection_direction_is_fixed_and_unit() -> None:
    d = direction(14, 384)
    assert d.shape == (384,) and np.linalg.norm(d) == pytest.approx(1.0)
    assert np.array_equal(d, direction(14, 384))
    assert not np.allclose(d, direction(15, 384))


def test_token_classification_and_reranking_features(tokenizer: Tokenizer) -> None:
    encodings = _encode(tokenizer, _texts(100))
    rows = [RNG.normal(0, 1, (len(e.ids), 3)) for e in encodings]
    ref = reference_from(encodings, rows, Task.TOKEN_CLASSIFICATION, 1)
    assert ref.features["token_label"].edges == (0.5, 1.5)
    assert "token_confidence" in ref.features
    ref = reference_from(encodings, [RNG.normal(0, 1, (1,)) for _ in encodings],
                         Task.RERANKING, 1)
    assert "score" in ref.features


def test_reference_round_trips_through_json(tokenizer: Tokenizer) -> None:
    ref = reference_from(_encode(tokenizer, _texts(120)), _logits(120),
                         Task.TEXT_CLASSIFICATION, 1)
    again = Reference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again == ref


def _good() -> dict[str, Any]:
    return {"texts": 10, "unk_id": 100, "seed": 14, "features": {
        "tokens": {"edges": [5.0, 9.0], "proportions": [0.2, 0.5, 0.3]},
        "unk_rate": {"edges": [1e-9, 0.05, 0.2], "proportions": [1.0, 0.0, 0.0, 0.0]}}}


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("texts"), "'texts' must be a positive integer"),
    (lambda d: d.update(texts=True), "'texts' must be a positive integer"),
    (lambda d: d.update(unk_id="100"), "'unk_id'"),
    (lambda d: d.update(unk_id=None), "'unk_rate' needs an 'unk_id'"),
    (lambda d: d.update(seed=1.5), "'seed'"),
    (lambda d: d.update(extra=1), "unknown keys"),
    (lambda d: d.update(features={}), "non-empty object"),
    (lambda d: d["features"].update(colour={"edges": [], "proportions": [1.0]}),
     "unknown feature 'colour'"),
    (lambda d: d["features"]["tokens"].update(edges=[9.0, 5.0]), "increase strictly"),
    (lambda d: d["features"]["tokens"].update(edges=[5.0, float("nan")]), "finite"),
    (lambda d: d["features"]["tokens"].update(proportions=[0.5, 0.5]), "need 3 proportions"),
    (lambda d: d["features"]["tokens"].update(proportions=[0.5, 0.5, 0.5]), "sum to 1"),
    (lambda d: d["features"]["tokens"].update(proportions=[-0.5, 1.0, 0.5]), "non-negative"),
    (lambda d: d["features"]["tokens"].pop("edges"), "'edges' and 'proportions'"),
    (lambda d: d["features"].update(tokens=[1, 2]), "'edges' and 'proportions'"),
])
def test_from_dict_is_strict(change: Any, message: str) -> None:
    Reference.from_dict(_good())
    data = _good()
    change(data)
    with pytest.raises(BundleError, match=message):
        Reference.from_dict(data)


def test_from_dict_refuses_a_non_object() -> None:
    with pytest.raises(BundleError, match="expected an object"):
        Reference.from_dict([1, 2])  # type: ignore[arg-type]


# --- window ---------------------------------------------------------------------------------
def _ref(tokenizer: Tokenizer, n: int = 500) -> Reference:
    return reference_from(_encode(tokenizer, _texts(n)), _logits(n), Task.TEXT_CLASSIFICATION,
                          unk_id_of(tokenizer))


def test_window_in_distribution_is_quiet_and_shift_alerts(tokenizer: Tokenizer) -> None:
    ref = _ref(tokenizer)
    window = DriftWindow(ref, window=500)
    window.observe(_encode(tokenizer, _texts(500, seed=1)), _logits(500, seed=1))
    assert window.count == 500
    quiet = window.scores()
    assert set(quiet) == set(ref.features) and max(quiet.values()) < WATCH
    assert max(window.kl().values()) < WATCH
    long = DriftWindow(ref, window=500)
    long.observe(_encode(tokenizer, _texts(500, words=(30, 60), seed=2)), _logits(500, seed=2))
    assert long.scores()["tokens"] > PSI_ALERT
    assert long.scores()["predicted_class"] < WATCH  # same outputs: only length moved
    sure = DriftWindow(ref, window=500)
    sure.observe(_encode(tokenizer, _texts(500, seed=3)), _logits(500, shift=8.0, seed=3))
    assert sure.scores()["predicted_class"] > PSI_ALERT
    assert sure.scores()["confidence"] > PSI_ALERT


def test_unknown_tokens_alert(tokenizer: Tokenizer) -> None:
    window = DriftWindow(_ref(tokenizer), window=200)
    texts = ["good 你好 世界 movie ☃ ☃" for _ in range(200)]
    window.observe(_encode(tokenizer, texts), _logits(200))
    assert window.scores()["unk_rate"] > PSI_ALERT


def test_no_scores_before_min_texts(tokenizer: Tokenizer) -> None:
    window = DriftWindow(_ref(tokenizer), window=1000)
    window.observe(_encode(tokenizer, _texts(MIN_TEXTS - 1)), _logits(MIN_TEXTS - 1))
    assert window.scores() == {} and window.kl() == {}
    window.observe(_encode(tokenizer, _texts(1)), _logits(1))
    assert len(window.scores()) == 4


def test_window_slides_old_texts_out(tokenizer: Tokenizer) -> None:
    ref = _ref(tokenizer)
    window = DriftWindow(ref, window=200)
    window.observe(_encode(tokenizer, _texts(200, words=(30, 60))), _logits(200))
    assert window.scores()["tokens"] > PSI_ALERT
    for start in range(0, 200, 50):  # replaced piecewise by in-distribution texts
        window.observe(_encode(tokenizer, _texts(50, seed=10 + start)), _logits(50, seed=start))
    assert window.count == 200
    assert window.scores()["tokens"] < WATCH
    assert int(window.counts()["tokens"].sum()) == 200


def test_one_batch_bigger_than_the_window_keeps_its_last_texts(tokenizer: Tokenizer) -> None:
    ref = _ref(tokenizer)
    window, last_only = DriftWindow(ref, window=100), DriftWindow(ref, window=100)
    texts = _texts(50, words=(30, 60)) + _texts(100)
    window.observe(_encode(tokenizer, texts), _logits(50) + _logits(100))
    last_only.observe(_encode(tokenizer, _texts(100)), _logits(100))
    assert window.count == 100
    assert window.scores() == last_only.scores()


def test_window_keeps_no_text(tokenizer: Tokenizer) -> None:
    window = DriftWindow(_ref(tokenizer), window=100)
    window.observe(_encode(tokenizer, ["a secret sentence about the plot"] * 3), _logits(3))
    import pickle

    state = {k: v for k, v in vars(window).items() if k not in ("_lock", "_extract")}
    dumped = pickle.dumps(state)
    assert b"secret" not in dumped and b"plot" not in dumped
    for ring in window._ring.values():
        assert ring.dtype == np.int32 and ring.max() <= 1


def test_window_is_thread_safe(tokenizer: Tokenizer) -> None:
    window = DriftWindow(_ref(tokenizer), window=10_000, min_texts=1)
    encodings = _encode(tokenizer, _texts(20))
    rows = _logits(20)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                window.observe(encodings, rows)
                window.scores()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert window.count == 8 * 50 * 20
    assert all(int(c.sum()) == 8000 for n, c in window.counts().items())


def test_observe_refuses_mismatched_rows(tokenizer: Tokenizer) -> None:
    window = DriftWindow(_ref(tokenizer))
    with pytest.raises(ValueError, match="2 encodings but 1 rows"):
        window.observe(_encode(tokenizer, ["a", "b"]), _logits(1))


def test_histogram_bins_are_left_closed() -> None:
    hist = Histogram((1.0, 2.0), (0.3, 0.3, 0.4))
    assert hist.bin_of(np.array([0.5, 1.0, 1.5, 2.0, 9.0])).tolist() == [0, 1, 1, 2, 2]
