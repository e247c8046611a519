"""A real cross-encoder, end to end (slow): fine-tuned here, built, validated, reranked.

No cross-encoder can be had offline, so one is made as ``minilm-sst2`` was: the shared MiniLM
encoder gets a fresh single-logit head, trained for a few steps (encoder frozen) to score an
SST-2 sentence's relevance to the query "a great movie" by its sentiment, and saved the way
sentence-transformers' CrossEncoder saves (so the task is detected, not passed).  The bundle's
reranking order must match PyTorch's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SST2_DEV, SST2_MODEL

pytestmark = pytest.mark.slow

QUERY = "a great movie"


def _sst2(limit: int) -> tuple[list[str], np.ndarray]:
    rows = [line.split("\t", 1) for line in SST2_DEV.read_text().splitlines()[1:] if line]
    rows = rows[:limit]
    return [text for _, text in rows], np.array([int(label) for label, _ in rows])


def _make_cross_encoder(out: Path, texts: list[str], labels: np.ndarray) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(SST2_MODEL)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        SST2_MODEL, num_labels=1, ignore_mismatched_sizes=True)
    for param in model.bert.parameters():
        param.requires_grad = False
    optimizer = torch.optim.AdamW(model.classifier.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for step in range(40):
        idx = [(step * 16 + i) % len(texts) for i in range(16)]
        batch = tokenizer([QUERY] * 16, [texts[i] for i in idx], truncation=True,
                          max_length=128, padding=True, return_tensors="pt")
        loss = loss_fn(model(**batch).logits[:, 0],
                       torch.tensor(labels[idx], dtype=torch.float32))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.config.id2label, model.config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    model.config.problem_type = None  # the SST-2 head's single_label needs 2 labels
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SST2_MODEL / name, out / name)
    config = json.loads((out / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    (out / "config.json").write_text(json.dumps(config))


def _pytorch_logits(model_dir: Path, docs: list[str]) -> np.ndarray:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        batch = tokenizer([QUERY] * len(docs), docs, truncation=True, max_length=128,
                          padding=True, return_tensors="pt")
        logits: np.ndarray = model(**batch).logits[:, 0].numpy()
    return logits


def test_cross_encoder_builds_and_reranks_like_pytorch(tmp_path: Path) -> None:
    from onnxguard.convert.pipeline import BuildConfig, build_bundle
    from onnxguard.runtime import Engine

    texts, labels = _sst2(400)
    train, held_texts, held_labels = texts[:320], texts[320:], labels[320:]
    model_dir = tmp_path / "cross-encoder"
    _make_cross_encoder(model_dir, train, labels[:320])
    validation = tmp_path / "validation.txt"
    validation.write_text("\n".join(texts[:240]) + "\n")
    result = build_bundle(BuildConfig(out=tmp_path / "bundle", source=str(model_dir),
                                      validation_data=validation))
    manifest = result.manifest
    assert manifest.task == "reranking"  # detected from the CrossEncoder mark
    assert manifest.stages["validation"]["optimized_fp32"]["passed"] is True
    engine = Engine.from_bundle(tmp_path / "bundle")
    ranked = engine.rerank(QUERY, held_texts)
    expected = 1 / (1 + np.exp(-_pytorch_logits(model_dir, held_texts).astype(np.float64)))
    got = np.empty(len(held_texts))
    for item in ranked:
        got[item["index"]] = item["score"]
    order_torch = np.argsort(-expected, kind="stable")
    rho = float(np.corrcoef(np.argsort(np.argsort(-expected)), np.argsort(np.argsort(-got)))[0, 1])
    print(f"cross-encoder {manifest.precision}: Spearman {rho:.4f} vs PyTorch, max |Δscore| "
          f"{np.abs(got - expected).max():.2e}; build {result.total_seconds:.1f}s")
    if manifest.precision == "fp32":
        assert [r["index"] for r in ranked[:10]] == order_torch[:10].tolist()
        np.testing.assert_allclose(got, expected, atol=1e-4)
    else:  # int8 shipped: the gate's held-out figure is pairwise order agreement
        quant = manifest.stages["quantization"]
        shipped = next(a for a in quant["attempts"] if a["graph"] == quant["chosen"])
        print(f"int8 gate: selection {shipped['selection']}, report {shipped['report']}")
        assert shipped["report"]["agreement"] >= 0.95
        assert "top1_agreement" not in shipped["report"]
    assert rho >= 0.98
    top = [r["index"] for r in ranked[:20]]
    bottom = [r["index"] for r in ranked[-20:]]
    assert held_labels[top].mean() > held_labels[bottom].mean() + 0.5  # it learnt relevance
