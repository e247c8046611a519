"""Real models, end to end (slow; CI runs them).

- minilm-sst2 → bundle built with ``--validation-data`` SST-2 dev; plain onnxruntime + tokenizers
  from the bundle files score within 0.5 points of the PyTorch model's accuracy on the dev
  sentences of the *report* split (the selection split chose the candidate); a second build
  chooses the same candidate.
- the embedded default → bundle; sentence embeddings with cosine >= 0.99 to PyTorch mean pooling,
  and when int8 ships, recall@10 of PyTorch's neighbours >= 0.95 on SST-2 sentences the build
  never saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SST2_DEV, SST2_MODEL

pytestmark = pytest.mark.slow


def _sst2() -> tuple[list[str], np.ndarray]:
    rows = [line.split("\t", 1) for line in SST2_DEV.read_text().splitlines()[1:] if line]
    return [text for _, text in rows], np.array([int(label) for label, _ in rows])


def _plain_onnxruntime(bundle: Path, texts: list[str]) -> np.ndarray:
    """The bundle run by plain onnxruntime + tokenizers, no onnxguard code at all."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = json.loads((bundle / "onnxguard.json").read_text())
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    session = ort.InferenceSession(str(bundle / manifest["model"]["file"]),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == manifest["inputs"]
    outputs = []
    for start in range(0, len(texts), 32):
        encodings = tokenizer.encode_batch(texts[start:start + 32])
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        outputs.append(session.run(None, {n: feed[n] for n in names})[0])
    return np.concatenate(outputs)


def _pytorch(model_dir: Path, texts: list[str], *, classify: bool) -> np.ndarray:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    auto = (transformers.AutoModelForSequenceClassification if classify
            else transformers.AutoModel)
    model = auto.from_pretrained(model_dir).eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start:start + 32], padding=True, truncation=True,
                              max_length=128, return_tensors="pt")
            out = model(**batch)
            if classify:
                outputs.append(out.logits.numpy())
            else:  # sentence-transformers mean pooling + normalisation
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                outputs.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(outputs)


def test_sst2_bundle_accuracy_matches_pytorch(tmp_path: Path) -> None:
    from onnxguard.convert.gate import Split, split_of
    from onnxguard.convert.pipeline import BuildConfig, build_bundle

    choices = []
    for i in range(2):
        bundle = tmp_path / f"sst2-{i}"
        result = build_bundle(BuildConfig(out=bundle, source=str(SST2_MODEL),
                                          validation_data=SST2_DEV))
        quant = result.manifest.stages["quantization"]
        choices.append((result.manifest.precision, quant.get("chosen"), quant.get("ranking")))
    assert choices[0] == choices[1], choices  # same source, same shipped candidate
    assert result.manifest.task == "text-classification"
    assert result.manifest.outputs[0] == "logits"
    assert result.manifest.labels == ("NEGATIVE", "POSITIVE")
    assert result.manifest.stages["optimization"]["attention_fused"] is True
    assert result.manifest.stages["validation"]["labelled"] is True
    texts, labels = _sst2()
    held_out = np.array([split_of(t) is Split.REPORT for t in texts])
    report_texts = [t for t, keep in zip(texts, held_out, strict=True) if keep]
    onnx_acc = float((_plain_onnxruntime(bundle, report_texts).argmax(1)
                      == labels[held_out]).mean())
    torch_acc = float((_pytorch(SST2_MODEL, report_texts, classify=True).argmax(1)
                       == labels[held_out]).mean())
    print(f"SST-2 dev report split ({len(report_texts)} sentences) accuracy: PyTorch "
          f"{torch_acc:.4f}, bundle ({result.manifest.precision}, {choices[0][1]}) "
          f"{onnx_acc:.4f}; build {result.total_seconds:.1f}s")
    assert torch_acc - onnx_acc <= 0.005
    if result.manifest.precision == "int8":
        shipped = next(a for a in quant["attempts"] if a["graph"] == quant["chosen"])
        assert shipped["report"]["accuracy_drop_points"] <= 0.5
        assert len(shipped["report"]["accuracy_drop_ci95"]) == 2


def test_default_bundle_embeddings_match_pytorch(tmp_path: Path) -> None:
    from onnxguard.convert.pipeline import BuildConfig, build_bundle
    from onnxguard.source import resolve_source

    bundle = tmp_path / "default"
    result = build_bundle(BuildConfig(out=bundle))
    assert result.manifest.task == "feature-extraction"
    assert result.manifest.pooling is not None and result.manifest.pooling.mode == "mean"
    assert result.manifest.pooling.normalize is True
    assert result.manifest.source["revision"] == "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
    texts, _ = _sst2()
    onnx_vecs = _plain_onnxruntime(bundle, texts)
    torch_vecs = _pytorch(resolve_source(None).path, texts, classify=False)
    cosine = (onnx_vecs * torch_vecs).sum(1) / (
        np.linalg.norm(onnx_vecs, axis=1) * np.linalg.norm(torch_vecs, axis=1))
    print(f"default embeddings vs PyTorch on {len(texts)} SST-2 sentences: min cosine "
          f"{cosine.min():.5f}, mean {cosine.mean():.5f} ({result.manifest.precision}); "
          f"build {result.total_seconds:.1f}s")
    assert cosine.min() >= 0.99
    if result.manifest.precision == "int8":
        from onnxguard.convert.gate import recall_at_k

        recall = recall_at_k(torch_vecs, onnx_vecs, 10)
        print(f"recall@10 of PyTorch's neighbours on SST-2 dev (never seen by the build): "
              f"{recall:.3f}")
        assert recall >= 0.95
