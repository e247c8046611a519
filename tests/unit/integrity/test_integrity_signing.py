"""Signing and verification with OpenSSF Model Signing: round trip offline, and every tampering."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import pytest

from onnxguard.bundle import MANIFEST_NAME, MODEL_NAME, SIGNATURE_NAME, TOKENIZER_NAME
from onnxguard.errors import (
    BundleError,
    HashMismatchError,
    IntegrityError,
    KeySourceError,
    SignatureError,
    SignatureInvalidError,
    SignatureKeyMismatchError,
    SignatureMissingError,
    SignedFileAddedError,
    SignedFileChangedError,
    SignedFileRemovedError,
)
from onnxguard.integrity import sign_bundle, verify_bundle, verify_signature
from onnxguard.integrity.keys import generate_signing_keypair

Keys = tuple[Path, Path]


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any attempt to open a network connection fails the test (signing must work offline)."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_sign_verify_round_trip_offline(
    bundle_dir: Path, signing_key: Keys, no_network: list[object]
) -> None:
    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    info = verify_signature(bundle_dir, pub)
    verify_bundle(bundle_dir, pub)
    assert no_network == []
    # The signature covers every file, the manifest included, and nothing else.
    assert set(info.files) == {MODEL_NAME, TOKENIZER_NAME, MANIFEST_NAME}
    assert info.method == "key"
    assert info.manifest.name == "tiny-bert"
    assert info.key_fingerprint and len(info.key_fingerprint) == 64
    # It is a standard OpenSSF model-signing bundle (DSSE envelope, no transparency log).
    sig = json.loads((bundle_dir / SIGNATURE_NAME).read_text())
    assert sig["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    assert sig["verificationMaterial"]["publicKey"]["hint"] == info.key_fingerprint


def test_signature_survives_renaming_the_bundle(bundle_dir: Path, signing_key: Keys) -> None:
    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    moved = bundle_dir.rename(bundle_dir.with_name("published-elsewhere"))
    verify_bundle(moved, pub)


def test_the_model_signing_library_accepts_our_signature(
    bundle_dir: Path, signing_key: Keys
) -> None:
    """Interoperability: the library's own verifier, configured independently, agrees."""
    import model_signing

    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(
        bundle_dir, bundle_dir / SIGNATURE_NAME
    )


@pytest.mark.parametrize("name", [MODEL_NAME, TOKENIZER_NAME, MANIFEST_NAME])
def test_one_byte_changed_in_a_file_fails(bundle_dir: Path, signing_key: Keys, name: str) -> None:
    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    # A byte inside a JSON string keeps the manifest parseable: the signature must catch it.
    offset = (bundle_dir / name).read_bytes().index(b"tiny-bert") if name == MANIFEST_NAME else None
    _flip_byte(bundle_dir / name, offset)
    with pytest.raises(SignedFileChangedError) as err:
        verify_bundle(bundle_dir, pub)
    assert name in err.value.message and "changed after signing" in err.value.message
    assert err.value.fields["changed"] == [name]
    assert err.value.exit_code == 7


def test_one_byte_changed_in_the_signature_fails(bundle_dir: Path, signing_key: Keys) -> None:
    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    sig = json.loads((bundle_dir / SIGNATURE_NAME).read_text())
    raw = bytearray(base64.b64decode(sig["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[10] ^= 0x01
    sig["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(raw).decode()
    (bundle_dir / SIGNATURE_NAME).write_text(json.dumps(sig))
    with pytest.raises(SignatureInvalidError) as err:
        verify_bundle(bundle_dir, pub)
    assert "does not verify" in err.value.message


def test_a_forged_payload_fails(bundle_dir: Path, signing_key: Keys) -> None:
    """A changed file whose signed digest is rewritten to match fails: the payload is signed."""
    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    _flip_byte(bundle_dir / MODEL_NAME)
    from onnxguard.bundle import sha256_file

    sig = json.loads((bundle_dir / SIGNATURE_NAME).read_text())
    statement = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == MODEL_NAME:
            resource["digest"] = sha256_file(bundle_dir / MODEL_NAME)
    sig["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (bundle_dir / SIGNATURE_NAME).write_text(json.dumps(sig))
    with pytest.raises(SignatureInvalidError):
        verify_bundle(bundle_dir, pub)


def test_garbage_signature_file_fails(bundle_dir: Path, signing_key: Keys) -> None:
    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    (bundle_dir / SIGNATURE_NAME).write_text("not a signature")
    with pytest.raises(SignatureInvalidError) as err:
        verify_bundle(bundle_dir, pub)
    assert "not a readable OpenSSF model signature" in err.value.message


@pytest.mark.parametrize("added", ["extra.bin", ".hidden", ".gitignore", "sub/dir/file.txt"])
def test_a_file_added_fails(bundle_dir: Path, signing_key: Keys, added: str) -> None:
    """Including git paths, which the library would ignore by default."""
    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    path = bundle_dir / added
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("surprise")
    with pytest.raises(SignedFileAddedError) as err:
        verify_bundle(bundle_dir, pub)
    assert added in err.value.message and "not signed" in err.value.message


@pytest.mark.parametrize("name", [TOKENIZER_NAME, MODEL_NAME])
def test_a_file_removed_fails(bundle_dir: Path, signing_key: Keys, name: str) -> None:
    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    (bundle_dir / name).unlink()
    with pytest.raises(SignedFileRemovedError) as err:
        verify_bundle(bundle_dir, pub)
    assert name in err.value.message and "missing signed files" in err.value.message


def test_a_file_replaced_by_a_symlink_fails(bundle_dir: Path, signing_key: Keys) -> None:
    priv, pub = signing_key
    sign_bundle(bundle_dir, priv)
    target = bundle_dir.parent / "elsewhere.json"
    target.write_bytes((bundle_dir / TOKENIZER_NAME).read_bytes())
    (bundle_dir / TOKENIZER_NAME).unlink()
    (bundle_dir / TOKENIZER_NAME).symlink_to(target)
    with pytest.raises(SignatureError):
        verify_bundle(bundle_dir, pub)


def test_signed_by_another_key_fails(
    bundle_dir: Path, signing_key: Keys, other_signing_key: Keys
) -> None:
    sign_bundle(bundle_dir, other_signing_key[0])
    with pytest.raises(SignatureKeyMismatchError) as err:
        verify_bundle(bundle_dir, signing_key[1])
    assert "signed by another key" in err.value.message
    assert err.value.fields["signed_by"] != err.value.fields["expected"]


def test_another_key_without_the_key_hint_still_fails(
    bundle_dir: Path, signing_key: Keys, other_signing_key: Keys
) -> None:
    """Old-format signatures carry no key hint: the cryptographic check alone refuses them."""
    sign_bundle(bundle_dir, other_signing_key[0])
    sig = json.loads((bundle_dir / SIGNATURE_NAME).read_text())
    del sig["verificationMaterial"]["publicKey"]["hint"]
    (bundle_dir / SIGNATURE_NAME).write_text(json.dumps(sig))
    with pytest.raises(SignatureInvalidError):
        verify_bundle(bundle_dir, signing_key[1])


def test_missing_signature_fails(bundle_dir: Path, signing_key: Keys) -> None:
    with pytest.raises(SignatureMissingError) as err:
        verify_bundle(bundle_dir, signing_key[1])
    assert "not signed" in err.value.message and err.value.hint


def test_errors_are_distinct_classes() -> None:
    classes = [
        SignatureMissingError,
        SignatureInvalidError,
        SignatureKeyMismatchError,
        SignedFileChangedError,
        SignedFileAddedError,
        SignedFileRemovedError,
    ]
    assert len(set(classes)) == len(classes)
    assert all(issubclass(c, SignatureError) and issubclass(c, IntegrityError) for c in classes)


def test_resigning_replaces_the_signature(
    bundle_dir: Path, signing_key: Keys, other_signing_key: Keys
) -> None:
    sign_bundle(bundle_dir, other_signing_key[0])
    sign_bundle(bundle_dir, signing_key[0])
    verify_bundle(bundle_dir, signing_key[1])
    with pytest.raises(SignatureKeyMismatchError):
        verify_bundle(bundle_dir, other_signing_key[1])


def test_sign_refuses_a_bundle_that_does_not_match_its_manifest(
    bundle_dir: Path, signing_key: Keys
) -> None:
    _flip_byte(bundle_dir / MODEL_NAME)
    with pytest.raises(HashMismatchError):
        sign_bundle(bundle_dir, signing_key[0])
    assert not (bundle_dir / SIGNATURE_NAME).exists()
    (bundle_dir / "stray.txt").write_text("x")
    with pytest.raises(HashMismatchError):
        sign_bundle(bundle_dir, signing_key[0])


def test_signed_but_manifest_inconsistent_is_refused(bundle_dir: Path, signing_key: Keys) -> None:
    """A signer who signs a hand-edited bundle does not make it loadable."""
    from onnxguard.integrity import signing

    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    manifest["files"][MODEL_NAME]["sha256"] = "0" * 64
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    # sign_bundle refuses such a bundle; sign it with the library directly.
    import model_signing

    model_signing.signing.Config().use_elliptic_key_signer(
        private_key=signing_key[0]
    ).set_hashing_config(signing._hashing_config()).sign(bundle_dir, bundle_dir / SIGNATURE_NAME)
    with pytest.raises(HashMismatchError) as err:
        verify_bundle(bundle_dir, signing_key[1])
    assert "manifest does not match the signed files" in err.value.message


def test_signature_ignoring_files_is_refused(bundle_dir: Path, signing_key: Keys) -> None:
    """A signature made with the library's own ignore list (here: the model) is not accepted."""
    import model_signing

    hashing = model_signing.hashing.Config().set_ignored_paths(
        paths=[SIGNATURE_NAME, MODEL_NAME], ignore_git_paths=False
    )
    model_signing.signing.Config().use_elliptic_key_signer(
        private_key=signing_key[0]
    ).set_hashing_config(hashing).sign(bundle_dir, bundle_dir / SIGNATURE_NAME)
    with pytest.raises(SignatureInvalidError) as err:
        verify_bundle(bundle_dir, signing_key[1])
    assert "not made the way onnxguard signs" in err.value.message


def test_bad_key_files_are_clear_errors(
    bundle_dir: Path, signing_key: Keys, tmp_path: Path
) -> None:
    priv, pub = signing_key
    with pytest.raises(KeySourceError, match="does not exist"):
        sign_bundle(bundle_dir, tmp_path / "nope.pem")
    with pytest.raises(KeySourceError, match="not a usable PEM private key"):
        sign_bundle(bundle_dir, pub)
    sign_bundle(bundle_dir, priv)
    with pytest.raises(KeySourceError, match="not a PEM public key"):
        verify_bundle(bundle_dir, priv)


def test_not_a_bundle(tmp_path: Path, signing_key: Keys) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        verify_bundle(tmp_path / "missing", signing_key[1])
    with pytest.raises(BundleError, match="not an onnxguard bundle"):
        verify_bundle(tmp_path, signing_key[1])


def test_password_protected_key(bundle_dir: Path, tmp_path: Path) -> None:
    pair = generate_signing_keypair(tmp_path / "locked", password=b"correct horse")
    assert b"ENCRYPTED" in pair.private_key.read_bytes()
    with pytest.raises(KeySourceError, match="encrypted and no password"):
        sign_bundle(bundle_dir, pair.private_key)
    with pytest.raises(KeySourceError, match="password is wrong"):
        sign_bundle(bundle_dir, pair.private_key, password=b"wrong")
    sign_bundle(bundle_dir, pair.private_key, password=b"correct horse")
    verify_bundle(bundle_dir, pair.public_key)


def test_certificate_mode_round_trip_offline(
    bundle_dir: Path, tmp_path: Path, no_network: list[object]
) -> None:
    """Certificate mode: a signing certificate issued by a local CA, verified against that CA."""
    from onnxguard.integrity import verify_signature_certificate

    ca_pem, cert_pem, key_pem = _make_pki(tmp_path)
    sign_bundle(bundle_dir, key_pem, certificate=cert_pem, certificate_chain=[ca_pem])
    info = verify_signature_certificate(bundle_dir, [ca_pem])
    assert info.method == "certificate"
    assert no_network == []
    _flip_byte(bundle_dir / TOKENIZER_NAME)
    with pytest.raises(SignedFileChangedError):
        verify_signature_certificate(bundle_dir, [ca_pem])
    # Another CA does not vouch for this certificate.
    other_ca, _, _ = _make_pki(tmp_path / "other")
    _flip_byte(bundle_dir / TOKENIZER_NAME)
    with pytest.raises(SignatureInvalidError):
        verify_signature_certificate(bundle_dir, [other_ca])


def _make_pki(root: Path) -> tuple[Path, Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onnxguard test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model signer")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = root / "ca.pem", root / "cert.pem", root / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path
