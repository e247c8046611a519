"""API keys: a file of ``KEY_ID:SHA256_HEX`` lines, bearer tokens, scopes.

The file holds only SHA-256 digests of the keys (keys are 256-bit random, so a plain digest is
enough: there is nothing to brute-force).  A line may end with ``:scope1,scope2``; without it the
key has the ``infer`` scope, so files written before scopes existed keep working.  Scopes:
``infer`` (inference and model metadata), ``metrics`` (``/metrics``) and ``admin`` (the model
repository: index, load, unload, rollback).  A fourth field ``:model1,model2`` restricts the key
to those models of a repository (absent: every model).

A presented key is hashed once and compared with every digest in constant time
(``hmac.compare_digest``, no early exit), so timing tells nothing about which keys exist.  The
file is re-read when it changes (checked at most every two seconds): revoking a key takes effect
without a restart.  Reloading fails closed: a keys file that was emptied, left with only
comments, deleted, made unreadable or writable by others, or that no longer parses revokes
every key (each request is a 401) until a good file is back; the error is logged.  Starting
with such a file is refused (exit 9) with the reason and the fix.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from onnxguard.errors import ServeError, UsageError

log = logging.getLogger("onnxguard.serve")

SCOPE_INFER = "infer"
SCOPE_METRICS = "metrics"
SCOPE_ADMIN = "admin"
SCOPES = frozenset({SCOPE_INFER, SCOPE_METRICS, SCOPE_ADMIN})
DEFAULT_SCOPES = frozenset({SCOPE_INFER})
KEY_PREFIX = "ogk_"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A model's name in the paths, the repository and a key's model list."""
_HEX = re.compile(r"[0-9a-fA-F]{64}")
_TOKEN = re.compile(r"[\x21-\x7e]{16,512}")
_RELOAD_INTERVAL_S = 2.0


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    digest: bytes
    scopes: frozenset[str]
    models: frozenset[str] | None = None
    """The models this key may use; None: every model."""


@dataclass(frozen=True)
class Principal:
    """Who made a request: the key id (never the key) and what it may do."""

    key_id: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def generate_secret() -> str:
    """A new API key: ``ogk_`` + 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key_line(
    key_id: str,
    secret: str,
    scopes: Iterable[str] = DEFAULT_SCOPES,
    models: Iterable[str] | None = None,
) -> str:
    """The keys-file line for ``secret``; the scope suffix only when it differs from the default
    (or models follow), the model list only when the key is restricted."""
    check_key_id(key_id)
    wanted = check_scopes(scopes)
    allowed = check_models(models) if models is not None else None
    line = f"{key_id}:{digest_of(secret)}"
    if wanted != DEFAULT_SCOPES or allowed is not None:
        line += ":" + ",".join(sorted(wanted))
    if allowed is not None:
        line += ":" + ",".join(sorted(allowed))
    return line


def check_key_id(key_id: str) -> str:
    if not _ID.fullmatch(key_id):
        raise UsageError(
            f"key id {key_id!r} is not allowed",
            hint="use 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit",
        )
    return key_id


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(s.strip() for s in scopes if s.strip())
    unknown = wanted - SCOPES
    if unknown or not wanted:
        raise UsageError(
            f"unknown or empty scopes: {', '.join(sorted(unknown)) or '(none)'}",
            hint=f"choose from {', '.join(sorted(SCOPES))}",
        )
    return wanted


def check_models(models: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(m.strip() for m in models if m.strip())
    bad = sorted(m for m in wanted if not MODEL_NAME.fullmatch(m))
    if bad or not wanted:
        raise UsageError(
            f"model names not allowed: {', '.join(repr(m) for m in bad) or '(none)'}",
            hint="name models with letters, digits, '.', '_' and '-' (up to 128), "
            "comma-separated",
        )
    return wanted


def parse_keys(text: str, source: str = "API keys file") -> tuple[ApiKey, ...]:
    """Parse keys-file text; any malformed line refuses the whole file (fail closed)."""
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        where = f"{source} line {number}"
        if (
            len(parts) not in (2, 3, 4)
            or not _ID.fullmatch(parts[0].strip())
            or not _HEX.fullmatch(parts[1].strip())
        ):
            raise ServeError(
                f"{where} is not KEY_ID:SHA256_HEX[:SCOPES[:MODELS]]",
                hint="make lines with `onnxguard apikey new --id NAME`; the key itself never "
                "goes into the file, only its sha256",
            )
        key_id = parts[0].strip()
        if key_id in seen:
            raise ServeError(
                f"{where}: key id {key_id!r} appears twice",
                hint="key ids must be unique (they name the client in the audit log)",
            )
        seen.add(key_id)
        try:
            scopes = check_scopes(parts[2].split(",")) if len(parts) >= 3 else DEFAULT_SCOPES
            models = check_models(parts[3].split(",")) if len(parts) == 4 else None
        except UsageError as exc:
            raise ServeError(f"{where}: {exc.message}", hint=exc.hint) from None
        keys.append(ApiKey(key_id, bytes.fromhex(parts[1].strip()), scopes, models))
    return tuple(keys)


def read_keys_file(path: Path) -> tuple[ApiKey, ...]:
    """Read and check a keys file: it must exist, and must not be writable by others."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(
            f"cannot read API keys file {path}: {exc}",
            hint=f"create it with `onnxguard apikey new --id NAME --keys-file {path}`",
        ) from exc
    if os.name == "posix" and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ServeError(
            f"API keys file {path} is writable by group or others",
            hint=f"anyone who can write it can add a key: chmod 600 {path}",
        )
    keys = parse_keys(text, str(path))
    if not keys:
        raise ServeError(
            f"API keys file {path} holds no keys",
            hint="add a line made by `onnxguard apikey new --id NAME`",
        )
    return keys


def append_key_line(path: Path, line: str) -> None:
    """Add a key line to a keys file (created with mode 0600); the key id must be new."""
    key_id = line.split(":", 1)[0]
    existing = parse_keys(path.read_text(encoding="utf-8"), str(path)) if path.exists() else ()
    if any(k.key_id == key_id for k in existing):
        raise UsageError(
            f"key id {key_id!r} is already in {path}",
            hint="choose another --id, or remove the old line to rotate the key",
        )
    needs_newline = (
        path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(("\n" if needs_newline else "") + line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class KeyStore:
    """The keys in force; thread-safe; re-reads its file when the file changes."""

    def __init__(self, keys: Sequence[ApiKey], path: Path | None = None) -> None:
        self._keys = tuple(keys)
        self._path = path
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stamp = self._file_stamp()

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        return cls(read_keys_file(path), path)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def key_ids(self) -> list[str]:
        return [k.key_id for k in self._keys]

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal for an ``Authorization: Bearer KEY`` header, or None."""
        token = bearer_token(authorization)
        if token is None:
            return None
        self._maybe_reload()
        presented = hashlib.sha256(token.encode("ascii")).digest()
        found: ApiKey | None = None
        for key in self._keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(presented, key.digest):
                found = key
        if found is None:
            return None
        return Principal(found.key_id, found.scopes, found.models)

    def _file_stamp(self) -> tuple[int, int, int, int] | None:
        if self._path is None:
            return None
        try:
            info = self._path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino, info.st_mode)

    def _maybe_reload(self) -> None:
        if self._path is None or time.monotonic() - self._checked < _RELOAD_INTERVAL_S:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._checked < _RELOAD_INTERVAL_S:
                return
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            try:
                keys = read_keys_file(self._path)
            except ServeError as exc:
                log.error(
                    "API keys file changed and was refused: every key is revoked until it is "
                    "fixed: %s",
                    exc.message,
                )
                self._keys, self._stamp = (), stamp
                return
            self._keys, self._stamp = keys, stamp
            log.info("API keys file reloaded: %d key(s)", len(keys))


def bearer_token(authorization: str | None) -> str | None:
    """The token of a well-formed ``Bearer`` header (printable ASCII, 16-512 chars), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        return None
    return token
