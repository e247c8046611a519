"""Key generation and key providers (env:, file:, and the registry a KMS provider plugs into)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from onnxguard.errors import DecryptionError, KeySourceError, OutputExistsError, UsageError
from onnxguard.integrity import keys
from onnxguard.integrity.keys import (
    EnvKeyProvider,
    FileKeyProvider,
    KeyProvider,
    LocalKeyProvider,
    generate_signing_keypair,
    register_key_provider,
    resolve_key_source,
)


def test_keygen_writes_a_p256_pair_with_safe_modes(tmp_path: Path) -> None:
    pair = generate_signing_keypair(tmp_path / "keys")
    priv = serialization.load_pem_private_key(pair.private_key.read_bytes(), None)
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    assert priv.curve.name == "secp256r1"
    pub = serialization.load_pem_public_key(pair.public_key.read_bytes())
    assert pub == priv.public_key()
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    assert pair.kek is None
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["private.pem", "public.pem"]


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    first = generate_signing_keypair(tmp_path)
    with pytest.raises(OutputExistsError):
        generate_signing_keypair(tmp_path)
    assert generate_signing_keypair(tmp_path, force=True).fingerprint != first.fingerprint


def test_keygen_kek_is_separate_and_usable(tmp_path: Path) -> None:
    pair = generate_signing_keypair(tmp_path, with_kek=True)
    assert pair.kek is not None
    assert stat.S_IMODE(pair.kek.stat().st_mode) == 0o600
    provider = resolve_key_source(f"file:{pair.kek}")
    assert provider.key_id.startswith("kek-")
    assert len(base64.b64decode(pair.kek.read_bytes())) == 32


def _kek() -> bytes:
    return os.urandom(32)


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: k.hex(),
        lambda k: k.hex().upper(),
        lambda k: base64.b64encode(k).decode(),
        lambda k: base64.urlsafe_b64encode(k).decode().rstrip("="),
        lambda k: "  " + base64.b64encode(k).decode() + "\n",
    ],
    ids=["hex", "HEX", "base64", "urlsafe-unpadded", "whitespace"],
)
def test_env_provider_accepts_hex_and_base64(monkeypatch: pytest.MonkeyPatch, encode) -> None:  # type: ignore[no-untyped-def]
    kek = _kek()
    monkeypatch.setenv("KEK", encode(kek))
    assert resolve_key_source("env:KEK").key_id == LocalKeyProvider(kek, "x").key_id


def test_same_key_same_id_from_env_and_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kek = _kek()
    monkeypatch.setenv("KEK", kek.hex())
    path = tmp_path / "kek.bin"
    path.write_bytes(kek)
    path.chmod(0o600)
    assert EnvKeyProvider("KEK").key_id == FileKeyProvider(str(path)).key_id
    assert EnvKeyProvider("KEK").key_id != LocalKeyProvider(_kek(), "other").key_id


def test_env_provider_errors_never_echo_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "correct-horse-battery-staple-00000"  # 34 chars: neither hex nor base64 of 32 bytes
    monkeypatch.setenv("KEK", secret)
    with pytest.raises(KeySourceError) as err:
        resolve_key_source("env:KEK")
    assert secret not in err.value.message and secret not in (err.value.hint or "")
    # A 32-character passphrase is not accepted as raw key bytes.
    monkeypatch.setenv("KEK", "a" * 32)
    with pytest.raises(KeySourceError, match="256-bit"):
        resolve_key_source("env:KEK")
    monkeypatch.delenv("KEK")
    with pytest.raises(KeySourceError, match="not set"):
        resolve_key_source("env:KEK")
    with pytest.raises(KeySourceError, match="names no variable"):
        resolve_key_source("env:")


def test_file_provider_checks_permissions_and_existence(tmp_path: Path) -> None:
    path = tmp_path / "kek.key"
    path.write_text(base64.b64encode(_kek()).decode())
    path.chmod(0o644)
    with pytest.raises(KeySourceError, match="accessible by other users") as err:
        resolve_key_source(f"file:{path}")
    assert "chmod 600" in (err.value.hint or "")
    path.chmod(0o640)  # group-readable secrets (fsGroup mounts) are accepted
    resolve_key_source(f"file:{path}")
    with pytest.raises(KeySourceError, match="does not exist"):
        resolve_key_source(f"file:{tmp_path / 'missing'}")
    with pytest.raises(KeySourceError, match="not a regular file"):
        resolve_key_source(f"file:{tmp_path}")


def test_provider_repr_hides_the_key() -> None:
    kek = _kek()
    provider = LocalKeyProvider(kek, "env:X")
    text = repr(provider) + str(vars(provider))
    assert kek.hex() not in text and base64.b64encode(kek).decode() not in text
    assert "env:X" in repr(provider)


def test_wrap_unwrap_binds_the_context() -> None:
    provider = LocalKeyProvider(_kek(), "test")
    data_key = os.urandom(32)
    wrapped = provider.wrap(data_key, b"manifest-digest-1")
    assert provider.unwrap(wrapped, b"manifest-digest-1") == data_key
    with pytest.raises(DecryptionError):
        provider.unwrap(wrapped, b"manifest-digest-2")
    with pytest.raises(DecryptionError):
        LocalKeyProvider(_kek(), "other").unwrap(wrapped, b"manifest-digest-1")
    with pytest.raises(DecryptionError, match="too short"):
        provider.unwrap(wrapped[:10], b"manifest-digest-1")


class _DictKms:
    """A stand-in for a remote KMS: it keeps the KEK, callers only see wrap/unwrap."""

    wrap_algorithm = "test-kms"

    def __init__(self, name: str) -> None:
        self._inner = LocalKeyProvider(bytes(32), f"kms:{name}")
        self.calls: list[str] = []

    @property
    def key_id(self) -> str:
        return "arn:test:kms:key/1"

    @property
    def description(self) -> str:
        return "kms:test"

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        self.calls.append("wrap")
        return self._inner.wrap(data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        self.calls.append("unwrap")
        return self._inner.unwrap(wrapped, context)


def test_registering_a_provider(monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> None:
    """A KMS-like provider plugs in through the registry and round-trips a real bundle."""
    from onnxguard.bundle import read_manifest
    from onnxguard.integrity import decrypt_bundle, encrypt_bundle, open_bundle

    monkeypatch.setattr(keys, "_PROVIDERS", dict(keys._PROVIDERS))
    instances: list[_DictKms] = []

    def factory(rest: str) -> KeyProvider:
        instances.append(_DictKms(rest))
        return instances[-1]

    register_key_provider("kms", factory)
    with pytest.raises(UsageError, match="already registered"):
        register_key_provider("kms", factory)
    register_key_provider("kms", factory, replace=True)
    plain = (bundle_dir / "model.onnx").read_bytes()
    encrypt_bundle(bundle_dir, "kms:alias/models")
    manifest = read_manifest(bundle_dir)
    assert manifest.encryption is not None
    assert manifest.encryption["key_id"] == "arn:test:kms:key/1"
    assert manifest.encryption["wrap_algorithm"] == "test-kms"
    assert open_bundle(bundle_dir, key_source="kms:alias/models").model_bytes == plain
    decrypt_bundle(bundle_dir, "kms:alias/models")
    assert [c for i in instances for c in i.calls] == ["wrap", "unwrap", "unwrap"]


def test_a_provider_object_can_be_passed_directly(bundle_dir: Path) -> None:
    from onnxguard.integrity import encrypt_bundle, open_bundle

    provider = LocalKeyProvider(_kek(), "in-memory")
    plain = (bundle_dir / "model.onnx").read_bytes()
    encrypt_bundle(bundle_dir, provider)
    assert open_bundle(bundle_dir, key_source=provider).model_bytes == plain


def test_a_factory_returning_garbage_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_PROVIDERS", dict(keys._PROVIDERS))
    register_key_provider("bad", lambda rest: object())  # type: ignore[arg-type,return-value]
    with pytest.raises(KeySourceError, match="does not implement KeyProvider"):
        resolve_key_source("bad:x")
    with pytest.raises(UsageError):
        register_key_provider("not a scheme", lambda rest: LocalKeyProvider(_kek(), "x"))
