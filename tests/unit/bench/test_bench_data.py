"""Benchmark inputs: labelled TSV parsing, flag parsing, the latency sample, the workload grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxguard.bench._data import (
    Workload,
    parse_batches,
    parse_seqs,
    read_dataset,
    sample_indices,
    workload_grid,
)
from onnxguard.errors import UsageError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_with_header_and_index_labels(tmp_path: Path) -> None:
    data = read_dataset(_write(tmp_path, "label\tcontent\n0\tbad film\n1\tgreat film\n\n"),
                        ("NEGATIVE", "POSITIVE"))
    assert data.texts == ("bad film", "great film")
    assert data.labels == (0, 1)
    assert data.labelled


def test_label_names_map_to_indices_case_insensitively(tmp_path: Path) -> None:
    data = read_dataset(_write(tmp_path, "positive\tgreat\nNEGATIVE\tawful\n"),
                        ("NEGATIVE", "POSITIVE"))
    assert data.labels == (1, 0)


def test_plain_text_lines_are_unlabelled(tmp_path: Path) -> None:
    data = read_dataset(_write(tmp_path, "one text\nanother text\n"), ("NEG", "POS"))
    assert data.labels is None
    assert len(data.texts) == 2


def test_text_containing_tabs_keeps_everything_after_the_first(tmp_path: Path) -> None:
    data = read_dataset(_write(tmp_path, "1\tleft\tright\n"), ("NEG", "POS"))
    assert data.texts == ("left\tright",)


@pytest.mark.parametrize(("text", "fragment"), [
    ("0\tlabelled\nunlabelled line\n", "carry a label"),
    ("happy\tgreat\n", "does not know"),
    ("7\tgreat\n", "outside"),
    ("\n\n", "no texts"),
])
def test_bad_data_files_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        read_dataset(_write(tmp_path, text), ("NEG", "POS"))


def test_missing_data_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        read_dataset(tmp_path / "missing.tsv")


def test_flag_parsing() -> None:
    assert parse_batches("1, 8,8,32") == (1, 8, 32)
    assert parse_seqs("128,dynamic") == (128, None)
    assert parse_seqs("DYNAMIC") == (None,)
    for bad in ("", "0", "x", "1,-2"):
        with pytest.raises(UsageError):
            parse_batches(bad)
    for bad in ("", "1", "long", "128,abc"):
        with pytest.raises(UsageError):
            parse_seqs(bad)


def test_sample_is_evenly_spaced_and_bounded() -> None:
    indices = sample_indices(872, 128)
    assert len(indices) == 128
    assert indices == sorted(set(indices))
    assert indices[0] == 0 and indices[-1] > 850
    assert sample_indices(10, 0) == list(range(10))
    assert sample_indices(10, 50) == list(range(10))


def test_workload_grid_ids_and_titles() -> None:
    grid = workload_grid((128, None), (1, 8))
    assert [w.id for w in grid] == ["pad128-b1", "pad128-b8", "dynamic-b1", "dynamic-b8"]
    assert "128 tokens" in Workload(128, 8).title
    assert "dynamic padding" in Workload(None, 8).title
