"""Open a bundle for inference: every check that must pass before anything is parsed.

Order: (signature, when a public key is configured: checked before the manifest is even parsed,
and the manifest bytes parsed are the ones that were signed) → manifest → listed files only →
read the model and tokenizer into memory and check their sha256 (the other listed files are
hashed too, streamed) → (decrypt in memory, when encrypted).  The bytes
returned are the bytes that were checked; nothing is read twice and nothing decrypted touches the
disk: the model goes to onnxruntime as bytes, the tokenizer as a string.

Settings are passed in explicitly (no environment reading here): the CLI maps ``--public-key`` /
``ONNXGUARD_PUBLIC_KEY`` and ``--key-source`` / ``ONNXGUARD_KEY_SOURCE`` to the two arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onnxguard.bundle import (
    TOKENIZER_NAME,
    Manifest,
    check_listed_files,
    parse_manifest,
    read_manifest_bytes,
    read_verified,
    sha256_file,
)
from onnxguard.errors import CiphertextTruncatedError, HashMismatchError, KeySourceError
from onnxguard.integrity.encryption import decrypt_files, swapped_error
from onnxguard.integrity.keys import KeyProvider


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle in memory: what the Engine needs, and what the audit log records.

    ``manifest`` and ``digest`` are those of ``onnxguard.json`` as it is on disk (for an encrypted
    bundle: with its ``encryption`` section); ``model_bytes`` and ``tokenizer_json`` are plaintext.
    ``signed`` is True only when a signature was verified (a public key was given).
    """

    path: Path
    manifest: Manifest
    model_bytes: bytes
    tokenizer_json: bytes
    digest: str
    signed: bool


def open_bundle(
    bundle_dir: Path,
    *,
    public_key: Path | None = None,
    key_source: str | KeyProvider | None = None,
) -> LoadedBundle:
    """Verify and load a bundle; raises an IntegrityError subclass on any failed check.

    With ``public_key`` a missing or bad signature refuses the bundle (SignatureError).  An
    encrypted bundle needs ``key_source`` (``env:NAME``, ``file:PATH`` or a KeyProvider) and is
    decrypted in memory only.
    """
    bundle_dir = Path(bundle_dir)
    if public_key is not None:
        from onnxguard.integrity.signing import verify_signature

        manifest = verify_signature(bundle_dir, Path(public_key)).manifest
    else:
        manifest = parse_manifest(read_manifest_bytes(bundle_dir), bundle_dir)
    check_listed_files(bundle_dir, manifest)
    if manifest.encryption is not None and key_source is None:
        raise KeySourceError(
            f"bundle {bundle_dir} is encrypted (key {manifest.encryption.get('key_id', '?')}) "
            "and no key source was given",
            hint="pass --key-source env:NAME or file:PATH (or set ONNXGUARD_KEY_SOURCE) naming "
            "the key-encryption key it was encrypted with",
        )
    model_bytes = _read(bundle_dir, manifest, manifest.model_file)
    tokenizer_json = _read(bundle_dir, manifest, TOKENIZER_NAME)
    if public_key is None:  # a verified signature has already hashed every file
        _check_other_files(bundle_dir, manifest, {manifest.model_file, TOKENIZER_NAME})
    if manifest.encryption is not None and key_source is not None:
        plain = decrypt_files(
            manifest,
            {manifest.model_file: model_bytes, TOKENIZER_NAME: tokenizer_json},
            key_source,
        )
        model_bytes, tokenizer_json = plain[manifest.model_file], plain[TOKENIZER_NAME]
    return LoadedBundle(
        path=bundle_dir,
        manifest=manifest,
        model_bytes=model_bytes,
        tokenizer_json=tokenizer_json,
        digest=manifest.digest(),
        signed=public_key is not None,
    )


def _check_other_files(bundle_dir: Path, manifest: Manifest, loaded: set[str]) -> None:
    """Hash the listed files that are not loaded (streamed): every hash is always checked."""
    for name, entry in sorted(manifest.files.items()):
        if name in loaded:
            continue
        path = bundle_dir / name
        if path.is_symlink() or sha256_file(path) != entry.get("sha256"):
            raise HashMismatchError(
                f"{name} in {bundle_dir} does not match its manifest hash",
                hint="the file was changed after the build; restore it or rebuild the bundle",
                file=name,
            )


def _read(bundle_dir: Path, manifest: Manifest, name: str) -> bytes:
    """read_verified; for an encrypted bundle, a swapped or cut-short file gets its own error."""
    try:
        return read_verified(bundle_dir, manifest, name)
    except HashMismatchError as exc:
        path = bundle_dir / name
        if manifest.encryption is None or path.is_symlink() or not path.is_file():
            raise
        # Failure path only: look at what the file is instead.
        actual = sha256_file(path)
        for other, entry in manifest.files.items():
            if other != name and entry.get("sha256") == actual:
                raise swapped_error(name, other) from exc
        size, expected = path.stat().st_size, int(manifest.files[name].get("size", 0))
        if size < expected:
            raise CiphertextTruncatedError(
                f"{name} in {bundle_dir} is truncated: {size:,} B of ciphertext, "
                f"{expected:,} B expected",
                hint="the file was cut short (an interrupted copy?); copy the bundle again",
                file=name,
            ) from exc
        raise
