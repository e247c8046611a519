"""Small helpers shared by signing, encryption and loading (private to the package)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from onnxguard.bundle import MANIFEST_NAME, Manifest
from onnxguard.errors import BundleError


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write through a temp file in the same directory, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def require_bundle_dir(bundle_dir: Path) -> None:
    """The same clear errors as ``bundle.read_manifest`` gives, without parsing anything."""
    if not bundle_dir.is_dir():
        raise BundleError(
            f"bundle directory {bundle_dir} does not exist",
            hint="pass the directory that `onnxguard build -o DIR` wrote",
        )
    if not (bundle_dir / MANIFEST_NAME).is_file():
        raise BundleError(
            f"{bundle_dir} is not an onnxguard bundle: {MANIFEST_NAME} is missing",
            hint="pass the directory that `onnxguard build -o DIR` wrote",
        )


def read_manifest_bytes(bundle_dir: Path) -> bytes:
    """The manifest's bytes, read once, so that what is checked is what is parsed."""
    require_bundle_dir(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if path.is_symlink():
        raise BundleError(
            f"{path} is a symbolic link; bundles hold plain files only",
            hint="copy the bundle with links dereferenced, or rebuild it",
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}", hint="check permissions") from exc


def parse_manifest(data: bytes, bundle_dir: Path) -> Manifest:
    """Parse manifest bytes with the same errors as ``bundle.read_manifest``."""
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise BundleError(
            f"cannot read {bundle_dir / MANIFEST_NAME}: {exc}",
            hint="the bundle is damaged; rebuild it",
        ) from exc
    if not isinstance(parsed, dict):
        raise BundleError(f"{bundle_dir / MANIFEST_NAME} is not a JSON object", hint="rebuild it")
    return Manifest.from_dict(parsed)
