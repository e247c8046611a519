"""Bundle layout and manifest (``onnxguard.json``): atomic write, hash-checked read.

A bundle is a directory::

    model.onnx         the model to serve (int8 when it passed the accuracy budget, else fp32)
    model.fp32.onnx    the optimized fp32 graph (optional)
    tokenizer.json     fast tokenizer (+ tokenizer_config.json / special_tokens_map.json if present)
    onnxguard.json     the manifest: source, task, labels, I/O, stage results, sha256 of every file
    model.sig          OpenSSF model-signing bundle over every file (when signed)

The manifest lists every other file with its sha256 and size; a reader refuses a file whose hash
differs and any file that is not listed, so what runs is exactly what was built.  Reading hashes
the bytes it hands on (not the file a second time), which closes the check-then-use gap.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from onnxguard._files import atomic_write
from onnxguard.drift import Reference as DriftReference
from onnxguard.errors import (
    BundleError,
    BundleNotFoundError,
    DiskFullError,
    HashMismatchError,
    OutputExistsError,
    OutputNotReplaceableError,
)
from onnxguard.tasks import PoolingSpec, PromptSpec, Task

MANIFEST_NAME = "onnxguard.json"
SIGNATURE_NAME = "model.sig"
FORMAT_VERSION = "onnxguard-bundle/1"
MODEL_NAME = "model.onnx"
FP32_MODEL_NAME = "model.fp32.onnx"
TOKENIZER_NAME = "tokenizer.json"
# Files that are not covered by the manifest's own hash list.
UNHASHED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Stream a file through sha256 (bounded memory for multi-GB weights)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileEntry(TypedDict):
    """One file of a bundle as the manifest records it."""

    sha256: str
    size: int


def file_entry(data: Any) -> FileEntry:
    """A manifest file entry from JSON; KeyError/TypeError/ValueError when it is malformed."""
    return FileEntry(sha256=str(data["sha256"]), size=int(data["size"]))


@dataclass(frozen=True)
class Manifest:
    """The typed view of ``onnxguard.json``; ``stages`` holds each stage's result as JSON."""

    name: str
    task: Task
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    max_length: int
    labels: tuple[str, ...] = ()
    pooling: PoolingSpec | None = None
    prompts: PromptSpec | None = None
    """sentence-transformers prompts; absent in bundles built before they were read."""
    model_file: str = MODEL_NAME
    precision: str = "fp32"
    source: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    encryption: dict[str, Any] | None = None
    drift_reference: DriftReference | None = None
    """Build-time drift statistics of the validation texts (``drift``); None in older bundles."""
    created: str = ""
    format: str = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.task, Task):  # a plain string from a caller or a test
            object.__setattr__(self, "task", Task(self.task))
        if isinstance(self.pooling, dict):
            object.__setattr__(self, "pooling", PoolingSpec.from_dict(self.pooling))
        if isinstance(self.prompts, dict):
            object.__setattr__(self, "prompts", PromptSpec.from_dict(self.prompts))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": self.format,
            "name": self.name,
            "created": self.created,
            "task": self.task.value,
            "model": {"file": self.model_file, "precision": self.precision},
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "labels": list(self.labels),
            "pooling": self.pooling.to_dict() if self.pooling else None,
            "max_length": self.max_length,
            "source": self.source,
            "tools": self.tools,
            "stages": self.stages,
            "files": self.files,
        }
        if self.prompts is not None:  # only when present: an old manifest's digest is unchanged
            data["prompts"] = self.prompts.to_dict()
        if self.encryption is not None:
            data["encryption"] = self.encryption
        if self.drift_reference is not None:
            data["drift_reference"] = self.drift_reference.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        try:
            fmt = data["format"]
            if fmt != FORMAT_VERSION:
                raise BundleError(
                    f"unsupported bundle format {fmt!r} (this onnxguard reads {FORMAT_VERSION!r})",
                    hint="rebuild the bundle with this version of onnxguard",
                )
            return cls(
                name=str(data["name"]),
                task=Task(str(data["task"])),
                inputs=tuple(data["inputs"]),
                outputs=tuple(data["outputs"]),
                max_length=int(data["max_length"]),
                labels=tuple(data.get("labels") or ()),
                pooling=PoolingSpec.from_dict(data["pooling"]) if data.get("pooling") else None,
                prompts=PromptSpec.from_dict(data["prompts"]) if data.get("prompts") else None,
                model_file=str(data["model"]["file"]),
                precision=str(data["model"].get("precision", "fp32")),
                source=dict(data.get("source") or {}),
                tools=dict(data.get("tools") or {}),
                stages=dict(data.get("stages") or {}),
                files={str(k): file_entry(v) for k, v in data["files"].items()},
                encryption=data.get("encryption"),
                drift_reference=(DriftReference.from_dict(data["drift_reference"])
                                 if data.get("drift_reference") is not None else None),
                created=str(data.get("created", "")),
                format=fmt,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(
                f"manifest {MANIFEST_NAME} is malformed: {exc!r}",
                hint="the bundle is damaged or not an onnxguard bundle; rebuild it",
            ) from exc

    def digest(self) -> str:
        """sha256 of the canonical manifest JSON (binds encryption and signatures to it)."""
        return sha256_bytes(canonical_json(self.to_dict()))


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def require_bundle_dir(bundle_dir: Path) -> None:
    """Clear errors for a path that is missing (a usage error) or not a bundle."""
    if not bundle_dir.exists():
        raise BundleNotFoundError(
            f"bundle directory {bundle_dir} does not exist",
            hint="pass the directory that `onnxguard build -o DIR` wrote",
        )
    if not bundle_dir.is_dir() or not (bundle_dir / MANIFEST_NAME).is_file():
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
    """Parse manifest bytes; every reader of ``onnxguard.json`` goes through here."""
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


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and parse the manifest, with a clear error if the directory is not a bundle."""
    bundle_dir = Path(bundle_dir)
    return parse_manifest(read_manifest_bytes(bundle_dir), bundle_dir)


def file_entries(directory: Path, names: list[str]) -> dict[str, FileEntry]:
    """sha256 and size of each named file, for the manifest."""
    return {
        name: FileEntry(sha256=sha256_file(directory / name),
                        size=(directory / name).stat().st_size)
        for name in sorted(names)
    }


def check_listed_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Refuse files that the manifest does not list, and listed files that are missing."""
    present = {p.name for p in bundle_dir.iterdir()} - UNHASHED
    listed = set(manifest.files)
    if extra := sorted(present - listed):
        raise HashMismatchError(
            f"bundle {bundle_dir} holds files the manifest does not list: {', '.join(extra)}",
            hint="someone added files after the build; rebuild or remove them",
            files=extra,
        )
    if missing := sorted(listed - present):
        raise HashMismatchError(
            f"bundle {bundle_dir} is missing files listed in the manifest: {', '.join(missing)}",
            hint="the bundle is incomplete; copy it again or rebuild it",
            files=missing,
        )


def read_verified(bundle_dir: Path, manifest: Manifest, name: str) -> bytes:
    """Read one bundle file into memory and check it against the manifest's sha256."""
    entry = manifest.files.get(name)
    if entry is None:
        raise HashMismatchError(
            f"{name} is not listed in the manifest of {bundle_dir}",
            hint="rebuild the bundle",
        )
    path = bundle_dir / name
    if path.is_symlink():
        raise HashMismatchError(
            f"{path} is a symbolic link; bundles hold plain files only",
            hint="copy the bundle with links dereferenced, or rebuild it",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}", hint="check permissions") from exc
    actual = sha256_bytes(data)
    if actual != entry.get("sha256"):
        raise HashMismatchError(
            f"{name} in {bundle_dir} does not match its manifest hash "
            f"(expected {entry.get('sha256')}, got {actual})",
            hint="the file was changed after the build; restore it or rebuild the bundle",
            file=name,
        )
    return data


def verify_bundle_files(bundle_dir: Path, manifest: Manifest | None = None) -> Manifest:
    """Check every file's hash (streamed) and that no unlisted file exists."""
    bundle_dir = Path(bundle_dir)
    manifest = manifest or read_manifest(bundle_dir)
    check_listed_files(bundle_dir, manifest)
    for name, entry in manifest.files.items():
        actual = sha256_file(bundle_dir / name)
        if actual != entry.get("sha256"):
            raise HashMismatchError(
                f"{name} in {bundle_dir} does not match its manifest hash",
                hint="the file was changed after the build; restore it or rebuild the bundle",
                file=name,
            )
    return manifest


def prepare_output(out_dir: Path, *, force: bool) -> None:
    """Refuse an output that must not be replaced; the parent must be writable."""
    check_replaceable(out_dir, force=force)
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(
            f"cannot create the output's parent directory {parent}: {exc.strerror}",
            hint="choose an -o path in a directory you can write to",
        ) from exc


def check_replaceable(out_dir: Path, *, force: bool) -> None:
    """An output may be new or empty; ``force`` may replace an onnxguard bundle, nothing else.

    ``--force`` never deletes user data: a directory is replaced only when its manifest says it
    is a bundle and it holds no file the manifest does not account for.
    """
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise OutputExistsError(
            f"output {out_dir} exists and is not a directory", hint="choose another -o path"
        )
    if not out_dir.is_dir():
        return
    here = Path.cwd().resolve()
    target = out_dir.resolve()
    if target == here or target in here.parents:
        raise OutputNotReplaceableError(
            f"the output {out_dir} is the current directory or one above it; a bundle is "
            "published by renaming a directory into place, so it will not replace this one",
            hint="write the bundle to a new directory, e.g. -o bundles/NAME",
        )
    if not any(out_dir.iterdir()):
        return
    if not force:
        raise OutputExistsError(
            f"output directory {out_dir} is not empty",
            hint="choose an empty or new directory, or pass --force to replace an existing "
            "onnxguard bundle",
        )
    reason = _not_a_bundle(out_dir)
    if reason:
        raise OutputNotReplaceableError(
            f"--force will not replace {out_dir}: {reason}",
            hint="--force only replaces an onnxguard bundle or an empty directory; choose a "
            "new -o path, or move the directory's files away yourself",
        )


def _not_a_bundle(directory: Path) -> str | None:
    """Why ``directory`` is not a replaceable bundle, or None when it is one."""
    try:
        manifest = read_manifest(directory)
    except (BundleError, ValueError) as exc:
        return f"it is not an onnxguard bundle ({exc})"
    expected = set(manifest.files) | UNHASHED
    extra = sorted(p.name for p in directory.iterdir() if p.name not in expected or p.is_dir())
    if extra:
        return f"it holds files that are not part of the bundle: {', '.join(extra[:5])}"
    return None


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Any:
    """A temp directory beside ``out_dir`` (same filesystem, so the final rename is atomic).

    It is removed on any error or interrupt, so a failed build leaves nothing half-written.
    """
    parent = out_dir.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(
                f"no space left on the device while writing {out_dir}",
                hint="free disk space or choose an output on another filesystem; "
                "nothing was written",
            ) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(staged: Path, out_dir: Path, *, force: bool) -> None:
    """Move a finished staging directory into place atomically (old one removed only after)."""
    out_dir = out_dir.resolve()
    for path in staged.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    backup: Path | None = None
    if out_dir.exists():
        check_replaceable(out_dir, force=force)  # again: it may have changed during the build
        backup = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, backup)
    os.replace(staged, out_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write the manifest atomically (never a half-written JSON)."""
    atomic_write(directory / MANIFEST_NAME,
                 json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
