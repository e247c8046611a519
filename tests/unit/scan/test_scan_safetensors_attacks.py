"""safetensors headers that lie: every check reads only the header and stats the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxguard.scan import ScanReport, scan_path
from unit.scan import attack_samples as samples
from unit.scan._helpers import finding, rules_of


def _scan(make: object, tmp_path: Path) -> ScanReport:
    make(tmp_path / "model")  # type: ignore[operator]
    report = scan_path(tmp_path / "model")
    assert report.failed("high")
    assert report.kind_of("model.safetensors") == "safetensors"
    return report


def test_header_length_beyond_the_file(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_safetensors_header_overflow, tmp_path), "SFT001")
    assert "1,099,511,627,776" in hit.message


def test_duplicate_tensor_name_parser_differential(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_safetensors_duplicate_key, tmp_path), "SFT003")
    assert hit.location == "tensor 'w'"


def test_dtype_times_shape_disagrees_with_span(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_safetensors_span_mismatch, tmp_path), "SFT005")
    assert "F32 × [4] is 16 bytes" in hit.message


def test_span_outside_the_file(tmp_path: Path) -> None:
    assert "SFT006" in rules_of(_scan(samples.make_safetensors_span_outside, tmp_path))


def test_overlapping_tensors(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_safetensors_overlap, tmp_path), "SFT007")
    assert hit.location == "tensor 'b'" and "'a'" in hit.message


def test_gap_between_tensors(tmp_path: Path) -> None:
    assert (
        "4 unused bytes" in finding(_scan(samples.make_safetensors_gap, tmp_path), "SFT008").message
    )


def test_zip_appended_to_safetensors_polyglot(tmp_path: Path) -> None:
    report = _scan(samples.make_safetensors_zip_polyglot, tmp_path)
    assert {"SFT009", "FILE006"} <= rules_of(report)


@pytest.mark.parametrize(
    ("header", "rule"),
    [
        ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, NaN]}}', "SFT002"),
        ('{"w": {"dtype": "F32", "shape": [1], ', "SFT002"),
        ('{"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}', "SFT004"),
        ('{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', "SFT004"),
        ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}', "SFT004"),
        ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}', "SFT004"),
        (
            '{"__metadata__": {"k": 1}, "w": {"dtype": "F32", "shape": [1], '
            '"data_offsets": [0, 4]}}',
            "SFT010",
        ),
    ],
)
def test_malformed_headers(tmp_path: Path, header: str, rule: str) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors").write_bytes(samples.safetensors_bytes(header, b"\x00" * 4))
    assert rule in rules_of(scan_path(d), "medium")


def test_valid_file_with_sub_byte_dtype_and_padding_is_clean(tmp_path: Path) -> None:
    header = (
        '{"__metadata__": {"format": "pt"}, '
        '"a": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}, '
        '"b": {"dtype": "BF16", "shape": [0], "data_offsets": [3, 3]}, '
        '"c": {"dtype": "I64", "shape": [], "data_offsets": [3, 11]}}' + " " * 5
    )
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors").write_bytes(samples.safetensors_bytes(header, b"\x01" * 11))
    report = scan_path(d)
    assert report.findings == (), report.to_text()


def test_real_safetensors_written_by_the_library_is_clean(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    d = tmp_path / "m"
    d.mkdir()
    save_file(
        {"w": torch.ones(3, 5), "b": torch.zeros(7, dtype=torch.bfloat16), "i": torch.arange(4)},
        str(d / "model.safetensors"),
        metadata={"format": "pt"},
    )
    assert scan_path(d).findings == ()
