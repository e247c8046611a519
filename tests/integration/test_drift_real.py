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


def _drift_metrics(url: str) -> tuple[dict[str, float], float]:
    """The served version's PSI per feature, and its window's text count, from /metrics."""
    import httpx

    psi, texts = {}, 0.0
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("onnxguard_drift_psi{"):
            feature = line.split('feature="', 1)[1].split('"', 1)[0]
            psi[feature] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("onnxguard_drift_window_texts{"):
            texts = float(line.rsplit(" ", 1)[1])
    return psi, texts


def test_a_live_server_exports_drift_near_zero_then_alerting(
    engine: Engine, sst2: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    """The server's own window (texts as clients send them, batched with each other) on the
    real bundle: held-out SST-2 stays below WATCH, random vocabulary words go above PSI_ALERT."""
    import random

    import httpx

    from onnxguard.serve.app import create_app
    from onnxguard.serve.settings import RateLimit, ServeConfig
    from onnxguard.serve.testing import BackgroundServer

    held_out = sst2[1]
    config = ServeConfig(bundle=engine.bundle.path, allow_unauthenticated=True,
                         rate_limit=RateLimit(100_000, 60.0), token_limit=None,
                         drift_window=len(held_out))
    words = sorted(w for w in engine.tokenizer.get_vocab() if w.isalpha() and w.isascii())
    rng = random.Random(0)
    shifted = [" ".join(rng.choice(words) for _ in text.split()) for text in held_out]
    with BackgroundServer(create_app(config)) as server, httpx.Client(
        base_url=server.url, timeout=60
    ) as client:
        server.wait_ready()
        for start in range(0, len(held_out), 8):
            sent = client.post("/v1/classify", json={"texts": held_out[start:start + 8]})
            assert sent.status_code == 200, sent.text
        psi, texts = _drift_metrics(server.url)
        assert texts == len(held_out)
        assert set(psi) == {"tokens", "unk_rate", "predicted_class", "confidence"}
        print("held-out SST-2 PSI:", psi)
        assert max(psi.values()) < WATCH, psi
        for start in range(0, len(shifted), 8):
            assert client.post("/v1/classify",
                               json={"texts": shifted[start:start + 8]}).status_code == 200
        psi, _ = _drift_metrics(server.url)
        print("random-word PSI:", psi)
        assert max(psi.values()) > PSI_ALERT, psi
