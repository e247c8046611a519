"""Envelope encryption at rest: round trip, binding, and every way a file can be tampered with."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from onnxguard.bundle import (
    MANIFEST_NAME,
    MODEL_NAME,
    SIGNATURE_NAME,
    TOKENIZER_NAME,
    Manifest,
    file_entries,
    read_manifest,
    sha256_file,
    verify_bundle_files,
    write_manifest,
)
from onnxguard.errors import (
    BundleError,
    CiphertextTruncatedError,
    DecryptionError,
    FileSwappedError,
    HashMismatchError,
    KeySourceError,
    ManifestBindingError,
    SignatureKeyMismatchError,
    SignedBundleError,
    WrongKeyError,
)
from onnxguard.integrity import (
    decrypt_bundle,
    encrypt_bundle,
    open_bundle,
    sign_bundle,
    verify_bundle,
)
from onnxguard.integrity import encryption as enc

KekEnv = Callable[..., str]
Keys = tuple[Path, Path]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _fix_manifest_hashes(bundle_dir: Path) -> None:
    """What an attacker who can edit the (unsigned) manifest does to pass the hash check."""
    data = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    for name in data["files"]:
        data["files"][name] = {
            "sha256": sha256_file(bundle_dir / name),
            "size": (bundle_dir / name).stat().st_size,
        }
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(data, indent=2))


def test_round_trip_restores_the_bundle_byte_for_byte(bundle_dir: Path, kek_env: KekEnv) -> None:
    before = _snapshot(bundle_dir)
    source = kek_env()
    result = encrypt_bundle(bundle_dir, source)
    assert result.files == (MODEL_NAME, TOKENIZER_NAME)
    after_encrypt = _snapshot(bundle_dir)
    assert set(after_encrypt) == set(before)
    for name in (MODEL_NAME, TOKENIZER_NAME):
        assert after_encrypt[name] != before[name]
        assert after_encrypt[name].startswith(enc.MAGIC)
        plain_size = len(before[name])
        assert len(after_encrypt[name]) == enc.ciphertext_size(plain_size)
    decrypt_bundle(bundle_dir, source)
    assert _snapshot(bundle_dir) == before


def test_manifest_records_algorithm_and_key_id_never_key_material(
    bundle_dir: Path, kek_env: KekEnv
) -> None:
    source = kek_env("KEK_UNDER_TEST")
    kek = base64.b64decode(os.environ["KEK_UNDER_TEST"])
    encrypt_bundle(bundle_dir, source)
    manifest = read_manifest(bundle_dir)
    assert manifest.encryption is not None
    section = manifest.encryption
    assert section["algorithm"] == "AES-256-GCM"
    assert section["key_id"].startswith("kek-")
    assert section["scheme"] == enc.SCHEME
    # Nothing in the bundle holds the KEK in any encoding, nor the key source's name.
    text = b"".join(p.read_bytes() for p in bundle_dir.iterdir())
    for form in (kek, kek.hex().encode(), base64.b64encode(kek), os.environ["KEK_UNDER_TEST"]):
        assert (form.encode() if isinstance(form, str) else form) not in text
    assert b"KEK_UNDER_TEST" not in text


def test_two_bundles_get_different_data_keys(bundle_dir: Path, kek_env: KekEnv) -> None:
    copy = bundle_dir.with_name("copy")
    shutil.copytree(bundle_dir, copy)
    source = kek_env()
    encrypt_bundle(bundle_dir, source)
    encrypt_bundle(copy, source)
    a, b = read_manifest(bundle_dir).encryption, read_manifest(copy).encryption
    assert a is not None and b is not None
    assert a["wrapped_key"] != b["wrapped_key"]
    assert (bundle_dir / MODEL_NAME).read_bytes() != (copy / MODEL_NAME).read_bytes()


def test_ciphertext_does_not_contain_plaintext(bundle_dir: Path, kek_env: KekEnv) -> None:
    tokenizer = (bundle_dir / TOKENIZER_NAME).read_bytes()
    encrypt_bundle(bundle_dir, kek_env())
    assert b"[CLS]" in tokenizer
    assert b"[CLS]" not in (bundle_dir / TOKENIZER_NAME).read_bytes()


def test_hash_checks_and_inspect_work_without_keys(
    bundle_dir: Path, kek_env: KekEnv, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    encrypt_bundle(bundle_dir, kek_env("SOME_KEK"))
    monkeypatch.delenv("SOME_KEK")
    verify_bundle_files(bundle_dir)
    result = cli("inspect", bundle_dir, "--json")
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    assert shown["encryption"]["algorithm"] == "AES-256-GCM"
    (bundle_dir / MODEL_NAME).write_bytes(b"x" + (bundle_dir / MODEL_NAME).read_bytes()[1:])
    with pytest.raises(HashMismatchError):
        verify_bundle_files(bundle_dir)


def test_wrong_key_is_refused(bundle_dir: Path, kek_env: KekEnv) -> None:
    encrypt_bundle(bundle_dir, kek_env("RIGHT_KEK"))
    wrong = kek_env("WRONG_KEK")
    with pytest.raises(WrongKeyError) as err:
        open_bundle(bundle_dir, key_source=wrong)
    assert "wrong key" in err.value.message and "env:WRONG_KEK" in err.value.message
    with pytest.raises(WrongKeyError):
        decrypt_bundle(bundle_dir, wrong)


def test_encrypted_bundle_needs_a_key_source(bundle_dir: Path, kek_env: KekEnv) -> None:
    encrypt_bundle(bundle_dir, kek_env())
    with pytest.raises(KeySourceError) as err:
        open_bundle(bundle_dir)
    assert "encrypted" in err.value.message and "--key-source" in (err.value.hint or "")


@pytest.mark.parametrize("doctor_manifest", [False, True], ids=["as-is", "manifest-fixed-up"])
def test_truncated_ciphertext_is_refused(
    bundle_dir: Path, kek_env: KekEnv, doctor_manifest: bool
) -> None:
    source = kek_env()
    encrypt_bundle(bundle_dir, source)
    path = bundle_dir / MODEL_NAME
    path.write_bytes(path.read_bytes()[:-100])
    if doctor_manifest:
        _fix_manifest_hashes(bundle_dir)
    with pytest.raises(CiphertextTruncatedError) as err:
        open_bundle(bundle_dir, key_source=source)
    assert "truncated" in err.value.message and MODEL_NAME in err.value.message


@pytest.mark.parametrize("doctor_manifest", [False, True], ids=["as-is", "manifest-fixed-up"])
def test_swapped_encrypted_files_are_refused(
    bundle_dir: Path, kek_env: KekEnv, doctor_manifest: bool
) -> None:
    source = kek_env()
    encrypt_bundle(bundle_dir, source)
    model, tok = bundle_dir / MODEL_NAME, bundle_dir / TOKENIZER_NAME
    a, b = model.read_bytes(), tok.read_bytes()
    model.write_bytes(b)
    tok.write_bytes(a)
    if doctor_manifest:
        # With the manifest's ciphertext hashes fixed up, the names bound in the AAD refuse it.
        _fix_manifest_hashes(bundle_dir)
    with pytest.raises(FileSwappedError) as err:
        open_bundle(bundle_dir, key_source=source)
    assert "swapped" in err.value.message
    assert err.value.fields["contents_of"] in (MODEL_NAME, TOKENIZER_NAME)


def test_swapped_files_with_plaintext_sizes_fixed_are_refused(
    bundle_dir: Path, kek_env: KekEnv
) -> None:
    """The attacker also edits the plaintext sizes: the manifest binding refuses that first."""
    source = kek_env()
    encrypt_bundle(bundle_dir, source)
    data = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    files = data["encryption"]["files"]
    files[MODEL_NAME], files[TOKENIZER_NAME] = files[TOKENIZER_NAME], files[MODEL_NAME]
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestBindingError):
        open_bundle(bundle_dir, key_source=source)


def test_a_file_replayed_from_an_earlier_encryption_is_refused(
    bundle_dir: Path, kek_env: KekEnv
) -> None:
    """Same key, same file, other encryption of the bundle: bound to another data key/manifest."""
    source = kek_env()
    first = bundle_dir.with_name("first")
    shutil.copytree(bundle_dir, first)
    encrypt_bundle(first, source)
    encrypt_bundle(bundle_dir, source)
    shutil.copyfile(first / TOKENIZER_NAME, bundle_dir / TOKENIZER_NAME)
    _fix_manifest_hashes(bundle_dir)
    with pytest.raises(DecryptionError) as err:
        open_bundle(bundle_dir, key_source=source)
    assert type(err.value) is DecryptionError
    assert "replayed" in err.value.message


def test_one_byte_changed_in_ciphertext_is_refused(bundle_dir: Path, kek_env: KekEnv) -> None:
    source = kek_env()
    encrypt_bundle(bundle_dir, source)
    path = bundle_dir / MODEL_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError):
        open_bundle(bundle_dir, key_source=source)
    _fix_manifest_hashes(bundle_dir)
    with pytest.raises(DecryptionError, match="does not decrypt"):
        open_bundle(bundle_dir, key_source=source)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(labels=["POSITIVE", "NEGATIVE"]),
        lambda m: m.update(task="feature-extraction"),
        lambda m: m["encryption"]["files"][MODEL_NAME].update(sha256="0" * 64),
        lambda m: m["encryption"].update(
            wrapped_key=base64.b64encode(
                bytes(b ^ 1 for b in base64.b64decode(m["encryption"]["wrapped_key"]))
            ).decode()
        ),
    ],
    ids=["labels", "task", "plaintext-hash", "wrapped-key"],
)
def test_manifest_edited_after_encryption_is_refused(
    bundle_dir: Path, kek_env: KekEnv, edit: Callable[[dict[str, object]], None]
) -> None:
    """The data key is bound to the manifest: an unsigned manifest still cannot be edited."""
    source = kek_env()
    encrypt_bundle(bundle_dir, source)
    data = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    edit(data)
    data["encryption"].pop("manifest_digest")  # the attacker removes the plain hint too
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestBindingError) as err:
        open_bundle(bundle_dir, key_source=source)
    assert "changed after encryption" in err.value.message


def test_already_encrypted_and_not_encrypted(bundle_dir: Path, kek_env: KekEnv) -> None:
    source = kek_env()
    with pytest.raises(BundleError, match="not encrypted"):
        decrypt_bundle(bundle_dir, source)
    encrypt_bundle(bundle_dir, source)
    with pytest.raises(BundleError, match="already encrypted"):
        encrypt_bundle(bundle_dir, source)


def test_encrypt_refuses_a_tampered_bundle(bundle_dir: Path, kek_env: KekEnv) -> None:
    (bundle_dir / TOKENIZER_NAME).write_text("{}")
    before = _snapshot(bundle_dir)
    with pytest.raises(HashMismatchError):
        encrypt_bundle(bundle_dir, kek_env())
    assert _snapshot(bundle_dir) == before


def test_a_failed_encrypt_leaves_the_bundle_as_it_was(
    bundle_dir: Path, kek_env: KekEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(bundle_dir)
    calls = {"n": 0}
    real = enc._encrypt_stream

    def fail_on_second(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(enc, "_encrypt_stream", fail_on_second)
    with pytest.raises(BundleError, match="no space left"):
        encrypt_bundle(bundle_dir, kek_env())
    assert _snapshot(bundle_dir) == before
    leftovers = [p.name for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_bad_key_sources(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeySourceError, match="not set"):
        encrypt_bundle(bundle_dir, "env:ONNXGUARD_TEST_UNSET_VAR")
    monkeypatch.setenv("SHORT_KEY", base64.b64encode(b"k" * 16).decode())
    with pytest.raises(KeySourceError, match="256-bit"):
        encrypt_bundle(bundle_dir, "env:SHORT_KEY")
    with pytest.raises(KeySourceError, match="unknown key source scheme 'vault'"):
        encrypt_bundle(bundle_dir, "vault:secret/kek")
    with pytest.raises(KeySourceError, match="no scheme"):
        encrypt_bundle(bundle_dir, "just-a-name")
    assert read_manifest(bundle_dir).encryption is None


# --- signatures and encryption -------------------------------------------------------------------
def test_encrypt_then_sign(bundle_dir: Path, kek_env: KekEnv, signing_key: Keys) -> None:
    source = kek_env()
    encrypt_bundle(bundle_dir, source)
    sign_bundle(bundle_dir, signing_key[0])
    verify_bundle(bundle_dir, signing_key[1])
    loaded = open_bundle(bundle_dir, public_key=signing_key[1], key_source=source)
    assert loaded.signed and loaded.manifest.encryption is not None


def test_encrypting_a_signed_bundle_needs_resigning(
    bundle_dir: Path, kek_env: KekEnv, signing_key: Keys
) -> None:
    source = kek_env()
    sign_bundle(bundle_dir, signing_key[0])
    before = _snapshot(bundle_dir)
    with pytest.raises(SignedBundleError) as err:
        encrypt_bundle(bundle_dir, source)
    assert "--sign-key" in (err.value.hint or "")
    assert _snapshot(bundle_dir) == before
    result = encrypt_bundle(bundle_dir, source, sign_key=signing_key[0])
    assert result.resigned
    verify_bundle(bundle_dir, signing_key[1])
    with pytest.raises(SignedBundleError):
        decrypt_bundle(bundle_dir, source)
    decrypt_bundle(bundle_dir, source, sign_key=signing_key[0])
    verify_bundle(bundle_dir, signing_key[1])
    assert read_manifest(bundle_dir).encryption is None


def test_resigning_never_launders_someone_elses_signature(
    bundle_dir: Path, kek_env: KekEnv, signing_key: Keys, other_signing_key: Keys
) -> None:
    sign_bundle(bundle_dir, other_signing_key[0])
    before = _snapshot(bundle_dir)
    with pytest.raises(SignatureKeyMismatchError):
        encrypt_bundle(bundle_dir, kek_env(), sign_key=signing_key[0])
    assert _snapshot(bundle_dir) == before


def test_encrypt_with_sign_key_signs_an_unsigned_bundle(
    bundle_dir: Path, kek_env: KekEnv, signing_key: Keys
) -> None:
    encrypt_bundle(bundle_dir, kek_env(), sign_key=signing_key[0])
    assert (bundle_dir / SIGNATURE_NAME).exists()
    verify_bundle(bundle_dir, signing_key[1])


# --- the segmented file format -------------------------------------------------------------------
SEG = enc.SEGMENT_SIZE


def _data_bundle(root: Path, size: int) -> Path:
    """A bundle whose model file is random bytes of a given size (the format does not care)."""
    root.mkdir()
    (root / MODEL_NAME).write_bytes(os.urandom(size))
    (root / TOKENIZER_NAME).write_text('{"model": {}}')
    manifest = Manifest(
        name="data",
        task="text-classification",
        inputs=("input_ids",),
        outputs=("logits",),
        max_length=8,
        files=file_entries(root, [MODEL_NAME, TOKENIZER_NAME]),
    )
    write_manifest(root, manifest)
    return root


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG + 5])
def test_segment_boundaries_round_trip(tmp_path: Path, kek_env: KekEnv, size: int) -> None:
    bundle = _data_bundle(tmp_path / "b", size)
    plain = (bundle / MODEL_NAME).read_bytes()
    source = kek_env()
    encrypt_bundle(bundle, source)
    assert (bundle / MODEL_NAME).stat().st_size == enc.ciphertext_size(size)
    loaded = open_bundle(bundle, key_source=source)
    assert loaded.model_bytes == plain


def test_dropping_whole_trailing_segments_is_truncation(tmp_path: Path, kek_env: KekEnv) -> None:
    bundle = _data_bundle(tmp_path / "b", 2 * SEG + 5)
    source = kek_env()
    encrypt_bundle(bundle, source)
    path = bundle / MODEL_NAME
    path.write_bytes(path.read_bytes()[: enc.HEADER_SIZE + 2 * (SEG + enc.TAG_SIZE)])
    _fix_manifest_hashes(bundle)
    with pytest.raises(CiphertextTruncatedError):
        open_bundle(bundle, key_source=source)


def test_reordered_segments_are_refused(tmp_path: Path, kek_env: KekEnv) -> None:
    bundle = _data_bundle(tmp_path / "b", 2 * SEG)
    source = kek_env()
    encrypt_bundle(bundle, source)
    path = bundle / MODEL_NAME
    data = path.read_bytes()
    step = SEG + enc.TAG_SIZE
    head, s0, s1 = data[: enc.HEADER_SIZE], data[enc.HEADER_SIZE :][:step], data[-step:]
    path.write_bytes(head + s1 + s0)
    _fix_manifest_hashes(bundle)
    with pytest.raises(DecryptionError, match="does not decrypt"):
        open_bundle(bundle, key_source=source)
