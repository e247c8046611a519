"""Shared fixtures: tiny random models of every registered architecture, and bundles built from
them with the real pipeline (cached per session, so each is exported once).

The tiny models are made from transformers configs and saved with ``save_pretrained`` so the
real loading code runs; the tokenizer is a real WordPiece ``tokenizers`` tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The real models and data live in ../shared beside the checkout (CI puts it there);
# ONNXGUARD_SHARED points elsewhere.
SHARED = Path(os.environ.get("ONNXGUARD_SHARED") or Path(__file__).resolve().parents[2] / "shared")
SST2_MODEL = SHARED / "models" / "minilm-sst2"
SST2_DEV = SHARED / "data" / "sst2" / "dev.tsv"

from tiny_models import make_tiny_model  # noqa: E402  (tests/ is on pythonpath)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``factory(model_type, task, sentence_transformers=False) -> model dir`` (cached)."""
    cache: dict[tuple[str, str, bool], Path] = {}

    def factory(model_type: str, task: str, sentence_transformers: bool = False) -> Path:
        key = (model_type, task, sentence_transformers)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"tiny-{model_type}-{task}")
            cache[key] = make_tiny_model(root / "model", model_type, task,
                                         sentence_transformers=sentence_transformers)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def tiny_bundle_factory(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: Callable[..., Path]
) -> Callable[..., Path]:
    """``factory(model_type="bert", task="text-classification", quantize="dynamic") -> bundle``.

    Built once per session with the real pipeline; tests must not modify the returned bundle
    (copy it with shutil.copytree first).
    """
    from onnxguard.convert.pipeline import BuildConfig, build_bundle
    from onnxguard.convert.quantize import QuantizeMode
    from onnxguard.convert.validate import Tolerance

    cache: dict[tuple[str, str, str], Path] = {}

    def factory(model_type: str = "bert", task: str = "text-classification",
                quantize: str = "dynamic") -> Path:
        key = (model_type, task, quantize)
        if key not in cache:
            model_dir = tiny_model_factory(model_type, task,
                                           sentence_transformers=task == "feature-extraction")
            out = tmp_path_factory.mktemp(f"bundle-{model_type}-{task}-{quantize}") / "bundle"
            # Random tiny models have near-tied logits and matmuls too small for int8 to pay
            # off, so the budget is relaxed here; real models meet the default one (slow tests).
            config = BuildConfig(out=out, source=str(model_dir), task=task,
                                 quantize=QuantizeMode(quantize),
                                 tolerance=Tolerance(min_agreement=0.0, min_cosine=0.0,
                                                     min_recall=0.0, min_speedup=0.0))
            build_bundle(config)
            cache[key] = out
        return cache[key]

    return factory
