"""The quantization gate's statistics and data handling (pure numpy; fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxguard.convert.gate import (
    Budget,
    Split,
    measure,
    paired_drop_points,
    recall_at_k,
    split_of,
    wilson_lower,
)
from onnxguard.convert.validate import (
    builtin_data,
    make_cases,
    read_validation_data,
)
from onnxguard.errors import UsageError


def test_builtin_set_is_large_varied_and_licensed() -> None:
    from importlib import resources

    data = builtin_data()
    assert len(data.texts) >= 1000 and data.labels is None
    assert len(set(data.texts)) == len(data.texts)
    words = sorted(len(t.split()) for t in data.texts)
    assert words[0] <= 2 and words[-1] >= 90  # one word up to passages past 128 tokens
    described = data.describe()
    assert described["selection_texts"] >= 450 and described["report_texts"] >= 450
    notice = resources.files("onnxguard").joinpath("data/VALIDATION_SENTENCES_LICENSE.md")
    assert "Apache-2.0" in notice.read_text(encoding="utf-8")


def test_split_depends_on_the_text_only() -> None:
    texts = [f"sentence number {i}" for i in range(400)]
    splits = [split_of(t) for t in texts]
    assert splits == [split_of(t) for t in reversed(texts)][::-1]
    assert 150 < splits.count(Split.SELECTION) < 250


def test_cases_cover_every_text_once_per_split() -> None:
    data = builtin_data()
    cases = make_cases(data, 128)
    rows = [i for c in cases if c.split is not None for i in c.rows]
    assert sorted(rows) == list(range(len(data.texts)))
    for case in cases:
        if case.split is not None:
            assert all(split_of(data.texts[i]) is case.split for i in case.rows)
            assert case.texts == tuple(data.texts[i] for i in case.rows)


def test_wilson_lower_bound() -> None:
    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(100, 100) == pytest.approx(0.963, abs=1e-3)  # not 1.0: 100 texts
    assert wilson_lower(530, 541) < 530 / 541
    assert wilson_lower(5400, 5410) > wilson_lower(540, 541)  # more data, tighter bound


def test_paired_drop_interval() -> None:
    ref = np.array([True] * 90 + [False] * 10)
    same = ref.copy()
    drop, (lo, hi) = paired_drop_points(ref, same)
    assert drop == 0.0 and lo == hi == 0.0
    worse = ref.copy()
    worse[:2] = False
    drop, (lo, hi) = paired_drop_points(ref, worse)
    assert drop == pytest.approx(2.0) and lo < 2.0 < hi


def test_recall_at_10_sees_rank_changes_cosine_hides() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 32))
    assert recall_at_k(ref, ref.copy()) == 1.0
    noisy = ref + rng.normal(scale=0.15, size=ref.shape)
    metrics = measure(Split.REPORT, ref, noisy, embeddings=True)
    assert metrics.mean_cosine is not None and metrics.mean_cosine > 0.98
    assert metrics.recall_at_10 is not None and metrics.recall_at_10 < 0.95
    failures = metrics.failures(Budget())
    assert any("recall@10" in f for f in failures)


def test_labels_make_the_budget_an_accuracy_drop() -> None:
    labels = np.array([0, 1] * 300)
    ref = np.eye(2)[labels]
    ref[:30] = np.eye(2)[1 - labels[:30]]  # PyTorch wrong on 30 texts
    out = ref.copy()
    out[30:36] = np.eye(2)[1 - labels[30:36]]  # int8 wrong on 6 more
    m = measure(Split.SELECTION, ref, out, embeddings=False, labels=labels)
    assert m.accuracy_reference == pytest.approx(0.95)
    assert m.accuracy_drop_points == pytest.approx(1.0)
    assert m.failures(Budget(max_accuracy_drop=0.5)) and not m.failures(
        Budget(max_accuracy_drop=1.5))
    assert "accuracy" in m.to_dict() and len(m.to_dict()["accuracy_drop_ci95"]) == 2


def test_unlabelled_budget_is_on_the_lower_bound() -> None:
    ref = np.eye(2)[np.zeros(500, dtype=int)]
    out = ref.copy()
    out[:10] = np.eye(2)[[1] * 10]  # 98% agreement
    m = measure(Split.SELECTION, ref, out, embeddings=False)
    assert m.agreement == pytest.approx(0.98)
    assert m.agreement_lower95 is not None and m.agreement_lower95 < 0.98
    assert m.failures(Budget(min_agreement=0.975)) and not m.failures(Budget(min_agreement=0.95))


def test_validation_file_with_labels(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_text("label\tsentence\n1\tgreat film\n0\tawful film\nPOSITIVE\tloved it\n")
    data = read_validation_data(path, ("NEGATIVE", "POSITIVE"))
    assert data.texts == ("great film", "awful film", "loved it")
    assert data.labels == (1, 0, 1)
    plain = tmp_path / "plain.txt"
    plain.write_text("great film\nawful film\n")
    assert read_validation_data(plain, ("NEGATIVE", "POSITIVE")).labels is None


@pytest.mark.parametrize("body", ["1\tgood\nno label here\n", "7\tgood\n", "MAYBE\tgood\n"])
def test_bad_labels_are_refused(tmp_path: Path, body: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(body)
    with pytest.raises(UsageError):
        read_validation_data(path, ("NEGATIVE", "POSITIVE"))


def test_builtin_texts_demand_a_recall_margin_for_embeddings(tmp_path: Path) -> None:
    """The built-in set flatters neighbour rankings (0.960 there, 0.922 on SST-2 for the same
    graph), so without the user's texts the default recall budget becomes 0.975."""
    from onnxguard.convert.pipeline import (
        BUILTIN_EMBEDDING_MIN_RECALL,
        BuildConfig,
        _with_builtin_recall_margin,
    )
    from onnxguard.convert.validate import Tolerance
    from onnxguard.tasks import Task

    default = BuildConfig(out=tmp_path / "b")
    strict = _with_builtin_recall_margin(default, Task.FEATURE_EXTRACTION)
    assert strict.tolerance.min_recall == BUILTIN_EMBEDDING_MIN_RECALL == 0.975
    assert _with_builtin_recall_margin(default, Task.TEXT_CLASSIFICATION) == default
    own_data = BuildConfig(out=tmp_path / "b", validation_data=tmp_path / "texts.txt")
    assert _with_builtin_recall_margin(own_data, Task.FEATURE_EXTRACTION) == own_data
    explicit = BuildConfig(out=tmp_path / "b", tolerance=Tolerance(min_recall=0.9))
    assert _with_builtin_recall_margin(explicit, Task.FEATURE_EXTRACTION) == explicit
