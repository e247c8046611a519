"""Metrics, FLOP counting and the roofline, checked against hand-computed values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from onnxguard.bench._flops import count_flops
from onnxguard.bench._metrics import LatencySummary, f1_score, quality
from onnxguard.bench.roofline import FP32, INT8, KernelRate, measure_kernels, merge


def test_binary_f1_is_the_positive_class_f1() -> None:
    truth = np.array([1, 1, 1, 0, 0, 0])
    predicted = np.array([1, 1, 0, 1, 0, 0])
    # tp=2, fp=1, fn=1 -> 2*2 / (4 + 1 + 1)
    assert f1_score(truth, predicted, 2) == pytest.approx(4 / 6)


def test_multiclass_f1_is_macro() -> None:
    truth = np.array([0, 1, 2, 2])
    predicted = np.array([0, 1, 2, 0])
    per_class = [2 / 3, 1.0, 2 / 3]  # class 0: tp1 fp1; class 1: perfect; class 2: tp1 fn1
    assert f1_score(truth, predicted, 3) == pytest.approx(np.mean(per_class))


def test_latency_summary_orders_percentiles() -> None:
    summary = LatencySummary.of([float(x) for x in range(1, 101)])
    assert summary.count == 100
    assert summary.min == 1 and summary.max == 100
    assert summary.p50 <= summary.p95 <= summary.p99 <= summary.max
    assert summary.mean == pytest.approx(50.5)
    assert LatencySummary.of([]).count == 0


def test_quality_classification_against_labels_and_reference() -> None:
    reference = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    outputs = reference.copy()
    outputs[3] = [0.0, 1.0]  # flips one prediction
    q = quality("int8", "dynamic", "text-classification", outputs, [1, 0, 1, 0], reference, 0.5)
    assert q.accuracy == pytest.approx(0.75)
    assert q.agreement == pytest.approx(0.75)
    assert q.max_abs_diff == pytest.approx(3.0)
    assert q.sequences == 4


def test_quality_embeddings_use_cosine() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((5, 8))
    q = quality("fp32", "pad128", "feature-extraction", reference * 2.0, None, reference, 0.1)
    assert q.accuracy is None and q.agreement is None
    assert q.mean_cosine == pytest.approx(1.0)
    assert q.min_cosine == pytest.approx(1.0)


def test_flop_count_matches_the_bert_formula(
    tiny_model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """Tiny BERT: hidden 32, intermediate 37, 2 layers, pooler 32x32, classifier 32x2."""
    from onnxguard.convert.export import export_onnx, load_torch_model
    from onnxguard.convert.optimize import optimize
    from onnxguard.source import read_config
    from onnxguard.tasks import Task, architecture_for

    model_dir = tiny_model_factory("bert", "text-classification")
    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    exported = export_onnx(load_torch_model(model_dir, Task.TEXT_CLASSIFICATION),
                           task=Task.TEXT_CLASSIFICATION, input_names=inputs, pooling=None,
                           out_path=tmp_path / "m.onnx")
    flops = count_flops(exported.path, 32)
    hidden, inter, layers = 32, 37, 2
    assert flops.per_token == 2 * layers * (4 * hidden * hidden + 2 * hidden * inter)
    assert flops.per_sequence == 2 * (hidden * hidden + hidden * 2)
    assert flops.attention_products == 2 * layers
    assert flops.flops(8, 16) == pytest.approx(
        8 * 16 * flops.per_token + 8 * flops.per_sequence + 4 * 2 * 8 * 16 * 16 * hidden)
    cfg = read_config(model_dir)
    fused = optimize(exported.path, tmp_path / "opt.onnx", architecture_for(cfg), cfg)
    fused_flops = count_flops(fused.path)
    # Fused attention: same matrix work, hidden size read from the Attention weights.
    assert fused_flops.per_token + fused_flops.per_sequence == \
        flops.per_token + flops.per_sequence
    assert fused_flops.attention_products == flops.attention_products
    assert fused_flops.hidden_size == hidden


def test_roofline_kernels_and_merge() -> None:
    rates = measure_kernels(1, [(64, 32, 48)], min_seconds=0.01)
    assert {r.precision for r in rates} == {FP32, INT8}
    assert len(rates) == 4
    assert all(r.gflops > 0 and r.seconds_per_call > 0 for r in rates)
    better = [KernelRate(r.kernel, r.precision, r.m, r.k, r.n, r.gflops * 2, r.seconds_per_call)
              for r in rates]
    roof = merge(1, rates, better)
    assert len(roof.kernels) == 4
    assert roof.peak(FP32) == pytest.approx(2 * max(r.gflops for r in rates
                                                    if r.precision == FP32))
    assert roof.to_dict()["int8_peak_gops"] > 0
