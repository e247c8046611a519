"""open_bundle: the checks before anything is parsed, and decryption that never touches the disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxguard.bundle import MANIFEST_NAME, MODEL_NAME, TOKENIZER_NAME
from onnxguard.errors import (
    BundleError,
    HashMismatchError,
    SignatureKeyMismatchError,
    SignatureMissingError,
    SignedFileChangedError,
)
from onnxguard.integrity import encrypt_bundle, open_bundle, sign_bundle

KekEnv = Callable[..., str]
Keys = tuple[Path, Path]
Predict = Callable[[bytes, bytes, list[str]], np.ndarray]
TEXTS = ["a great movie", "boring and bad", "i love this film", "the plot was not good at all"]


def test_plain_bundle_loads_with_hash_checks(bundle_dir: Path) -> None:
    loaded = open_bundle(bundle_dir)
    assert loaded.model_bytes == (bundle_dir / MODEL_NAME).read_bytes()
    assert loaded.tokenizer_json == (bundle_dir / TOKENIZER_NAME).read_bytes()
    assert not loaded.signed
    assert loaded.digest == loaded.manifest.digest()
    (bundle_dir / MODEL_NAME).write_bytes(b"\x00" + loaded.model_bytes[1:])
    with pytest.raises(HashMismatchError):
        open_bundle(bundle_dir)


def test_public_key_requires_a_valid_signature(
    bundle_dir: Path, signing_key: Keys, other_signing_key: Keys
) -> None:
    with pytest.raises(SignatureMissingError):
        open_bundle(bundle_dir, public_key=signing_key[1])
    sign_bundle(bundle_dir, other_signing_key[0])
    with pytest.raises(SignatureKeyMismatchError):
        open_bundle(bundle_dir, public_key=signing_key[1])
    sign_bundle(bundle_dir, signing_key[0])
    loaded = open_bundle(bundle_dir, public_key=signing_key[1])
    assert loaded.signed


def test_signature_is_checked_before_the_manifest_is_parsed(
    bundle_dir: Path, signing_key: Keys
) -> None:
    """A manifest made unparseable after signing is refused as a signature failure."""
    sign_bundle(bundle_dir, signing_key[0])
    (bundle_dir / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(SignedFileChangedError):
        open_bundle(bundle_dir, public_key=signing_key[1])
    with pytest.raises(BundleError, match="cannot read"):
        open_bundle(bundle_dir)  # without a key it is at least a clear bundle error


def test_encrypted_bundle_predicts_the_same(
    bundle_dir: Path, kek_env: KekEnv, signing_key: Keys, predict_logits: Predict
) -> None:
    plain = open_bundle(bundle_dir)
    expected = predict_logits(plain.model_bytes, plain.tokenizer_json, TEXTS)
    source = kek_env()
    encrypt_bundle(bundle_dir, source, sign_key=signing_key[0])
    loaded = open_bundle(bundle_dir, public_key=signing_key[1], key_source=source)
    assert loaded.signed and loaded.manifest.encryption is not None
    assert loaded.model_bytes == plain.model_bytes
    assert loaded.tokenizer_json == plain.tokenizer_json
    got = predict_logits(loaded.model_bytes, loaded.tokenizer_json, TEXTS)
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (len(TEXTS), 2)


def test_encrypted_bundle_predicts_the_same_through_the_engine(
    bundle_dir: Path, kek_env: KekEnv, signing_key: Keys
) -> None:
    from onnxguard.runtime import Engine

    expected = Engine.from_bundle(bundle_dir, intra_op_threads=1).predict_raw(TEXTS)
    source = kek_env()
    encrypt_bundle(bundle_dir, source, sign_key=signing_key[0])
    engine = Engine.from_bundle(
        bundle_dir, public_key=signing_key[1], key_source=source, intra_op_threads=1
    )
    got = engine.predict_raw(TEXTS)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert engine.describe()["signed"] is True
    assert [r["label"] for r in engine.predict(TEXTS)] == [
        ("NEGATIVE", "POSITIVE")[int(np.argmax(row))] for row in expected
    ]


# --- nothing decrypted is written to disk --------------------------------------------------------
def _needles(model_bytes: bytes) -> list[bytes]:
    """64-byte windows of the largest weight tensor: what a plaintext leak would contain."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    raw = max((t.raw_data for t in model.graph.initializer), key=len)
    assert len(raw) > 4096
    needles = [raw[i : i + 64] for i in (len(raw) // 4, len(raw) // 2, 3 * len(raw) // 4)]
    assert all(n in model_bytes for n in needles)
    return needles


def _files_under(root: Path, recursive: bool = True) -> Iterator[Path]:
    paths = root.rglob("*") if recursive else root.iterdir()
    for path in paths:
        try:
            if path.is_file() and not path.is_symlink():
                yield path
        except OSError:
            continue


def _holds_any(path: Path, needles: list[bytes]) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return any(n in data for n in needles)


# onnxruntime (1.32, Linux wheels) keeps a telemetry event store here unless
# ORT_DISABLE_TELEMETRY=1 is set before it is imported; it holds session metadata, never weights.
ORT_TELEMETRY_DIR = Path.home() / ".cache" / "Microsoft" / "DeveloperTools"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_recording: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _recording:
        return
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
        )
        if writing and not str(_describe_fd(path)).startswith(("/dev/", "/memfd:")):
            _recording[-1].append(f"open {_describe_fd(path)} {mode or flags}")
    elif event in {"os.rename", "os.replace", "shutil.copyfile", "os.link", "os.symlink"}:
        _recording[-1].append(f"{event} {args}")


def _describe_fd(path: object) -> object:
    """An fd opened by number: what it is (an anonymous memory file is not the disk)."""
    if isinstance(path, int):
        try:
            return os.readlink(f"/proc/self/fd/{path}")
        except OSError:
            return path
    return path


sys.addaudithook(_audit)


def test_no_plaintext_weights_on_disk_during_an_encrypted_load(
    bundle_dir: Path,
    kek_env: KekEnv,
    signing_key: Keys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from onnxguard.runtime import Engine

    plain_model = (bundle_dir / MODEL_NAME).read_bytes()
    needles = _needles(plain_model)
    source = kek_env()
    encrypt_bundle(bundle_dir, source, sign_key=signing_key[0])
    # The scanner finds the weights where they are (a control: it can fail)...
    decoy = tmp_path / "decoy.bin"
    decoy.write_bytes(b"header" + plain_model)
    assert _holds_any(decoy, needles)
    decoy.unlink()
    # ...and they are not in the encrypted bundle.
    assert not any(_holds_any(p, needles) for p in _files_under(bundle_dir))

    # Temp files of this process go to a scratch dir that is scanned in full; the system temp
    # dir, the working directory and home are scanned at their top level.
    roots = [(Path(tempfile.gettempdir()), False), (Path.cwd(), False), (Path.home(), False)]
    roots.append((ORT_TELEMETRY_DIR, True))
    scratch = tmp_path / "scratch-tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    roots.append((tmp_path, True))
    start = time.time() - 1

    writes: list[str] = []
    _recording.append(writes)
    try:
        loaded = open_bundle(bundle_dir, public_key=signing_key[1], key_source=source)
        engine = Engine.from_bundle(
            bundle_dir, public_key=signing_key[1], key_source=source, intra_op_threads=1
        )
        engine.predict(TEXTS)
    finally:
        _recording.pop()

    assert loaded.model_bytes == plain_model  # it really was decrypted, in memory
    assert writes == [], f"files were opened for writing during the load: {writes}"
    touched = [
        p
        for root, recursive in roots
        if root.is_dir()
        for p in _files_under(root, recursive)
        if _modified_since(p, start)
    ]
    leaks = [str(p) for p in touched if _holds_any(p, needles)]
    assert leaks == []
    assert not any(_holds_any(p, needles) for p in _files_under(tmp_path))


def _modified_since(path: Path, start: float) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return max(st.st_mtime, st.st_ctime) >= start


def _strace_writes(script: str, log: Path, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        [
            "strace", "-f", "-qq",
            "-e", "trace=open,openat,openat2,creat,rename,renameat,renameat2",
            "-o", str(log), sys.executable, "-c", script,
        ],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() in {"NEGATIVE", "POSITIVE"}
    writes = []
    for line in log.read_text().splitlines():
        if (
            "rename" in line
            or "creat(" in line
            or (
                any(flag in line for flag in ("O_WRONLY", "O_RDWR", "O_CREAT"))
                and not any(f'"{prefix}' in line for prefix in ("/dev/", "/proc/", "/sys/"))
            )
        ):
            writes.append(line)
    return writes


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_no_file_is_opened_for_writing_during_an_encrypted_load_strace(
    bundle_dir: Path, kek_env: KekEnv, signing_key: Keys, tmp_path: Path
) -> None:
    """System-call level proof, native code (onnxruntime, tokenizers) included."""
    probe = subprocess.run(["strace", "-f", "-qq", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode()[:200]}")
    source = kek_env("STRACE_KEK")
    encrypt_bundle(bundle_dir, source, sign_key=signing_key[0])
    script = textwrap.dedent(
        f"""
        from onnxguard.runtime import Engine
        engine = Engine.from_bundle({str(bundle_dir)!r}, public_key={str(signing_key[1])!r},
                                    key_source={source!r}, intra_op_threads=1)
        print(engine.predict(["a great movie"])[0]["label"])
        """
    )
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", ORT_DISABLE_TELEMETRY="1")
    # With onnxruntime's telemetry store off (docs/SECURITY.md): not a single file is written.
    assert _strace_writes(script, tmp_path / "off.log", env) == []
    # With it on (onnxruntime's default), the only writes are to that store.
    env.pop("ORT_DISABLE_TELEMETRY")
    writes = _strace_writes(script, tmp_path / "on.log", env)
    assert all(str(ORT_TELEMETRY_DIR) in line for line in writes), "\n".join(writes[:20])


def test_every_listed_file_is_hash_checked_even_if_not_loaded(bundle_dir: Path) -> None:
    """An fp32 copy or tokenizer extra is not loaded, but a changed one still refuses the bundle."""
    from onnxguard.bundle import FP32_MODEL_NAME, file_entries, read_manifest, write_manifest

    shutil.copyfile(bundle_dir / MODEL_NAME, bundle_dir / FP32_MODEL_NAME)
    manifest = read_manifest(bundle_dir)
    names = [*manifest.files, FP32_MODEL_NAME]
    write_manifest(bundle_dir, replace(manifest, files=file_entries(bundle_dir, names)))
    open_bundle(bundle_dir)
    data = bytearray((bundle_dir / FP32_MODEL_NAME).read_bytes())
    data[100] ^= 1
    (bundle_dir / FP32_MODEL_NAME).write_bytes(bytes(data))
    with pytest.raises(HashMismatchError, match=FP32_MODEL_NAME):
        open_bundle(bundle_dir)
