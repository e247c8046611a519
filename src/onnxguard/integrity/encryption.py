"""Encryption at rest: AES-256-GCM envelope encryption of a bundle's files.

Each bundle gets a fresh random 256-bit *data key*; it encrypts the files and is stored in the
manifest only *wrapped* by the key-encryption key (KEK) of a key provider (``env:``, ``file:``,
or a KMS).  The manifest itself stays readable (``inspect`` and hash checks work without keys)
and records the algorithm, the KEK's id and the wrapped data key, never key material.

Binding.  The "logical manifest" is the manifest as it was before encryption (plaintext hashes,
no ``encryption`` section); its digest is authenticated everywhere:

* the data key is wrapped with the digest as associated data: editing the manifest (labels, task,
  plaintext hashes...) or moving the wrapped key to another bundle makes unwrapping fail;
* every file is encrypted with associated data = its name + that digest: a file swapped with
  another of the bundle, or replayed from another bundle or an earlier encryption, fails.

File format (``OGENC1``): ``magic(6) | salt(16) | nonce_prefix(7)`` then segments of at most 1 MiB
plaintext, each sealed with AES-256-GCM under a per-file key ``HKDF-SHA256(data key, salt)``, with
nonce ``prefix | counter(4) | last(1)`` (the STREAM construction, as in Tink's streaming AEAD):
segments cannot be reordered, dropped or cut off, and memory stays bounded for big models.

The manifest's ``files`` lists the sha256 of the files as they are on disk (ciphertext), so
``bundle.verify_bundle_files`` and signatures cover the encrypted bundle as it is; the order is
encrypt, then sign.  Encrypting or decrypting a signed bundle invalidates ``model.sig``: it is
refused unless a signing key is given to re-sign (after the old signature verifies with it).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import stat
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from onnxguard.bundle import (
    SIGNATURE_NAME,
    Manifest,
    file_entries,
    file_entry,
    publish,
    read_verified,
    sha256_bytes,
    staging_dir,
    verify_bundle_files,
    write_manifest,
)
from onnxguard.errors import (
    BundleError,
    CiphertextTruncatedError,
    DecryptionError,
    FileSwappedError,
    HashMismatchError,
    ManifestBindingError,
    SignedBundleError,
    WrongKeyError,
)
from onnxguard.integrity.keys import KeyProvider, resolve_key_source

SCHEME = "onnxguard-envelope/1"
ALGORITHM = "AES-256-GCM"
SEGMENT_SIZE = 1 << 20
MAGIC = b"OGENC1"
_SALT = 16
_PREFIX = 7
HEADER_SIZE = len(MAGIC) + _SALT + _PREFIX
TAG_SIZE = 16
DATA_KEY_BYTES = 32
_FILE_KEY_INFO = b"onnxguard/file-key/v1"
_FILE_AAD_PREFIX = b"onnxguard/file/v1\x00"


@dataclass(frozen=True)
class EncryptionResult:
    """What ``encrypt_bundle``/``decrypt_bundle`` did, for the CLI's report."""

    bundle: Path
    key_id: str
    files: tuple[str, ...]
    resigned: bool


def is_encrypted(manifest: Manifest) -> bool:
    return manifest.encryption is not None


def logical_manifest(manifest: Manifest) -> Manifest:
    """The manifest as it was before encryption: plaintext file entries, no encryption section."""
    if manifest.encryption is None:
        return manifest
    files = manifest.encryption.get("files")
    if not isinstance(files, dict) or set(files) != set(manifest.files):
        raise ManifestBindingError(
            "the manifest's encryption section does not list the same files as the manifest",
            hint="the manifest was edited after encryption; restore it or rebuild the bundle",
        )
    try:
        entries = {str(k): file_entry(v) for k, v in files.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestBindingError(
            "the manifest's encryption section has a malformed file entry",
            hint="the manifest was edited after encryption; restore it or rebuild the bundle",
        ) from exc
    return dataclasses.replace(manifest, files=entries, encryption=None)


# --- encrypting and decrypting a bundle on disk --------------------------------------------------
def encrypt_bundle(
    bundle_dir: Path,
    key_source: str | KeyProvider,
    *,
    sign_key: Path | None = None,
    sign_password: bytes | None = None,
) -> EncryptionResult:
    """Encrypt every file of a plain bundle in place (atomically: all or nothing).

    The bundle is hash-checked first.  A signed bundle is refused unless ``sign_key`` is given:
    its signature must verify with that key's public half, and the encrypted bundle is re-signed.
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle_files(bundle_dir)
    if is_encrypted(manifest):
        raise BundleError(
            f"bundle {bundle_dir} is already encrypted",
            hint="decrypt it first if you want to encrypt it with another key",
        )
    resign = _check_signature_policy(bundle_dir, sign_key, sign_password, action="encrypt")
    provider = resolve_key_source(key_source)
    digest = manifest.digest()
    data_key = os.urandom(DATA_KEY_BYTES)
    wrapped = provider.wrap(data_key, digest.encode())
    names = sorted(manifest.files)
    with staging_dir(bundle_dir) as staged:
        for name in names:
            with (bundle_dir / name).open("rb") as src, (staged / name).open("wb") as dst:
                _encrypt_stream(src, dst, data_key, name, digest, manifest.files[name])
        encryption = {
            "scheme": SCHEME,
            "algorithm": ALGORITHM,
            "key_id": provider.key_id,
            "wrap_algorithm": provider.wrap_algorithm,
            "wrapped_key": base64.b64encode(wrapped).decode(),
            "segment_size": SEGMENT_SIZE,
            "manifest_digest": digest,
            "files": {name: dict(manifest.files[name]) for name in names},
        }
        encrypted = dataclasses.replace(
            manifest, files=file_entries(staged, names), encryption=encryption
        )
        write_manifest(staged, encrypted)
        _finish(bundle_dir, staged, sign_key if resign else None, sign_password)
    return EncryptionResult(bundle_dir, provider.key_id, tuple(names), resign)


def decrypt_bundle(
    bundle_dir: Path,
    key_source: str | KeyProvider,
    *,
    sign_key: Path | None = None,
    sign_password: bytes | None = None,
) -> EncryptionResult:
    """Decrypt an encrypted bundle in place (atomically), restoring the original manifest.

    This writes plaintext to disk on purpose (to rebuild, audit or hand over a bundle); serving
    never needs it, since :func:`decrypt_files` works in memory.
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle_files(bundle_dir)
    if not is_encrypted(manifest):
        raise BundleError(
            f"bundle {bundle_dir} is not encrypted", hint="there is nothing to decrypt"
        )
    resign = _check_signature_policy(bundle_dir, sign_key, sign_password, action="decrypt")
    provider = resolve_key_source(key_source)
    key = unwrap_data_key(manifest, provider)
    names = sorted(manifest.files)
    with staging_dir(bundle_dir) as staged:
        for name in names:
            (staged / name).write_bytes(
                key.decrypt(name, read_verified(bundle_dir, manifest, name))
            )
        write_manifest(staged, key.plain)
        _finish(bundle_dir, staged, sign_key if resign else None, sign_password)
    return EncryptionResult(bundle_dir, provider.key_id, tuple(names), resign)


def _check_signature_policy(
    bundle_dir: Path, sign_key: Path | None, password: bytes | None, *, action: str
) -> bool:
    """Re-sign only what the same key signed before: never launder a bundle someone else signed."""
    if not (bundle_dir / SIGNATURE_NAME).exists():
        return sign_key is not None
    if sign_key is None:
        raise SignedBundleError(
            f"bundle {bundle_dir} is signed; to {action} it changes its files, which would "
            f"invalidate {SIGNATURE_NAME}",
            hint=f"pass --sign-key KEY.pem to re-sign it after the {action}ion (its current "
            "signature must verify with that key), or encrypt before signing",
        )
    from onnxguard.integrity.keys import public_pem_from_private
    from onnxguard.integrity.signing import verify_signature

    with tempfile.TemporaryDirectory(prefix="onnxguard-pub-") as tmp:
        pub = Path(tmp) / "public.pem"
        pub.write_bytes(public_pem_from_private(sign_key, password))
        verify_signature(bundle_dir, pub)
    return True


def _finish(bundle_dir: Path, staged: Path, sign_key: Path | None, password: bytes | None) -> None:
    if sign_key is not None:
        from onnxguard.integrity.signing import sign_bundle

        sign_bundle(staged, sign_key, password=password)
    os.chmod(staged, stat.S_IMODE(bundle_dir.stat().st_mode))
    publish(staged, bundle_dir, force=True)


# --- the file format -----------------------------------------------------------------------------
def _file_key(data_key: bytes, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_FILE_KEY_INFO)
    return AESGCM(hkdf.derive(data_key))


def _aad(name: str, digest: str) -> bytes:
    return _FILE_AAD_PREFIX + name.encode() + b"\x00" + digest.encode()


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def segment_count(size: int) -> int:
    return max(1, -(-size // SEGMENT_SIZE))


def ciphertext_size(plaintext_size: int) -> int:
    """The exact size of an encrypted file: header + plaintext + one tag per segment."""
    return HEADER_SIZE + plaintext_size + TAG_SIZE * segment_count(plaintext_size)


def _encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    data_key: bytes,
    name: str,
    digest: str,
    entry: Mapping[str, Any],
) -> None:
    """Encrypt src into dst segment by segment, checking src against its manifest hash."""
    size = int(entry["size"])
    if segment_count(size) >= 1 << 32:
        raise BundleError(f"{name} is too large to encrypt", hint="split the model")
    salt, prefix = os.urandom(_SALT), os.urandom(_PREFIX)
    aead, aad = _file_key(data_key, salt), _aad(name, digest)
    dst.write(MAGIC + salt + prefix)
    sha, done, count = hashlib.sha256(), 0, segment_count(size)
    for index in range(count):
        chunk = src.read(SEGMENT_SIZE)
        sha.update(chunk)
        done += len(chunk)
        dst.write(aead.encrypt(_nonce(prefix, index, index == count - 1), chunk, aad))
    if src.read(1) or done != size or sha.hexdigest() != entry.get("sha256"):
        raise HashMismatchError(
            f"{name} changed while it was being encrypted (it no longer matches the manifest)",
            hint="make sure nothing writes to the bundle, then encrypt again; the bundle was "
            "left as it was",
            file=name,
        )


def _decrypt_segments(
    aead: AESGCM, prefix: bytes, body: memoryview, aad: bytes, count: int
) -> Iterator[bytes]:
    step = SEGMENT_SIZE + TAG_SIZE
    for index in range(count):
        segment = body[index * step : (index + 1) * step]
        yield aead.decrypt(_nonce(prefix, index, index == count - 1), segment, aad)


def decrypt_files(
    manifest: Manifest, ciphertexts: Mapping[str, bytes], key_source: str | KeyProvider
) -> dict[str, bytes]:
    """Decrypt files of an encrypted bundle in memory; nothing is written anywhere.

    ``ciphertexts`` are the (already hash-checked) bytes of some of the manifest's files.  Each
    plaintext is checked against the sha256 recorded before encryption.
    """
    key = unwrap_data_key(manifest, key_source)
    return {name: key.decrypt(name, data) for name, data in ciphertexts.items()}


@dataclass(frozen=True, repr=False)
class DataKey:
    """A bundle's unwrapped data key with what it is bound to (kept in memory only)."""

    key: bytes
    plain: Manifest
    digest: str

    def __repr__(self) -> str:  # never show key material
        return f"DataKey(manifest={self.digest[:16]}…)"

    def decrypt(self, name: str, data: bytes) -> bytes:
        return _decrypt_file(name, data, self.key, self.plain, self.digest)


def unwrap_data_key(manifest: Manifest, key_source: str | KeyProvider) -> DataKey:
    """Check the key id, then unwrap the data key bound to the (logical) manifest: one call."""
    encryption = _encryption_section(manifest)
    provider = resolve_key_source(key_source)
    if provider.key_id != encryption["key_id"]:
        raise WrongKeyError(
            f"wrong key: the bundle was encrypted with key {encryption['key_id']}, "
            f"but {provider.description} holds key {provider.key_id}",
            hint="pass the key source that holds the bundle's key-encryption key",
            expected=encryption["key_id"],
            got=provider.key_id,
        )
    plain = logical_manifest(manifest)
    digest = plain.digest()
    if encryption.get("manifest_digest") not in (None, digest):
        raise ManifestBindingError(
            f"{manifest.name}: the manifest was changed after encryption",
            hint="restore the original onnxguard.json, or rebuild and encrypt the bundle again",
        )
    try:
        wrapped = base64.b64decode(str(encryption["wrapped_key"]), validate=True)
    except ValueError as exc:
        raise ManifestBindingError(
            "the wrapped data key in the manifest is not valid base64",
            hint="the manifest was damaged; restore it or rebuild the bundle",
        ) from exc
    try:
        data_key = provider.unwrap(wrapped, digest.encode())
    except ManifestBindingError:
        raise
    except DecryptionError as exc:
        raise ManifestBindingError(
            f"the data key of {manifest.name} does not unwrap with key {provider.key_id}: the "
            "manifest or its wrapped key was changed after encryption",
            hint="restore the original onnxguard.json, or rebuild and encrypt the bundle again",
        ) from exc
    return DataKey(data_key, plain, digest)


def _encryption_section(manifest: Manifest) -> dict[str, Any]:
    enc = manifest.encryption
    if enc is None:
        raise BundleError(f"bundle {manifest.name} is not encrypted", hint="nothing to decrypt")
    if enc.get("scheme") != SCHEME or enc.get("algorithm") != ALGORITHM:
        raise DecryptionError(
            f"unsupported encryption {enc.get('scheme')!r}/{enc.get('algorithm')!r} "
            f"(this onnxguard reads {SCHEME!r}/{ALGORITHM!r})",
            hint="decrypt it with the onnxguard version that encrypted it",
        )
    if enc.get("segment_size") != SEGMENT_SIZE or not isinstance(enc.get("key_id"), str):
        raise DecryptionError(
            "the manifest's encryption section is malformed",
            hint="restore the original onnxguard.json, or rebuild the bundle",
        )
    return enc


def _decrypt_file(name: str, data: bytes, data_key: bytes, plain: Manifest, digest: str) -> bytes:
    entry = plain.files.get(name)
    if entry is None:
        raise HashMismatchError(f"{name} is not listed in the manifest", hint="rebuild the bundle")
    size = int(entry["size"])
    expected = ciphertext_size(size)
    view = memoryview(data)
    try:
        if len(data) != expected or view[: len(MAGIC)] != MAGIC:
            raise InvalidTag
        salt = bytes(view[len(MAGIC) : len(MAGIC) + _SALT])
        prefix = bytes(view[len(MAGIC) + _SALT : HEADER_SIZE])
        aead = _file_key(data_key, salt)
        body, aad = view[HEADER_SIZE:], _aad(name, digest)
        out = b"".join(_decrypt_segments(aead, prefix, body, aad, segment_count(size)))
    except InvalidTag as exc:
        other = _belongs_to(view, data_key, plain, digest, exclude=name)
        if other:
            raise swapped_error(name, other) from exc
        if len(data) < expected:
            raise CiphertextTruncatedError(
                f"{name} is truncated: {len(data):,} B of ciphertext, {expected:,} B expected",
                hint="the file was cut short (an interrupted copy?); copy the bundle again",
                file=name,
            ) from exc
        raise DecryptionError(
            f"{name} does not decrypt: it was modified, or replayed from another bundle or an "
            "earlier encryption",
            hint="restore the bundle from a trusted copy, or rebuild and encrypt it again",
            file=name,
        ) from exc
    if sha256_bytes(out) != entry.get("sha256"):
        raise HashMismatchError(
            f"{name} decrypts, but not to the content recorded before encryption",
            hint="rebuild the bundle",
            file=name,
        )
    return out


def swapped_error(name: str, other: str) -> FileSwappedError:
    return FileSwappedError(
        f"{name} holds the encrypted contents of {other}: files of the bundle were swapped or "
        "renamed",
        hint="restore the bundle from a trusted copy",
        file=name,
        contents_of=other,
    )


def _belongs_to(
    view: memoryview, data_key: bytes, plain: Manifest, digest: str, *, exclude: str
) -> str | None:
    """Which other file of this bundle the ciphertext authenticates as (first segment only)."""
    if len(view) < HEADER_SIZE + TAG_SIZE or view[: len(MAGIC)] != MAGIC:
        return None
    salt = bytes(view[len(MAGIC) : len(MAGIC) + _SALT])
    prefix = bytes(view[len(MAGIC) + _SALT : HEADER_SIZE])
    aead = _file_key(data_key, salt)
    first = view[HEADER_SIZE : HEADER_SIZE + SEGMENT_SIZE + TAG_SIZE]
    for other in sorted(plain.files):
        if other == exclude:
            continue
        for last in (True, False):
            try:
                aead.decrypt(_nonce(prefix, 0, last), first, _aad(other, digest))
            except InvalidTag:
                continue
            return other
    return None
