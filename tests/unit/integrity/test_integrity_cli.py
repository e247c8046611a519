"""The CLI: keygen/sign/verify/encrypt/decrypt, and a distinct error + non-zero exit per attack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from onnxguard.bundle import MANIFEST_NAME, MODEL_NAME, SIGNATURE_NAME, TOKENIZER_NAME, sha256_file

Cli = Callable[..., Any]
KekEnv = Callable[..., str]
Keys = tuple[Path, Path]


def test_keygen_sign_verify_round_trip(cli: Cli, bundle_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    r = cli("keygen", "-o", keys, "--kek")
    assert r.code == 0, r.err
    assert "public key" in r.out and (keys / "kek.key").exists()
    r = cli("sign", bundle_dir, "--sign-key", keys / "private.pem")
    assert r.code == 0, r.err
    assert (bundle_dir / SIGNATURE_NAME).exists()
    r = cli("verify", bundle_dir, "--public-key", keys / "public.pem")
    assert r.code == 0, r.err
    assert "verified" in r.out and "3 files" in r.out
    r = cli("keygen", "--output", keys)
    assert r.code == 8 and "refusing to overwrite" in r.err


def test_output_for_a_pipe_is_never_wrapped(cli: Cli, bundle_dir: Path, tmp_path: Path) -> None:
    """capsys is not a terminal: rich would wrap at 80 columns; a long path stays on one line."""
    deep = tmp_path / ("a-long-directory-name-" * 6) / "bundle"
    shutil.copytree(bundle_dir, deep)
    r = cli("verify", deep)
    assert r.code == 0, r.err
    line = r.out.strip()
    assert "\n" not in line and str(deep) in line and "all 2 files match" in line
    assert "\x1b[" not in r.out  # no colour codes either


def test_old_option_names_are_hidden_aliases(cli: Cli, bundle_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert cli("keygen", "--out", keys).code == 0
    assert cli("sign", bundle_dir, "--key", keys / "private.pem").code == 0
    r = cli("verify", bundle_dir, "--pub", keys / "public.pem", "--verbose")
    assert r.code == 0, r.err
    assert "signed by key" in r.out
    r = cli("verify", "--help")
    assert "--public-key" in r.out and "--pub " not in r.out


def test_verify_without_a_key_checks_every_hash(cli: Cli, bundle_dir: Path) -> None:
    r = cli("verify", bundle_dir)
    assert r.code == 0, r.err
    assert "all 2 files match" in r.out and "not signed" in r.out
    _flip(bundle_dir / TOKENIZER_NAME)
    r = cli("verify", bundle_dir)
    assert r.code == 7 and "tokenizer.json" in r.err and "hint:" in r.err
    r = cli("inspect", bundle_dir)
    assert r.code == 7 and "encrypted" in r.out and "tokenizer.json" in r.err


def test_scan_of_a_bundle_checks_its_hashes(cli: Cli, bundle_dir: Path) -> None:
    assert cli("scan", bundle_dir).code == 0
    _flip(bundle_dir / TOKENIZER_NAME)
    r = cli("scan", bundle_dir)
    assert r.code == 7 and "tokenizer.json" in r.err and "hint:" in r.err


def test_missing_paths_are_usage_errors_everywhere(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for args in (("verify", missing), ("inspect", missing), ("predict", missing, "hi"),
                 ("sign", tmp_path, "--sign-key", missing), ("scan", missing),
                 ("encrypt", missing, "--key-source", "env:X"), ("audit", "verify", missing),
                 ("build", missing, "-o", tmp_path / "out")):
        r = cli(*args)
        assert r.code == 2, (args, r.err)
        assert str(missing) in r.err and "hint:" in r.err and "Traceback" not in r.err


def test_public_key_and_key_source_from_the_environment(
    cli: Cli, bundle_dir: Path, signing_key: Keys, kek_env: KekEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = kek_env()
    monkeypatch.setenv("ONNXGUARD_KEY_SOURCE", source)
    monkeypatch.setenv("ONNXGUARD_PUBLIC_KEY", str(signing_key[1]))
    assert cli("encrypt", bundle_dir, "--sign-key", signing_key[0]).code == 0
    r = cli("verify", bundle_dir)
    assert r.code == 0, r.err
    assert "(encrypted)" in r.out
    r = cli("predict", bundle_dir, "a great movie")
    assert r.code == 0, r.err
    assert json.loads(r.out.splitlines()[0])["label"] in {"NEGATIVE", "POSITIVE"}
    assert cli("decrypt", bundle_dir, "--sign-key", signing_key[0]).code == 0


def test_usage_errors(cli: Cli, bundle_dir: Path, signing_key: Keys) -> None:
    r = cli("verify", bundle_dir, "--public-key", signing_key[1], "--os-trust-store")
    assert r.code == 2 and "choose one verification mode" in r.err
    r = cli("sign", bundle_dir)
    assert r.code == 2 and "choose one signing mode" in r.err
    r = cli("sign", bundle_dir, "--sign-key", signing_key[0], "--sigstore")
    assert r.code == 2
    r = cli("keygen", "-o", bundle_dir / "k", "--password-env", "ONNXGUARD_TEST_UNSET")
    assert r.code == 7 and "ONNXGUARD_TEST_UNSET" in r.err


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _fix_hashes(bundle: Path) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    for name in data["files"]:
        data["files"][name] = {
            "sha256": sha256_file(bundle / name),
            "size": (bundle / name).stat().st_size,
        }
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


def _attack_model_changed(b: Path) -> None:
    _flip(b / MODEL_NAME)


def _attack_tokenizer_changed(b: Path) -> None:
    _flip(b / TOKENIZER_NAME)


def _attack_manifest_changed(b: Path) -> None:
    text = (b / MANIFEST_NAME).read_text()
    (b / MANIFEST_NAME).write_text(text.replace('"tiny-bert"', '"tiny-berT"', 1))


def _attack_signature_changed(b: Path) -> None:
    sig = json.loads((b / SIGNATURE_NAME).read_text())
    s = sig["dsseEnvelope"]["signatures"][0]["sig"]
    sig["dsseEnvelope"]["signatures"][0]["sig"] = ("A" if s[5] != "A" else "B").join((s[:5], s[6:]))
    (b / SIGNATURE_NAME).write_text(json.dumps(sig))


def _attack_file_added(b: Path) -> None:
    (b / "backdoor.onnx").write_bytes(b"\x08\x07")


def _attack_file_removed(b: Path) -> None:
    (b / TOKENIZER_NAME).unlink()


def _attack_swap(b: Path) -> None:
    m, t = (b / MODEL_NAME).read_bytes(), (b / TOKENIZER_NAME).read_bytes()
    (b / MODEL_NAME).write_bytes(t)
    (b / TOKENIZER_NAME).write_bytes(m)
    _fix_hashes(b)


def _attack_truncate(b: Path) -> None:
    (b / MODEL_NAME).write_bytes((b / MODEL_NAME).read_bytes()[:-1000])


def _attack_manifest_edited_unsigned(b: Path) -> None:
    data = json.loads((b / MANIFEST_NAME).read_text())
    data["labels"] = ["POSITIVE", "NEGATIVE"]
    del data["encryption"]["manifest_digest"]
    (b / MANIFEST_NAME).write_text(json.dumps(data))


# (id, attack, encrypted?, signed?, wrong key?, other signer?, expected error class, message part)
SCENARIOS = [
    ("model-changed", _attack_model_changed, False, True, False, False,
     "SignedFileChangedError", "changed after signing"),
    ("tokenizer-changed", _attack_tokenizer_changed, False, True, False, False,
     "SignedFileChangedError", "tokenizer.json"),
    ("manifest-changed", _attack_manifest_changed, False, True, False, False,
     "SignedFileChangedError", "onnxguard.json"),
    ("signature-changed", _attack_signature_changed, False, True, False, False,
     "SignatureInvalidError", "does not verify"),
    ("file-added", _attack_file_added, False, True, False, False,
     "SignedFileAddedError", "backdoor.onnx"),
    ("file-removed", _attack_file_removed, False, True, False, False,
     "SignedFileRemovedError", "missing signed files"),
    ("signed-by-another-key", None, False, True, False, True,
     "SignatureKeyMismatchError", "signed by another key"),
    ("unsigned", None, False, False, False, False,
     "SignatureMissingError", "is not signed"),
    ("encrypted-files-swapped", _attack_swap, True, False, False, False,
     "FileSwappedError", "swapped"),
    ("wrong-key", None, True, False, True, False,
     "WrongKeyError", "wrong key"),
    ("truncated-ciphertext", _attack_truncate, True, False, False, False,
     "CiphertextTruncatedError", "truncated"),
    ("unsigned-manifest-edited", _attack_manifest_edited_unsigned, True, False, False, False,
     "ManifestBindingError", "changed after encryption"),
    ("plain-file-changed", _attack_model_changed, False, False, False, False,
     "HashMismatchError", "does not match its manifest hash"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("attack", "encrypted", "signed", "wrong_key", "other_signer", "error", "text"),
    [s[1:] for s in SCENARIOS],
    ids=[s[0] for s in SCENARIOS],
)
def test_each_attack_is_refused_with_its_own_error_and_exit_7(
    cli: Cli,
    bundle_dir: Path,
    signing_key: Keys,
    other_signing_key: Keys,
    kek_env: KekEnv,
    attack: Callable[[Path], None] | None,
    encrypted: bool,
    signed: bool,
    wrong_key: bool,
    other_signer: bool,
    error: str,
    text: str,
) -> None:
    from onnxguard import errors
    from onnxguard.integrity import encrypt_bundle, open_bundle, sign_bundle

    source = kek_env("ATTACK_KEK")
    if encrypted:
        encrypt_bundle(bundle_dir, source)
    if signed:
        sign_bundle(bundle_dir, (other_signing_key if other_signer else signing_key)[0])
    if attack is not None:
        attack(bundle_dir)
    use_source = kek_env("OTHER_KEK") if wrong_key else source
    # Signature checks are what `verify` and a load with --pub do; the rest happen on load.
    needs_pub = signed or error == "SignatureMissingError"
    pub = signing_key[1] if needs_pub else None
    with pytest.raises(getattr(errors, error)) as err:
        open_bundle(bundle_dir, public_key=pub, key_source=use_source)
    assert type(err.value).__name__ == error
    assert text in err.value.message and err.value.hint
    # The same refusal through the CLI: message + hint on stderr, exit code 7.
    args = ["--key-source", use_source] + (["--public-key", str(pub)] if pub else [])
    r = cli("predict", bundle_dir, "a great movie", *args)
    assert r.code == 7, (r.code, r.err)
    assert "error:" in r.err and "hint:" in r.err
    assert r.out == ""
    if needs_pub:
        r = cli("verify", bundle_dir, "--public-key", pub)
        assert r.code == 7 and "error:" in r.err


def test_all_scenarios_have_distinct_errors() -> None:
    attack_errors = [s[6] for s in SCENARIOS]
    # One class per kind of attack; "a file changed" is one kind whichever file it is.
    changed = [s[0] for s in SCENARIOS if s[6] == "SignedFileChangedError"]
    assert changed == ["model-changed", "tokenizer-changed", "manifest-changed"]
    assert len(set(attack_errors)) == len(SCENARIOS) - 2
    from onnxguard import errors

    assert all(getattr(errors, e).exit_code == 7 for e in attack_errors)


def test_encrypt_decrypt_cli_and_signed_policy(
    cli: Cli, bundle_dir: Path, signing_key: Keys, kek_env: KekEnv
) -> None:
    source = kek_env()
    assert cli("sign", bundle_dir, "--sign-key", signing_key[0]).code == 0
    r = cli("encrypt", bundle_dir, "--key-source", source)
    assert r.code == 8 and "is signed" in r.err and "--sign-key" in r.err
    r = cli("encrypt", bundle_dir, "--key-source", source, "--sign-key", signing_key[0])
    assert r.code == 0, r.err
    assert "re-signed" in r.out
    r = cli("inspect", bundle_dir)
    assert r.code == 0 and "AES-256-GCM" in r.out
    r = cli(
        "decrypt",
        bundle_dir,
        "--key-source",
        "env:ONNXGUARD_TEST_UNSET",
        "--sign-key",
        signing_key[0],
    )
    assert r.code == 7 and "not set" in r.err
    r = cli("decrypt", bundle_dir, "--key-source", source, "--sign-key", signing_key[0])
    assert r.code == 0, r.err
    assert cli("verify", bundle_dir, "--public-key", signing_key[1]).code == 0


def test_real_process_exit_codes(bundle_dir: Path, signing_key: Keys, tmp_path: Path) -> None:
    """End to end through the installed entry point, in a fresh process."""
    exe = shutil.which("onnxguard") or str(Path(sys.executable).parent / "onnxguard")
    env = dict(os.environ, ONNXGUARD_PUBLIC_KEY=str(signing_key[1]))
    ok = subprocess.run(
        [exe, "sign", str(bundle_dir), "--key", str(signing_key[0])], env=env, capture_output=True
    )
    assert ok.returncode == 0, ok.stderr.decode()
    assert subprocess.run([exe, "verify", str(bundle_dir)], env=env).returncode == 0
    _flip(bundle_dir / MODEL_NAME)
    bad = subprocess.run([exe, "verify", str(bundle_dir)], env=env, capture_output=True, text=True)
    assert bad.returncode == 7
    assert "changed after signing" in bad.stderr and "Traceback" not in bad.stderr
