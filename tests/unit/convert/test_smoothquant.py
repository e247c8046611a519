"""``dynamic-int8-smooth-per-token``: the rewrite keeps the fp32 maths, the int8 graph runs on
integer kernels and is closer to fp32 than plain dynamic int8 where activations have outlier
channels, and GPTQ rounding beats round-to-nearest on correlated inputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard.convert.quantize import SMOOTH_PER_TOKEN, QuantizeMode, quantize_candidates
from onnxguard.convert.smoothquant import (
    _per_token,
    _smooth,
    collect_stats,
    gptq_round,
    quantize_smooth_per_token,
)
from onnxguard.errors import QuantizationError

K, N, TOKENS = 64, 48, 10


def _two_layer_graph(path: Path, seed: int = 0) -> Path:
    """x [B, T, K] -> MatMul W1 -> Relu -> MatMul W2 -> y; channel 3 of x is an outlier."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.2, (K, K)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (K, N)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="/layer.0/dense/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="/layer.1/dense/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _feeds(count: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        x = rng.normal(0, 1, (4, TOKENS, K)).astype(np.float32)
        x[..., 3] *= 25.0  # an outlier channel, as MiniLM's 99 and 63
        feeds.append({"x": x})
    return feeds


def _run(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, f)[0] for f in feeds])


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_smoothing_and_per_token_rewrite_keep_the_fp32_outputs(tmp_path: Path) -> None:
    src = _two_layer_graph(tmp_path / "fp32.onnx")
    feeds = _feeds(3)
    stats = collect_stats(src, feeds, tmp_path)
    assert set(stats) == {"/layer.0/dense/MatMul", "/layer.1/dense/MatMul"}
    assert stats["/layer.0/dense/MatMul"].gram.shape == (K, K)
    assert np.argmax(stats["/layer.0/dense/MatMul"].channel_max) == 3
    model = onnx.load(str(src))
    weights, _ = _smooth(model, stats, 0.5)
    _per_token(model, list(weights))
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(model, str(rewritten))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ReduceMin") == ops.count("ReduceMax") == 2
    assert not list(tmp_path.glob("smoothquant.stats*"))  # the stats graph is removed
    np.testing.assert_allclose(_run(rewritten, feeds), _run(src, feeds), rtol=1e-4, atol=1e-4)
    # a constant row (zero range, e.g. an all-zero input) stays finite and exact
    flat = [{"x": np.full((2, TOKENS, K), 0.5, dtype=np.float32)}]
    flat[0]["x"][1] = 0.0
    np.testing.assert_allclose(_run(rewritten, flat), _run(src, flat), rtol=1e-4, atol=1e-5)


def test_int8_graph_runs_integer_kernels_and_beats_plain_dynamic(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _two_layer_graph(tmp_path / "fp32.onnx")
    calibration, held_out = _feeds(4, seed=1), _feeds(3, seed=2)
    dst = tmp_path / "int8.onnx"
    quantize_smooth_per_token(src, dst, calibration, tmp_path)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops.count("MatMulInteger") == 2 and "MatMul" not in ops
    plain = tmp_path / "plain.onnx"
    quantize_dynamic(str(src), str(plain), weight_type=QuantType.QInt8, per_channel=True)
    reference = _run(src, held_out)
    ours, theirs = (_relative_error(reference, _run(p, held_out)) for p in (dst, plain))
    assert ours < 0.5 * theirs, (ours, theirs)
    assert ours < 0.02


def test_gptq_rounding_beats_round_to_nearest_on_correlated_inputs() -> None:
    rng = np.random.default_rng(0)
    mix = rng.normal(0, 1, (K, K))
    x = rng.normal(0, 1, (2000, K)) @ mix  # strongly correlated channels
    w = rng.normal(0, 0.1, (K, N))
    q, scale = gptq_round(w, x.T @ x)
    assert q.dtype == np.int8 and scale.shape == (N,) and np.abs(q).max() <= 127
    rtn = np.clip(np.round(w / scale), -127, 127) * scale
    gptq_error = np.linalg.norm(x @ (q * scale - w))
    rtn_error = np.linalg.norm(x @ (rtn - w))
    assert gptq_error < 0.8 * rtn_error
    # an identity Gram matrix has nothing to feed forward: plain rounding
    q_identity, _ = gptq_round(w, np.eye(K), damp=0.0)
    np.testing.assert_array_equal(q_identity, np.round(w / scale).astype(np.int8))


def test_candidate_needs_calibration_feeds(tmp_path: Path) -> None:
    src = _two_layer_graph(tmp_path / "fp32.onnx")
    with pytest.raises(QuantizationError, match="calibration"):
        next(quantize_candidates(src, tmp_path, [SMOOTH_PER_TOKEN], []))
    graph = next(quantize_candidates(src, tmp_path, [SMOOTH_PER_TOKEN], _feeds(2)))
    assert graph.candidate.kind is QuantizeMode.DYNAMIC and graph.path.is_file()


def test_tiny_embedding_model_gets_the_candidate(
    tiny_model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """On a real (tiny) BERT the candidate is built, judged and ranked below full int8."""
    from onnxguard.convert.pipeline import BuildConfig, build_bundle
    from onnxguard.convert.validate import Tolerance

    result = build_bundle(BuildConfig(
        out=tmp_path / "out", task="feature-extraction",
        source=str(tiny_model_factory("bert", "feature-extraction", sentence_transformers=True)),
        tolerance=Tolerance(min_recall=1.01, min_speedup=0.0),
    ))
    quant = result.manifest.stages["quantization"]
    attempts = {a["graph"]: a for a in quant["attempts"]}
    assert "dynamic-int8-smooth-per-token" in attempts
    smooth = attempts["dynamic-int8-smooth-per-token"]
    assert smooth["cost"]["ops"]["MatMulInteger"] >= 1
    assert smooth["estimated_speedup_vs_fp32"] < attempts["dynamic-int8"][
        "estimated_speedup_vs_fp32"]


def test_bench_builds_the_candidate_without_calibration_file(
    tiny_model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """``bench --int8 dynamic-int8-smooth-per-token`` calibrates on the built-in selection split."""
    from onnxguard.bench._prepare import graph_ops, prepare

    model = prepare(str(tiny_model_factory("bert", "text-classification")), tmp_path,
                    int8=("dynamic-int8-smooth-per-token",))
    engine = next(e for e in model.engines if e.role == "candidate")
    assert "dynamic-int8-smooth-per-token" in engine.description
    assert graph_ops(engine.path)["MatMulInteger"] >= 1
