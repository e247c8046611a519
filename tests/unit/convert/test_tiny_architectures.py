"""Every registered architecture × task builds, validates, quantizes and predicts (tiny models).

The parametrization comes from the registry itself, so a newly registered architecture gets
these tests automatically; `test_registry_is_covered` fails if the tiny-model factory cannot make
one of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from onnxguard.bundle import MODEL_NAME, read_manifest, verify_bundle_files
from onnxguard.runtime import Engine
from onnxguard.tasks import ARCHITECTURES, Task

CASES = [(arch, task.value) for arch in ARCHITECTURES for task in Task]


def test_registry_is_covered() -> None:
    import transformers

    from tiny_models import tiny_config

    for model_type in ARCHITECTURES:
        config = tiny_config(model_type, 100, "text-classification")
        assert isinstance(config, transformers.PretrainedConfig)
        assert config.model_type == model_type


@pytest.mark.parametrize(("model_type", "task"), CASES, ids=[f"{a}-{t}" for a, t in CASES])
def test_build_validate_quantize_predict(
    tiny_bundle_factory: Callable[..., Path], model_type: str, task: str
) -> None:
    bundle = tiny_bundle_factory(model_type, task, "dynamic")
    manifest = verify_bundle_files(bundle)
    assert manifest.task == task
    assert manifest.source["model_type"] == model_type
    stages = manifest.stages
    assert stages["validation"]["export_fp32"]["passed"] is True
    assert stages["validation"]["optimized_fp32"]["passed"] is True
    assert stages["validation"]["optimized_fp32"]["max_abs_diff"] <= 1e-3
    quant = stages["quantization"]
    assert quant["attempts"], "dynamic quantization must have produced at least one candidate"
    assert manifest.precision == "int8"  # the tiny-model budget is relaxed in conftest
    assert not (bundle / "model.fp32.onnx").exists()  # only with keep_fp32 (an int8-size bundle)
    assert stages["export"]["opset"] >= 17

    engine = Engine.from_bundle(bundle)
    if task == "question-answering":
        _check_answer(engine)
        return
    texts = ["the movie was good", "bad", "i love this film , it was great ! " * 3]
    results = engine.predict(texts)
    assert len(results) == len(texts)
    if task == "text-classification":
        assert {r["label"] for r in results} <= {"NEG", "POS"}
        for r in results:
            assert abs(sum(r["scores"].values()) - 1.0) < 1e-5
    elif task == "reranking":
        _check_rerank(engine, results)
    elif task == "feature-extraction":
        vectors = np.array([r["embedding"] for r in results])
        assert vectors.shape == (3, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    else:
        assert [t["token"] for t in results[1]["tokens"]] == ["bad"]
        assert results[1]["tokens"][0]["label"] in {"O", "B-X", "I-X"}


def _check_answer(engine: Engine) -> None:
    """Two named outputs; answers are spans of the context, ranked, within the length limit;
    a long context is read in several windows."""
    assert engine.manifest.outputs == ("start_logits", "end_logits")
    assert engine.labels == []
    context = "the movie was good but the film was bad"
    answers = engine.answer("what was good ?", context, top_k=3, max_answer_len=4)
    assert 1 <= len(answers) <= 3
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True) and 0.0 < scores[0] <= 1.0
    for a in answers:
        assert context[a["start"]:a["end"]] == a["answer"] != ""
        assert len(a["answer"].split()) <= 4
    long_context = "i love this film , it was great ! " * 12
    assert len(engine.windows.windows("what was great ?", long_context, 128)) > 1
    best = engine.answer("what was great ?", long_context)[0]
    assert long_context[best["start"]:best["end"]] == best["answer"]


def _check_rerank(engine: Engine, results: list[dict[str, object]]) -> None:
    """Single texts get a sigmoid score; rerank orders pairs by the pair logits."""
    assert all(0.0 < float(r["score"]) < 1.0 for r in results)  # type: ignore[arg-type]
    docs = ["the movie was good", "bad", "i love this film , it was great !", "it was fine"]
    ranked = engine.rerank("was the film good ?", docs)
    assert sorted(r["index"] for r in ranked) == [0, 1, 2, 3]
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    pairs = [("was the film good ?", d) for d in docs]
    feed = engine.run_batch(engine.tokenizer.encode_batch(pairs))[:, 0]
    expected = 1 / (1 + np.exp(-feed.astype(np.float64)))
    for r in ranked:
        assert r["score"] == pytest.approx(expected[r["index"]], abs=1e-6)
    raw = engine.rerank("was the film good ?", docs, raw_scores=True)
    assert [r["index"] for r in raw] == [r["index"] for r in ranked]
    assert raw[0]["score"] == pytest.approx(float(feed[raw[0]["index"]]), abs=1e-6)
    long_doc = "i love this film , it was great ! " * 40
    cut = engine.rerank("was the film good ?", ["bad", long_doc])
    assert [bool(r.get("truncated")) for r in sorted(cut, key=lambda r: r["index"])] == [
        False, True]
    encoding = engine.encode_pairs("was the film good ?", [long_doc])[0]
    assert len(encoding.ids) == engine.max_length
    assert encoding.tokens[:2] == ["[CLS]", "was"] and encoding.tokens[-1] == "[SEP]"


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_engine_matches_pytorch_on_unseen_shapes(
    tiny_bundle_factory: Callable[..., Path], tiny_model_factory: Callable[..., Path],
    model_type: str,
) -> None:
    """Independent of the build's own validation: the fp32 graph vs transformers directly."""
    import torch
    import transformers

    bundle = tiny_bundle_factory(model_type, "text-classification", "none")
    assert read_manifest(bundle).precision == "fp32"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        tiny_model_factory(model_type, "text-classification")
    ).eval()
    engine = Engine.from_bundle(bundle)
    texts = ["good", "the plot was slow but the acting was great", "no"] * 5  # batch 15
    raw = np.stack(engine.predict_raw(texts, batch_size=16))
    encodings = engine.encode(texts)
    for text, enc, row in zip(texts, encodings, raw, strict=True):
        ids = torch.tensor([enc.ids])
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "token_type_ids" in engine.input_names:
            kwargs["token_type_ids"] = torch.zeros_like(ids)
        with torch.no_grad():
            expected = model(**kwargs).logits[0].numpy()
        np.testing.assert_allclose(row, expected, atol=1e-4, err_msg=text)


def test_manifest_records_source_hashes_and_tools(tiny_bundle_factory: Callable[..., Path],
                                                  tiny_model_factory: Callable[..., Path]) -> None:
    bundle = tiny_bundle_factory("bert", "text-classification", "dynamic")
    data = json.loads((bundle / "onnxguard.json").read_text())
    source_dir = tiny_model_factory("bert", "text-classification")
    assert data["source"]["kind"] == "local"
    assert set(data["source"]["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    import hashlib

    weights = (source_dir / "model.safetensors").read_bytes()
    assert data["source"]["files"]["model.safetensors"]["sha256"] == hashlib.sha256(
        weights).hexdigest()
    assert {"torch", "onnxruntime", "onnx", "transformers"} <= set(data["tools"])
    assert set(data["files"]) == {p.name for p in bundle.iterdir()} - {"onnxguard.json"}
    assert data["model"]["file"] == MODEL_NAME
