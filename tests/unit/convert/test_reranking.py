"""Reranking: offline detection of cross-encoders, pair validation cases and the ranking gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxguard.convert.gate import Budget, Split, measure_ranking, relevance_scores
from onnxguard.convert.validate import ValidationData, builtin_data, make_cases
from onnxguard.errors import TaskMismatchError
from onnxguard.tasks import Task, detect_task, resolve_task

CLASSIFIER = {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}


def test_cross_encoder_marks_are_detected(tmp_path: Path) -> None:
    marked = CLASSIFIER | {"sentence_transformers": {"activation_fn": "torch.nn.Sigmoid"}}
    assert detect_task(tmp_path, marked) is Task.RERANKING
    old = CLASSIFIER | {"sbert_ce_default_activation_function": "torch.nn.Sigmoid"}
    assert detect_task(tmp_path, old) is Task.RERANKING
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"model_type": "CrossEncoder"}))
    assert detect_task(tmp_path, CLASSIFIER) is Task.RERANKING


def test_plain_classifiers_are_not_relabelled(tmp_path: Path) -> None:
    """A 1-label classifier may be a regressor: only --task reranking makes it a reranker."""
    one_label = CLASSIFIER | {"id2label": {"0": "LABEL_0"}}
    assert detect_task(tmp_path, one_label) is Task.TEXT_CLASSIFICATION
    assert resolve_task(tmp_path, one_label, "reranking") is Task.RERANKING
    marks_without_head = {"model_type": "bert", "architectures": ["BertModel"],
                          "sentence_transformers": {"activation_fn": "torch.nn.Sigmoid"}}
    assert detect_task(tmp_path, marks_without_head) is Task.FEATURE_EXTRACTION
    with pytest.raises(TaskMismatchError, match="ForSequenceClassification"):
        resolve_task(tmp_path, marks_without_head, "reranking")


def test_pair_cases_pair_each_text_with_the_next() -> None:
    data = builtin_data()
    single, pairs = make_cases(data, 128), make_cases(data, 128, pairs=True)
    assert [c.texts for c in single] == [c.texts for c in pairs]
    assert all(not c.documents for c in single)
    following = dict(zip(data.texts, data.texts[1:] + data.texts[:1], strict=True))
    for case in pairs:
        assert len(case.documents) == len(case.texts)
        if case.split is not None:
            assert case.documents == tuple(following[t] for t in case.texts)
    small = ValidationData(("a b", "c d", "e f"), None, "test")
    assert make_cases(small, 16, pairs=True)[1].documents == ("c d", "e f", "a b")


def test_relevance_scores_follow_the_runtime() -> None:
    one = np.array([[2.0], [-1.0]])
    np.testing.assert_allclose(relevance_scores(one), [2.0, -1.0])
    two = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(relevance_scores(two), [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))])


def test_ranking_gate_counts_order_swaps_within_groups() -> None:
    ref = [np.array([[3.0], [2.0], [1.0], [0.0]])]
    same_order = [np.array([[30.0], [2.5], [1.1], [-9.0]])]  # scale changes, order kept
    kept = measure_ranking(Split.SELECTION, ref, same_order)
    assert kept.agreement == 1.0 and kept.texts == 4
    assert not kept.failures(Budget(min_agreement=0.5))
    assert kept.failures(Budget())  # six comparisons: the 95% bound is honest about it
    swapped = [np.array([[3.0], [1.0], [2.0], [0.0]])]  # one of six comparisons flips
    metrics = measure_ranking(Split.SELECTION, ref, swapped)
    assert metrics.agreement == pytest.approx(5 / 6)
    assert metrics.failures(Budget(min_agreement=0.4)) == []
    assert "agreement" in metrics.failures(Budget(min_agreement=0.95))[0]
    # groups are compared only within themselves: a shift between groups changes nothing
    shifted = measure_ranking(Split.SELECTION, ref * 2, [ref[0], ref[0] + 100.0])
    assert shifted.agreement == 1.0
    tied = measure_ranking(Split.SELECTION, [np.zeros((3, 1))], [np.array([[1.0], [2.0], [3.0]])])
    assert tied.agreement == 1.0 and tied.agreement_lower95 == 1.0


def test_runtime_scores_one_logit_and_two_label_heads() -> None:
    from onnxguard.runtime import rank_results

    one = rank_results(np.array([[-1.0], [2.0], [0.5]]), [False, True, False])
    assert [r["index"] for r in one] == [1, 2, 0]
    assert one[0] == {"index": 1, "score": pytest.approx(1 / (1 + np.exp(-2.0))),
                      "truncated": True}
    two = rank_results(np.array([[2.0, 0.0], [0.0, 3.0]]), [False, False])
    assert [r["index"] for r in two] == [1, 0]
    assert two[0]["score"] == pytest.approx(1 / (1 + np.exp(-3.0)))  # softmax of the last label
    raw = rank_results(np.array([[2.0, 0.0], [0.0, 3.0]]), [False, False], raw_scores=True)
    assert [r["score"] for r in raw] == [3.0, 0.0]
    tied = rank_results(np.array([[1.0], [1.0]]), [False, False])
    assert [r["index"] for r in tied] == [0, 1]  # ties keep the input order
