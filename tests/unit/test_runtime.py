"""Engine: serve-side only, hash-checked, providers chosen and recorded; the predict CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from onnxguard.errors import HashMismatchError, UsageError
from onnxguard.runtime import Engine, resolve_providers


def test_runtime_never_imports_torch_or_transformers(
    tiny_bundle_factory: Callable[..., Path],
) -> None:
    bundle = tiny_bundle_factory("bert", "text-classification", "dynamic")
    code = (
        "import sys\n"
        "from onnxguard.runtime import Engine\n"
        f"e = Engine.from_bundle({str(bundle)!r})\n"
        "print(e.predict(['good movie'])[0]['label'])\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in {"NEG", "POS"}


def test_tampered_model_refused(tiny_bundle_factory: Callable[..., Path], tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle_factory("bert", "text-classification", "dynamic"), bundle)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(HashMismatchError, match=r"model\.onnx"):
        Engine.from_bundle(bundle)


def test_unlisted_file_refused(tiny_bundle_factory: Callable[..., Path], tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle_factory("bert", "text-classification", "dynamic"), bundle)
    (bundle / "evil.onnx").write_bytes(b"x")
    with pytest.raises(HashMismatchError, match=r"evil\.onnx"):
        Engine.from_bundle(bundle)


def test_providers_auto_and_explicit() -> None:
    assert resolve_providers(None)[-1] == "CPUExecutionProvider"
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]
    with pytest.raises(UsageError) as info:
        resolve_providers(["NoSuchExecutionProvider"])
    assert info.value.hint and "CPUExecutionProvider" in info.value.hint


def test_engine_records_providers_and_threads(tiny_bundle_factory: Callable[..., Path]) -> None:
    engine = Engine.from_bundle(tiny_bundle_factory("bert", "text-classification", "dynamic"),
                                intra_op_threads=1)
    info = engine.describe()
    assert info["providers"] == ["CPUExecutionProvider"] and info["intra_op_threads"] == 1
    assert info["bundle_digest"] == engine.manifest.digest()


def test_dynamic_padding_matches_fixed_padding(tiny_bundle_factory: Callable[..., Path]) -> None:
    import numpy as np

    engine = Engine.from_bundle(tiny_bundle_factory("bert", "feature-extraction", "none"))
    texts = ["good", "the plot was slow but the acting was great , i love it"]
    encodings = engine.encode(texts)
    padded = engine.run_batch(encodings, pad_to=engine.max_length)
    dynamic = np.stack(engine.predict_raw(texts))
    np.testing.assert_allclose(dynamic, padded, atol=1e-5)


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxguard", *args], capture_output=True,
                          text=True, input=stdin, timeout=120)


def test_predict_cli_args_and_stdin(tiny_bundle_factory: Callable[..., Path]) -> None:
    bundle = str(tiny_bundle_factory("bert", "text-classification", "dynamic"))
    result = _cli("predict", bundle, "good movie", "bad")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["good movie", "bad"]
    assert all(line["label"] in {"NEG", "POS"} for line in lines)
    piped = _cli("predict", bundle, stdin='{"text": "good movie"}\n"bad"\n')
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(x)["label"] for x in piped.stdout.splitlines()] == [
        line["label"] for line in lines]
    plain = _cli("predict", bundle, stdin="good movie\n\nbad\n")
    assert plain.returncode == 0, plain.stderr
    assert [json.loads(x)["label"] for x in plain.stdout.splitlines()] == [
        line["label"] for line in lines]
    broken = _cli("predict", bundle, stdin='{"txt": "good"}\n')
    assert broken.returncode == 2 and 'line 1 is a JSON object without a "text"' in broken.stderr


def test_predict_refuses_empty_text_and_reports_truncation(
    tiny_bundle_factory: Callable[..., Path]
) -> None:
    from onnxguard.errors import EmptyTextError
    from onnxguard.runtime import Engine

    bundle = tiny_bundle_factory("bert", "text-classification", "dynamic")
    for texts in (["good", ""], ["   \t\n"]):
        result = _cli("predict", str(bundle), *texts)
        assert result.returncode == 2 and "empty or only whitespace" in result.stderr
        assert result.stdout == ""
    engine = Engine.from_bundle(bundle)
    with pytest.raises(EmptyTextError):
        engine.predict([" "])
    long_text = "good movie " * 50_000  # about 550 kB: far over max_length tokens
    short, long = engine.predict(["good movie", long_text])
    assert "truncated" not in short and long["truncated"] is True
    result = _cli("predict", str(bundle), stdin=long_text + "\n")
    assert result.returncode == 0, result.stderr
    echoed = json.loads(result.stdout)
    assert echoed["truncated"] is True and echoed["text_chars"] == len(long_text)
    assert len(echoed["text"]) <= 201 and len(result.stdout) < 2_000
    assert "was cut at" in result.stderr


def test_inspect_non_bundle_exit_8(tmp_path: Path) -> None:
    result = _cli("inspect", str(tmp_path))
    assert result.returncode == 8 and "hint:" in result.stderr


def test_inspect_says_signed_encrypted_and_checks_hashes(
    tiny_bundle_factory: Callable[..., Path], tmp_path: Path
) -> None:
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle_factory("bert", "text-classification", "dynamic"), bundle)
    result = _cli("inspect", str(bundle))
    assert result.returncode == 0, result.stderr
    assert "signed: no" in result.stdout and "encrypted: no" in result.stdout
    assert "hashes: all" in result.stdout
    data = json.loads(_cli("inspect", str(bundle), "--json").stdout)
    assert data["signed"] is False and data["task"] == "text-classification"
    model = bundle / "model.onnx"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 1
    model.write_bytes(bytes(raw))
    result = _cli("inspect", str(bundle))
    assert result.returncode == 7 and "model.onnx" in result.stderr


def test_cli_usage_errors_exit_2() -> None:
    result = _cli("predict")
    assert result.returncode == 2 and "Missing argument" in result.stderr
    assert "Traceback" not in result.stderr
