"""A model repository: several models, several versions each, loaded and swapped without a restart.

Layout (Triton's)::

    REPO_DIR/
      repository.toml        optional: which versions of each model to serve
      sst2/
        1/                   a bundle written by `onnxguard build` (a positive integer name)
        2/
      minilm/
        1/

Directories whose name is not a positive integer (``.3.tmp``, ``staging``) are ignored, so a new
version is copied in under another name and renamed into place.  ``repository.toml``::

    [models.sst2]
    policy = "latest"     # latest (default) | all | specific
    latest = 1            # with latest: how many of the newest versions to serve
    versions = [1, 3]     # with specific: exactly these

Every version is verified before it is served: the manifest's hashes, the signature when the
server has a public key, a clean scan summary in the manifest, decryption in memory; then it is
warmed up, and only then put in the model set, in one step under its lock.  Requests already
running finish on the version they leased; the version swapped out stops when they are done.  A
version that fails verification or warm-up is refused (audited, logged, counted) and is not
retried until its files change; what was serving keeps serving.  At start-up a refused version
stops the server instead (fail closed: the operator fixes or removes it).

Changes are noticed by polling (``--repository-poll``, like Triton's ``poll`` control mode: new,
changed and removed version directories) and made on demand by the admin routes (Triton's
repository extension: index, load, unload; and ``rollback``).  ``rollback`` holds back the
default (newest) version: the policy then picks the one before it, which is loaded if needed
before the held one stops.  A hold lasts until the model's next ``load`` call (or a restart: to
make a rollback permanent, move the bad version's directory out of the repository).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from onnxguard.bundle import MANIFEST_NAME
from onnxguard.errors import (
    ModelNotFoundError,
    OnnxGuardError,
    RepositoryError,
    RollbackError,
)
from onnxguard.serve._shared import AuditSink
from onnxguard.serve.auth import MODEL_NAME
from onnxguard.serve.metrics import ServeMetrics
from onnxguard.serve.models import ModelSet
from onnxguard.serve.service import EngineLoader, Service, default_loader
from onnxguard.serve.settings import ServeConfig

log = logging.getLogger("onnxguard.serve")

POLICY_FILE = "repository.toml"
_MAX_FILES = 10_000
"""Files looked at per version directory when fingerprinting (a bundle has a handful)."""

PolicyKind = Literal["latest", "all", "specific"]


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served (Triton's ``version_policy``)."""

    kind: PolicyKind = "latest"
    latest: int = 1
    versions: tuple[int, ...] = ()

    def choose(self, available: Sequence[int]) -> list[int]:
        ordered = sorted(set(available))
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.latest:]


def read_policies(root: Path) -> dict[str, VersionPolicy]:
    """``repository.toml`` → policy per model (absent file: every model ``latest 1``)."""
    path = root / POLICY_FILE
    if not path.exists():
        return {}
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RepositoryError(
            f"cannot read {where}: {exc}", hint="fix the file (TOML) or remove it"
        ) from None
    unknown = set(data) - {"models"}
    if unknown:
        raise RepositoryError(
            f"{where}: unknown section(s) {', '.join(sorted(unknown))}",
            hint='the file holds [models.NAME] tables only, e.g. [models.sst2] policy = "all"',
        )
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise RepositoryError(f"{where}: models must be a table of [models.NAME] tables")
    return {name: _policy(where, name, table) for name, table in models.items()}


def _policy(where: str, name: str, table: Any) -> VersionPolicy:
    fix = 'e.g. policy = "latest" and latest = 2, or policy = "specific" and versions = [1, 3]'
    if not MODEL_NAME.fullmatch(name) or not isinstance(table, dict):
        raise RepositoryError(f"{where}: [models.{name}] is not a valid model table", hint=fix)
    unknown = set(table) - {"policy", "latest", "versions"}
    if unknown:
        raise RepositoryError(
            f"{where}: [models.{name}] has unknown key(s) {', '.join(sorted(unknown))}", hint=fix
        )
    kind = table.get("policy", "latest")
    latest = table.get("latest", 1)
    versions = table.get("versions", [])
    if kind not in ("latest", "all", "specific"):
        raise RepositoryError(f"{where}: [models.{name}] policy {kind!r} is unknown", hint=fix)
    if not isinstance(latest, int) or isinstance(latest, bool) or not 1 <= latest <= 1000:
        raise RepositoryError(f"{where}: [models.{name}] latest must be 1..1000", hint=fix)
    if not isinstance(versions, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in versions
    ):
        raise RepositoryError(
            f"{where}: [models.{name}] versions must be positive integers", hint=fix
        )
    if kind == "specific" and not versions:
        raise RepositoryError(f"{where}: [models.{name}] policy specific needs versions", hint=fix)
    if kind != "specific" and versions:
        raise RepositoryError(
            f"{where}: [models.{name}] versions only go with policy \"specific\"", hint=fix
        )
    return VersionPolicy(kind, latest, tuple(versions))


def is_repository(path: Path) -> bool:
    """A directory that is not a bundle itself and holds ``NAME/VERSION/`` directories (or a
    ``repository.toml``)."""
    if not path.is_dir() or (path / MANIFEST_NAME).exists():
        return False
    if (path / POLICY_FILE).is_file():
        return True
    return any(scan_layout(path).values())


def scan_layout(root: Path) -> dict[str, dict[int, Path]]:
    """The model and version directories on disk now (others are ignored)."""
    found: dict[str, dict[int, Path]] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise RepositoryError(
            f"cannot read model repository {root}: {exc.strerror or exc}",
            hint="check the path and its permissions",
        ) from None
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or not MODEL_NAME.fullmatch(entry.name):
            continue
        versions: dict[int, Path] = {}
        try:
            children = list(os.scandir(entry.path))
        except OSError:
            continue
        for child in children:
            name = child.name
            if (
                child.is_dir(follow_symlinks=False)
                and name.isascii()
                and name.isdigit()
                and not name.startswith("0")
                and len(name) <= 9
            ):
                versions[int(name)] = Path(child.path)
        found[entry.name] = versions
    return found


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a version directory's files change (names, sizes, mtimes)."""
    items: list[tuple[str, int, int]] = []
    for base, dirs, files in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(base, name)
            try:
                info = path.lstat()
            except OSError:
                continue
            items.append((str(path.relative_to(directory)), info.st_size, info.st_mtime_ns))
            if len(items) >= _MAX_FILES:
                return tuple(items)
    return tuple(items)


@dataclass
class _ModelState:
    held: set[int] = field(default_factory=set)
    """Versions held back by a rollback (until the next ``load``)."""
    refused: dict[int, tuple[tuple[tuple[str, int, int], ...], str]] = field(default_factory=dict)
    """Version → (fingerprint when refused, reason): not retried until the files change."""
    loaded: dict[int, tuple[tuple[str, int, int], ...]] = field(default_factory=dict)
    unloaded: bool = False
    """Unloaded by an admin: polling leaves it alone until it is loaded again."""


@dataclass(frozen=True)
class Outcome:
    """What one sync did to one model."""

    loaded: list[int] = field(default_factory=list)
    unloaded: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)


class Repository:
    """Loads a repository into a ``ModelSet`` and keeps it in step with the disk and the admins."""

    def __init__(
        self,
        config: ServeConfig,
        metrics: ServeMetrics,
        *,
        tokens: Any = None,
        audit: AuditSink | None = None,
        loader_for: Callable[[ServeConfig], EngineLoader] = default_loader,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.root = Path(config.bundle)
        self.config = config
        self.metrics = metrics
        self.models = ModelSet(config.default_model)
        self._tokens = tokens
        self._audit = audit
        self._loader_for = loader_for
        self._on_ready = on_ready
        self._states: dict[str, _ModelState] = {}
        self._sync_lock = threading.Lock()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._poller: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_error: str | None = None

    # --- lifecycle (the app's lifespan) ----------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop audit records are written through (set by the lifespan)."""
        self._loop = loop

    def start(self) -> None:
        """Load what the policies choose; any refusal stops the server (fail closed)."""
        with self._sync_lock:
            outcomes = self._sync_all()
        refused = [
            f"{name} version {v}: {reason}"
            for name, outcome in outcomes.items()
            for v, reason in outcome.refused.items()
        ]
        if refused:
            raise RepositoryError(
                f"model repository {self.root}: {refused[0]}"
                + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""),
                hint="fix or remove the version directory (or hold it back in repository.toml "
                "with a specific policy); the server serves nothing it could not verify",
            )
        if not self.models.names():
            raise RepositoryError(
                f"model repository {self.root} holds no model versions",
                hint="put bundles at NAME/VERSION/ (VERSION a positive integer), e.g. "
                f"`onnxguard build SOURCE -o {self.root}/mymodel/1`",
            )
        if self.config.default_model is not None and self.config.default_model not in (
            self.models.names()
        ):
            raise RepositoryError(
                f"--default-model {self.config.default_model} is not in the repository",
                hint=f"models found: {', '.join(self.models.names())}",
            )
        self._ready.set()
        if self._on_ready is not None:
            self._on_ready()
        if self.config.repository_poll_s > 0:
            self._poller = threading.Thread(
                target=self._poll, name="onnxguard-repository-poll", daemon=True
            )
            self._poller.start()

    def drain(self) -> None:
        for served in self.models.served():
            served.service.drain()

    def stop(self) -> None:
        self._stopping.set()
        self._ready.clear()
        if self._poller is not None:
            self._poller.join(timeout=5.0)
        with self._sync_lock:
            for served in self.models.served():
                self.models.remove(served.name, served.version)
                served.service.stop()

    def _poll(self) -> None:
        while not self._stopping.wait(self.config.repository_poll_s):
            try:
                with self._sync_lock:
                    if self._stopping.is_set():
                        return
                    self._sync_all()
            except OnnxGuardError as exc:  # a malformed repository.toml: keep serving
                if exc.message != self.last_error:
                    log.error("model repository not reloaded: %s", exc.message)
                self.last_error = exc.message
            except Exception as exc:  # never let the poller die silently
                log.error("model repository poll failed: %s", type(exc).__name__)

    # --- admin actions (the repository routes; run in a worker thread) ------------------------
    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every version on disk or served, with its state."""
        with self._sync_lock:
            layout = scan_layout(self.root)
            policies = read_policies(self.root)
            served = {(s.name, s.version) for s in self.models.served()}
            rows: list[dict[str, Any]] = []
            for name in sorted(set(layout) | set(self._states) | set(self.models.names())):
                state = self._states.get(name, _ModelState())
                versions = set(layout.get(name, {})) | {v for n, v in served if n == name}
                eligible = [v for v in layout.get(name, {})
                            if v not in state.held and v not in state.refused]
                wanted = set(policies.get(name, VersionPolicy()).choose(eligible))
                for version in sorted(versions):
                    row: dict[str, Any] = {"name": name, "version": str(version)}
                    if (name, version) in served:
                        row["state"] = "READY"
                    else:
                        row["state"] = "UNAVAILABLE"
                        row["reason"] = self._why_not(state, version, version in wanted)
                    rows.append(row)
            return rows

    @staticmethod
    def _why_not(state: _ModelState, version: int, wanted: bool) -> str:
        if state.unloaded:
            return "unloaded"
        if version in state.held:
            return "rolled back"
        if version in state.refused:
            return "refused: " + state.refused[version][1]
        if wanted:
            return "not loaded yet (the next poll or a load call loads it)"
        return "not chosen by the version policy"

    def load(self, name: str, actor: str | None) -> Outcome:
        """(Re)load a model: clear its holds and unloaded mark, load what its policy chooses."""
        with self._sync_lock:
            layout = scan_layout(self.root)
            if name not in layout:
                raise ModelNotFoundError(f"no model {name!r} in the repository")
            state = self._states.setdefault(name, _ModelState())
            state.unloaded, state.held = False, set()
            state.refused.clear()  # an explicit load retries what was refused
            outcome = self._sync_model(name, layout[name], read_policies(self.root), actor)
        if outcome.refused and not self.models.versions_of(name):
            v, reason = next(iter(outcome.refused.items()))
            raise RepositoryError(f"model {name} version {v} was refused: {reason}")
        return outcome

    def unload(self, name: str, actor: str | None) -> Outcome:
        """Stop serving every version of a model (polling leaves it alone until ``load``)."""
        with self._sync_lock:
            if name not in self.models.names() and name not in scan_layout(self.root):
                raise ModelNotFoundError(f"no model {name!r} in the repository")
            state = self._states.setdefault(name, _ModelState())
            state.unloaded = True
            removed = self._retire_versions(name, list(self.models.versions_of(name)), actor)
        return Outcome(unloaded=removed)

    def rollback(self, name: str, actor: str | None) -> tuple[int, int]:
        """Hold back the default version; serve the one before it.  Returns (from, to)."""
        with self._sync_lock:
            current = self.models.default_version(name)
            if current is None:
                raise RollbackError(f"model {name!r} is not being served")
            layout = scan_layout(self.root)
            state = self._states.setdefault(name, _ModelState())
            earlier = [
                v for v in layout.get(name, {})
                if v < current and v not in state.held and v not in state.refused
            ]
            if not earlier:
                raise RollbackError(
                    f"model {name} has no earlier version to roll back to from {current}"
                )
            state.held.add(current)
            outcome = self._sync_model(name, layout[name], read_policies(self.root), actor)
            now = self.models.default_version(name)
            if now is None or now >= current:  # the earlier version could not be loaded
                state.held.discard(current)
                reason = next(iter(outcome.refused.values()), "no earlier version was chosen")
                raise RollbackError(f"model {name} stays at version {current}: {reason}")
            self._record("rollback", name, now, actor, previous=current)
            return current, now

    # --- syncing -------------------------------------------------------------------------------
    def _sync_all(self) -> dict[str, Outcome]:
        layout = scan_layout(self.root)
        policies = read_policies(self.root)
        outcomes: dict[str, Outcome] = {}
        for name in sorted(set(layout) | set(self.models.names())):
            state = self._states.setdefault(name, _ModelState())
            if state.unloaded:
                continue
            outcomes[name] = self._sync_model(name, layout.get(name, {}), policies, None)
        return outcomes

    def _sync_model(
        self,
        name: str,
        on_disk: dict[int, Path],
        policies: dict[str, VersionPolicy],
        actor: str | None,
    ) -> Outcome:
        """Load what the policy wants now (each verified and warmed before it is served), then
        retire what it no longer wants; never leaves a model with nothing while its directory
        is there."""
        state = self._states.setdefault(name, _ModelState())
        policy = policies.get(name, VersionPolicy())
        prints = {v: fingerprint(path) for v, path in on_disk.items()}
        for v in list(state.refused):  # changed files get another chance
            if v not in prints or prints[v] != state.refused[v][0]:
                del state.refused[v]
        outcome = Outcome()
        while True:
            eligible = [v for v in on_disk if v not in state.held and v not in state.refused]
            wanted = policy.choose(eligible)
            pending = [v for v in wanted if state.loaded.get(v) != prints[v]]
            if not pending:
                break
            for v in pending:
                reason = self._load_version(name, v, on_disk[v], prints[v], actor)
                if reason is None:
                    outcome.loaded.append(v)
                else:
                    state.refused[v] = (prints[v], reason)
                    outcome.refused[v] = reason
        served = set(self.models.versions_of(name))
        stale = sorted(served - set(wanted))
        if on_disk and not wanted:
            stale = []  # nothing loadable is wanted: keep serving what is there
        outcome.unloaded.extend(self._retire_versions(name, stale, actor))
        return outcome

    def _load_version(
        self,
        name: str,
        version: int,
        path: Path,
        prints: tuple[tuple[str, int, int], ...],
        actor: str | None,
    ) -> str | None:
        """Verify, load and warm up one version, then serve it; the reason when refused."""
        config = replace(self.config, bundle=path, model_name=name)
        service = Service(config, self.metrics, self._loader_for(config), tokens=self._tokens)
        service.version = str(version)
        started = time.monotonic()
        reason: str | None = None
        try:
            service.load()
        except OnnxGuardError as exc:
            reason = exc.message
        except Exception as exc:  # ONNX Runtime, tokenizers: say what, not a traceback
            reason = f"{type(exc).__name__} while loading"
        if reason is not None:
            service.stop()
            log.error("model %s version %s refused: %s", name, version, reason)
            self.metrics.lifecycle.labels(name, "refused").inc()
            self._record("refused", name, version, actor, reason=reason)
            return reason
        old = self.models.put(name, version, service)
        self._states.setdefault(name, _ModelState()).loaded[version] = prints
        log.info(
            "model %s version %s serving (%s, %.1f s)",
            name, version, service.bundle_digest, time.monotonic() - started,
        )
        self.metrics.lifecycle.labels(name, "load").inc()
        self._record("load", name, version, actor, bundle_digest=service.bundle_digest)
        if old is not None:  # the same version, changed on disk: the old copy finishes its work
            threading.Thread(target=old.retire, daemon=True).start()
        return None

    def _retire_versions(self, name: str, versions: list[int], actor: str | None) -> list[int]:
        removed = []
        state = self._states.setdefault(name, _ModelState())
        for v in versions:
            service = self.models.remove(name, v)
            state.loaded.pop(v, None)
            if service is None:
                continue
            removed.append(v)
            log.info("model %s version %s unloaded", name, v)
            self.metrics.lifecycle.labels(name, "unload").inc()
            self._record("unload", name, v, actor, bundle_digest=service.bundle_digest)
            threading.Thread(
                target=service.retire, name=f"onnxguard-retire-{name}-{v}", daemon=True
            ).start()
        return removed

    def _record(self, action: str, name: str, version: int, actor: str | None,
                **fields: Any) -> None:
        """A lifecycle audit record (when there is an audit log)."""
        if self._audit is None or self._loop is None:
            return
        record = {"action": action, "model": name, "version": str(version), "key_id": actor,
                  **fields}
        try:
            future = asyncio.run_coroutine_threadsafe(
                self._audit.append(record, kind="lifecycle"), self._loop
            )
            future.result(timeout=30)
        except Exception as exc:
            log.error("lifecycle audit record not written (%s %s %s): %s",
                      action, name, version, getattr(exc, "message", type(exc).__name__))
