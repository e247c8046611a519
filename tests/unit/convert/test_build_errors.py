"""Bad input gets a clear error with a hint, a documented exit code, and nothing half-written."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from onnxguard.convert import pipeline
from onnxguard.convert.pipeline import BuildConfig, build_bundle
from onnxguard.convert.quantize import QuantizeMode
from onnxguard.convert.validate import Tolerance
from onnxguard.errors import (
    CorruptWeightsError,
    DiskFullError,
    MissingTokenizerError,
    OutputExistsError,
    OutputNotReplaceableError,
    ScanFindingsError,
    ScanIncompleteError,
    SourceNotFoundError,
    UnsafeFormatError,
    UnsupportedModelError,
    ValidationFailedError,
)

FAST = {"quantize": QuantizeMode.NONE}


def _copy_model(tiny_model_factory: Callable[..., Path], tmp_path: Path) -> Path:
    src = tiny_model_factory("bert", "text-classification")
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxguard", *args], capture_output=True,
                          text=True, input=stdin, timeout=300)


def test_missing_directory_exit_2_with_hint(tmp_path: Path) -> None:
    """A path that does not exist is a usage error (exit 2), as for every other command."""
    result = run_cli("build", str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "hint:" in result.stderr
    assert not (tmp_path / "out").exists()


def test_file_instead_of_directory(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(SourceNotFoundError, match="is a file"):
        build_bundle(BuildConfig(out=tmp_path / "out", source=str(tmp_path / "f.txt")))


def test_missing_tokenizer(tiny_model_factory: Callable[..., Path], tmp_path: Path) -> None:
    model = _copy_model(tiny_model_factory, tmp_path)
    (model / "tokenizer.json").unlink()
    with pytest.raises(MissingTokenizerError) as info:
        build_bundle(BuildConfig(out=tmp_path / "out", source=str(model), **FAST))
    assert info.value.hint and "tokenizer" in info.value.hint
    assert not (tmp_path / "out").exists()


def test_unknown_architecture_lists_supported(tmp_path: Path) -> None:
    model = tmp_path / "gpt"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError) as info:
        build_bundle(BuildConfig(out=tmp_path / "out", source=str(model)))
    assert "gpt2" in info.value.message
    assert info.value.hint and "bert" in info.value.hint and "deberta-v2" in info.value.hint


@pytest.mark.parametrize("damage", ["truncated", "garbage-header"])
def test_corrupt_weights(tiny_model_factory: Callable[..., Path], tmp_path: Path,
                         damage: str) -> None:
    model = _copy_model(tiny_model_factory, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 64)
    # The source scan runs before anything is loaded, so damaged weights stop the build there
    # (a lying header and a truncated download look the same to a fail-closed scanner).
    expected = ScanFindingsError if damage == "truncated" else ScanIncompleteError
    with pytest.raises(expected) as info:
        build_bundle(BuildConfig(out=tmp_path / "out", source=str(model), **FAST))
    assert "model.safetensors" in info.value.message and info.value.hint
    assert info.value.exit_code == 6
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_corrupt_weights_caught_by_loader_too(tiny_model_factory: Callable[..., Path],
                                              tmp_path: Path) -> None:
    """Defence in depth: the loader's own header check, independent of the scanner."""
    from onnxguard.convert.export import check_safetensors

    model = _copy_model(tiny_model_factory, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptWeightsError) as info:
        check_safetensors(weights)
    assert "corrupt or truncated" in info.value.message

    assert _leftovers(tmp_path) == []


def test_pickle_checkpoint_refused(tiny_model_factory: Callable[..., Path],
                                   tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    model = _copy_model(tiny_model_factory, tmp_path)
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    with pytest.raises(UnsafeFormatError) as info:
        build_bundle(BuildConfig(out=tmp_path / "out", source=str(model), **FAST))
    assert "pytorch_model.bin" in info.value.message
    assert info.value.hint and "--allow-pickle" in info.value.hint


def test_force_replaces_only_a_bundle(
    tiny_model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """--force never deletes user data: a folder of other files is refused even with it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    model = tiny_model_factory("bert", "text-classification")
    with pytest.raises(OutputExistsError):
        build_bundle(BuildConfig(out=out, source=str(model), **FAST))
    with pytest.raises(OutputNotReplaceableError) as info:
        build_bundle(BuildConfig(out=out, source=str(model), force=True, **FAST))
    assert "not an onnxguard bundle" in info.value.message and info.value.exit_code == 8
    assert info.value.hint and "--force only replaces" in info.value.hint
    assert (out / "precious.txt").read_text() == "keep me"
    bundle = tmp_path / "bundle"
    build_bundle(BuildConfig(out=bundle, source=str(model), **FAST))
    first = (bundle / "onnxguard.json").stat().st_ino
    build_bundle(BuildConfig(out=bundle, source=str(model), force=True, **FAST))
    assert (bundle / "onnxguard.json").stat().st_ino != first  # replaced by the new build
    (bundle / "notes.txt").write_text("mine")
    with pytest.raises(OutputNotReplaceableError, match=r"notes\.txt"):
        build_bundle(BuildConfig(out=bundle, source=str(model), force=True, **FAST))
    assert (bundle / "notes.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == []


def test_force_never_replaces_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxguard.bundle import prepare_output

    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    for out in (".", str(work), ".."):
        result = subprocess.run(
            [sys.executable, "-m", "onnxguard", "build", "-o", out, "--force"], cwd=work,
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 8, result.stderr
        assert "current directory" in result.stderr and "hint:" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["precious.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(OutputNotReplaceableError):  # even empty: publishing renames it
        prepare_output(Path("."), force=True)


def test_validation_failure_fails_build(tiny_model_factory: Callable[..., Path],
                                        tmp_path: Path) -> None:
    model = tiny_model_factory("bert", "text-classification")
    config = BuildConfig(out=tmp_path / "out", source=str(model),
                         tolerance=Tolerance(fp32_atol=0.0, fp32_min_cosine=1.01), **FAST)
    with pytest.raises(ValidationFailedError) as info:
        build_bundle(config)
    assert info.value.exit_code == 5 and "does not match PyTorch" in info.value.message
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_no_space_left_leaves_nothing(tiny_model_factory: Callable[..., Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real_copy = shutil.copyfile

    def full_disk(src: object, dst: object, *a: object, **k: object) -> object:
        if str(dst).endswith("model.onnx"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.shutil, "copyfile", full_disk)
    with pytest.raises(DiskFullError) as info:
        build_bundle(BuildConfig(out=tmp_path / "out",
                                 source=str(tiny_model_factory("bert", "text-classification")),
                                 **FAST))
    assert info.value.hint and "disk space" in info.value.hint
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_interrupted_build_leaves_nothing(tiny_model_factory: Callable[..., Path],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "optimize", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_bundle(BuildConfig(out=tmp_path / "out",
                                 source=str(tiny_model_factory("bert", "text-classification"))))
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_static_quantization_needs_calibration(tmp_path: Path) -> None:
    result = run_cli("build", "-o", str(tmp_path / "out"), "--quantize", "static")
    assert result.returncode == 2
    assert "--calibration" in result.stderr


def test_static_quantization_with_calibration(tiny_model_factory: Callable[..., Path],
                                              tmp_path: Path) -> None:
    calibration = tmp_path / "cal.txt"
    calibration.write_text("\n".join(["the movie was good", "bad acting", "i love it"] * 4))
    result = build_bundle(BuildConfig(
        out=tmp_path / "out", source=str(tiny_model_factory("bert", "text-classification")),
        quantize=QuantizeMode.STATIC, calibration=calibration,
        tolerance=Tolerance(min_agreement=0.0, min_cosine=0.0, min_speedup=0.0),
    ))
    quant = result.manifest.stages["quantization"]
    assert quant["chosen"] == "static-int8-qdq"
    assert result.manifest.precision == "int8"


def test_budget_miss_ships_fp32_and_says_why(tiny_model_factory: Callable[..., Path],
                                             tmp_path: Path) -> None:
    result = build_bundle(BuildConfig(
        out=tmp_path / "out", source=str(tiny_model_factory("bert", "text-classification")),
        tolerance=Tolerance(min_agreement=1.01),
    ))
    quant = result.manifest.stages["quantization"]
    assert result.manifest.precision == "fp32"
    assert quant["decision"].startswith("fp32: no int8 candidate met the budget")
    attempts = [a["graph"] for a in quant["attempts"]]
    # every candidate judged, the sensitivity search's too (full int8 missed the budget)
    assert {"dynamic-int8", "dynamic-int8-attention-only", "dynamic-int8-keep-1-fp32"} <= set(
        attempts)
    assert not any(a["passed"] for a in quant["attempts"]) and quant["not_validated"] == []
    assert quant["sensitivity"]["top"]
    assert "hint" in quant
    assert not (tmp_path / "out" / "model.fp32.onnx").exists()


def test_choice_is_ranked_by_cost_and_recorded(tiny_model_factory: Callable[..., Path],
                                                tmp_path: Path) -> None:
    """Same source, same choice: the cheapest passing candidate by the cost model, twice."""
    chosen = []
    for i in range(2):
        result = build_bundle(BuildConfig(
            out=tmp_path / f"out{i}", source=str(tiny_model_factory("bert", "text-classification")),
            tolerance=Tolerance(min_agreement=0.0, min_cosine=0.0, min_speedup=0.0),
            keep_fp32=i == 1,
        ))
        quant = result.manifest.stages["quantization"]
        chosen.append(quant["chosen"])
        assert quant["attempts"][0]["graph"] == quant["chosen"] == "dynamic-int8"
        assert quant["attempts"][0]["estimated_speedup_vs_fp32"] > 1
        assert "dynamic-int8-attention-only" in quant["not_validated"]
        # the shipped graph as ORT runs it: LayerNorm split and kept split, and its profile
        ops = quant["shipped_graph"]["session_ops"]
        assert "SkipLayerNormalization" not in ops and ops["LayerNormalization"] >= 1
        assert quant["shipped_graph"]["op_ms"]
        validation = result.manifest.stages["validation"]
        assert validation["texts"] >= 1000 and validation["report_texts"] > 400
        assert quant["attempts"][0]["report"]["texts"] == validation["report_texts"]
    assert chosen[0] == chosen[1]
    assert not (tmp_path / "out0" / "model.fp32.onnx").exists()
    assert (tmp_path / "out1" / "model.fp32.onnx").is_file()


def test_json_summary_and_inspect(tiny_model_factory: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = tiny_model_factory("distilbert", "text-classification")
    result = run_cli("build", str(model), "-o", str(out), "--quantize", "none", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["task"] == "text-classification" and summary["precision"] == "fp32"
    assert set(summary["stage_seconds"]) >= {"export", "validate", "optimize", "quantize"}
    inspected = run_cli("inspect", str(out), "--json")
    assert json.loads(inspected.stdout)["name"] == summary["manifest"]["name"]


def test_build_sign_key_signs_before_publishing(tiny_model_factory: Callable[..., Path],
                                                tmp_path: Path) -> None:
    from onnxguard.errors import SignatureError
    from onnxguard.integrity import generate_signing_keypair, verify_bundle
    from onnxguard.runtime import Engine

    keys = generate_signing_keypair(tmp_path / "keys")
    other = generate_signing_keypair(tmp_path / "other")
    out = tmp_path / "out"
    build_bundle(BuildConfig(out=out, source=str(tiny_model_factory("bert", "text-classification")),
                             sign_key=keys.private_key, **FAST))
    assert (out / "model.sig").is_file()
    verify_bundle(out, keys.public_key)
    assert Engine.from_bundle(out, public_key=keys.public_key).bundle.signed
    with pytest.raises(SignatureError):
        Engine.from_bundle(out, public_key=other.public_key)


def test_allow_pickle_loads_a_clean_scanned_pickle(tiny_model_factory: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    model = _copy_model(tiny_model_factory, tmp_path)
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    result = build_bundle(BuildConfig(out=tmp_path / "out", source=str(model), allow_pickle=True,
                                      **FAST))
    assert result.manifest.stages["scan"]["source"]["findings"]["high"] == 0
    assert result.manifest.stages["validation"]["optimized_fp32"]["passed"]


def test_allow_pickle_still_refuses_a_malicious_pickle(tiny_model_factory: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    import pickle

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    model = _copy_model(tiny_model_factory, tmp_path)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ScanFindingsError) as info:
        build_bundle(BuildConfig(out=tmp_path / "out", source=str(model), allow_pickle=True,
                                 **FAST))
    assert "critical" in info.value.message and "pytorch_model.bin" in info.value.message
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


def test_output_parents_are_created(tiny_model_factory: Callable[..., Path],
                                    tmp_path: Path) -> None:
    out = tmp_path / "new" / "nested" / "bundle"
    build_bundle(BuildConfig(out=out, source=str(tiny_model_factory("bert", "text-classification")),
                             **FAST))
    assert (out / "onnxguard.json").is_file()


@pytest.mark.parametrize(("made_for", "asked", "fix"), [
    ("feature-extraction", "text-classification", "--task feature-extraction"),
    ("text-classification", "token-classification", "--task text-classification"),
    ("token-classification", "text-classification", "--task token-classification"),
])
def test_task_without_its_head_is_refused_before_export(
    tiny_model_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    made_for: str, asked: str, fix: str,
) -> None:
    from onnxguard.errors import TaskMismatchError

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the task must be checked before anything is loaded or exported")

    monkeypatch.setattr(pipeline, "load_torch_model", no_export)
    model = tiny_model_factory("bert", made_for)
    with pytest.raises(TaskMismatchError) as info:
        build_bundle(BuildConfig(out=tmp_path / "out", source=str(model), task=asked, **FAST))
    assert info.value.exit_code == 2 and asked in info.value.message
    assert info.value.hint and fix in info.value.hint
    assert not (tmp_path / "out").exists()


def test_task_check_accepts_what_the_model_has(tmp_path: Path) -> None:
    from onnxguard.tasks import Task, resolve_task

    classifier = {"architectures": ["BertForSequenceClassification"]}
    assert resolve_task(tmp_path, classifier, None) is Task.TEXT_CLASSIFICATION
    assert resolve_task(tmp_path, classifier, "text-classification") is Task.TEXT_CLASSIFICATION
    assert resolve_task(tmp_path, classifier, "feature-extraction") is Task.FEATURE_EXTRACTION
    old = {"id2label": {"0": "A", "1": "B"}}  # no `architectures`: the labels show a head
    assert resolve_task(tmp_path, old, "token-classification") is Task.TOKEN_CLASSIFICATION
