"""Drift on the real minilm-sst2 classifier (slow: one real build, ~30 s).

The bundle is built with ``--validation-data`` = the even lines of SST-2 dev, so its manifest's
reference describes them; the odd lines (never seen by the build) must look in-distribution
(largest-feature PSI below WATCH), and shifted traffic must be far above PSI_ALERT: German,
French and Chinese movie reviews (tests/data/drift), random vocabulary words, very long inputs.
``scripts/drift_check.py`` prints the same figures for a bundle and a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from conftest import SST2_DEV, SST2_MODEL
from onnxguard.drift import PSI_ALERT, WATCH, DriftWindow
from onnxguard.runtime import Engine, rows_per_text

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data" / "drift"


@pytest.fixture(scope="module")
def sst2() -> tuple[list[str], list[str]]:
    texts = [line.split("\t", 1)[1] for line in SST2_DEV.read_text().splitlines()[1:] if line]
    return texts[0::2], texts[1::2]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory,
           sst2: tuple[list[str], list[str]]) -> Engine:
    from onnxguard.convert.pipeline import BuildConfig, build_bundle

    root = tmp_path_factory.mktemp("drift")
    reference_file = root / "reference.txt"
    reference_file.write_text("\n".join(sst2[0]) + "\n", encoding="utf-8")
    build_bundle(BuildConfig(out=root / "bundle", source=str(SST2_MODEL),
                             validation_data=reference_file))
    return Engine.from_bundle(root / "bundle")


def _scores(engine: Engine, texts: Sequence[str]) -> dict[str, float]:
    assert engine.drift_reference is not None
    window = DriftWindow(engine.drift_reference, window=len(texts),
                         min_texts=len(texts))
    encodings = engine.encode(texts)
    window.observe(encodings, rows_per_text(engine.run_batch, encodings, 32, engine.task))
    scores = window.scores()
    print(f"{len(texts)} texts: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return scores


def test_reference_is_recorded_for_the_validation_texts(
    engine: Engine, sst2: tuple[list[str], list[str]]
) -> None:
    ref = engine.drift_reference
    assert ref is not None and ref.texts == len(sst2[0]) == 436
    assert set(ref.features) == {"tokens", "unk_rate", "predicted_class", "confidence"}
    assert engine.unk_id == ref.unk_id == 100


def test_held_out_sst2_is_in_distribution(
    engine: Engine, sst2: tuple[list[str], list[str]]
) -> None:
    assert max(_scores(engine, sst2[1]).values()) < WATCH


def test_other_languages_alert(engine: Engine) -> None:
    texts = {lang: (DATA / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
             for lang in ("german", "french", "chinese")}
    # 108 texts: in-distribution windows that small reach about 0.2 (p95); these are far above
    together = _scores(engine, [t for lines in texts.values() for t in lines])
    assert max(together.values()) > 4 * PSI_ALERT
    assert _scores(engine, texts["chinese"])["unk_rate"] > 4 * PSI_ALERT
    for lang in ("german", "french"):
        assert max(_scores(engine, texts[lang]).values()) > 4 * PSI_ALERT


def test_random_tokens_alert(engine: Engine, sst2: tuple[list[str], list[str]]) -> None:
    vocab = sorted(t for t in engine.tokenizer.get_vocab()
                   if t.isalpha() and not t.startswith(("[", "<", "##")))
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(vocab, max(1, len(t.split())))) for t in sst2[1]]
    assert max(_scores(engine, texts).values()) > PSI_ALERT


def test_very_long_inputs_alert(engine: Engine, sst2: tuple[list[str], list[str]]) -> None:
    live = sst2[1]
    texts = [" ".join(live[(i + k) % len(live)] for k in range(12)) for i in range(len(live))]
    assert _scores(engine, texts)["tokens"] > PSI_ALERT
