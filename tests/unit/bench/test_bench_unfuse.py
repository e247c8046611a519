"""``--layernorm unfused``: the rewritten graph computes the same outputs with standard ops,
and ONNX Runtime does not fuse it back at load (the residual is a Sum)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxguard.bench._prepare import graph_ops, prepare
from onnxguard.convert.unfuse import unfuse_skip_layernorm


def _run(path: Path, session_graph: Path | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if session_graph is not None:
        options.optimized_model_filepath = str(session_graph)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 90, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    names = {i.name for i in session.get_inputs()}
    out: np.ndarray = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
    return out


def test_unfused_graph_matches_the_fused_one(
    tiny_model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    model = prepare(str(tiny_model_factory("bert", "text-classification")), tmp_path,
                    int8=(), layernorm="unfused")
    engines = {e.id: e for e in model.engines}
    fused = tmp_path / "model.opt.onnx"
    unfused = engines["ort-fp32-opt"]
    assert unfused.path != fused and unfused.path.is_file()
    assert graph_ops(fused)["SkipLayerNormalization"] == 4  # 2 layers × 2
    assert "SkipLayerNormalization" not in unfused.graph_ops
    assert unfused.graph_ops["LayerNormalization"] == 4
    assert "4 SkipLayerNormalization split" in unfused.description
    session_graph = tmp_path / "session.onnx"
    np.testing.assert_allclose(_run(unfused.path, session_graph), _run(fused), atol=1e-5)
    # every session option at its default (as the serving runtime loads a bundle): still split
    assert "SkipLayerNormalization" not in graph_ops(session_graph)
    assert graph_ops(session_graph)["LayerNormalization"] == 4


def test_graph_without_skip_layernorm_is_copied(
    tiny_model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    model = prepare(str(tiny_model_factory("bert", "text-classification")), tmp_path, int8=())
    plain = next(e for e in model.engines if e.id == "ort-fp32")
    assert unfuse_skip_layernorm(plain.path, tmp_path / "copy.onnx") == 0
    np.testing.assert_array_equal(_run(tmp_path / "copy.onnx"), _run(plain.path))
