"""Shared plumbing of the checkers: the scan configuration, where findings go, and blobs.

A *blob* is anything with bytes to identify: a file on disk, a member of an archive, a
decompressed stream.  Checkers read blobs through this narrow interface so the same code scans
``pytorch_model.bin`` on disk and ``archive/data.pkl`` inside it, with bounded memory.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from onnxguard.scan._rules import RULES, Severity
from onnxguard.scan.report import Finding, ScannedFile, Unscanned

_GIB = 1 << 30
MAX_FINDINGS_PER_RULE = 50
_MIB = 1 << 20


@dataclass(frozen=True)
class ScanConfig:
    """What the scanner refuses and the resource limits it enforces; the defaults are safe.

    ``fail_on`` is the severity at or above which a scan fails the build (a Severity; a string
    such as ``"high"`` from a command line is converted once, here, and refused if unknown).
    The ONNX limits bound what a graph may make ONNX Runtime allocate or compute; the file
    limits bound what the scanner itself reads into memory (larger inputs are reported as
    unscanned, never skipped).
    """

    fail_on: Severity = Severity.HIGH
    # ONNX graphs
    max_tensor_elements: int = 1 << 31
    max_total_bytes: int = 16 * _GIB
    max_loop_trip_count: int = 100_000
    max_nesting_depth: int = 8
    max_nodes: int = 1_000_000
    max_onnx_file_bytes: int = 2 * _GIB
    # checkpoints
    max_safetensors_header_bytes: int = 100_000_000
    max_pickle_bytes: int = _GIB
    max_pickle_opcodes: int = 50_000_000
    max_archive_members: int = 100_000
    max_archive_bytes: int = 64 * _GIB
    max_nested_bytes: int = 256 * _MIB
    max_archive_depth: int = 3
    max_files: int = 100_000
    # symlinks pointing into these directories are followed (e.g. a Hugging Face cache's blobs/)
    allowed_symlink_roots: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fail_on", Severity.parse(self.fail_on))  # ValueError if unknown
        for name in (
            "max_tensor_elements",
            "max_total_bytes",
            "max_loop_trip_count",
            "max_nesting_depth",
            "max_nodes",
            "max_onnx_file_bytes",
            "max_safetensors_header_bytes",
            "max_pickle_bytes",
            "max_pickle_opcodes",
            "max_archive_members",
            "max_archive_bytes",
            "max_nested_bytes",
            "max_archive_depth",
            "max_files",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ScanConfig.{name} must be a non-negative integer, not {value!r}")


class Unscannable(Exception):
    """Raised by a checker that cannot finish: the blob is reported as unscanned."""


class Malformed(Unscannable):
    """The blob claims a container format (by its magic) but does not parse as one.

    Reported as a high finding (ARC008), not only as unscanned: more lenient readers may still
    extract something from it, which is how broken archives smuggled pickles past scanners.
    """


class Blob:
    """Bytes to scan with a display name; subclasses decide where the bytes come from."""

    def __init__(self, size: int) -> None:
        self.size = size

    def head(self, n: int) -> bytes:
        with self.open() as fh:
            return fh.read(n)

    def tail(self, n: int) -> bytes:
        with self.open() as fh:
            fh.seek(max(0, self.size - n))
            return fh.read(n)

    def open(self) -> BinaryIO:
        """A seekable stream of the whole content (may raise Unscannable when too large)."""
        raise NotImplementedError


class FileBlob(Blob):
    """A regular file on disk, read through its own file handle (never loaded whole)."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(size)
        self.path = path

    def open(self) -> BinaryIO:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path, flags)
        except OSError as exc:
            raise Unscannable(f"cannot open: {exc.strerror or exc}") from exc
        return os.fdopen(fd, "rb")


class BytesBlob(Blob):
    """Bytes already in memory (a small archive member, a decompressed stream)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(len(data))
        self.data = data

    def head(self, n: int) -> bytes:
        return self.data[:n]

    def tail(self, n: int) -> bytes:
        return self.data[-n:] if n else b""

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)


class LazyBlob(Blob):
    """Content produced on demand (decompression); ``head`` reads only what it needs."""

    def __init__(self, size: int, head: Callable[[int], bytes], full: Callable[[], bytes]) -> None:
        super().__init__(size)
        self._head = head
        self._full = full
        self._data: bytes | None = None

    def head(self, n: int) -> bytes:
        if self._data is not None:
            return self._data[:n]
        return self._head(n)

    def open(self) -> BinaryIO:
        if self._data is None:
            self._data = self._full()
        return io.BytesIO(self._data)


@dataclass
class Sink:
    """Collects what the checkers report for one scan."""

    config: ScanConfig
    findings: list[Finding] = field(default_factory=list)
    unscanned: list[Unscanned] = field(default_factory=list)
    files: list[ScannedFile] = field(default_factory=list)
    _counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(
        self,
        rule_id: str,
        file: str,
        location: str,
        message: str,
        *,
        severity: Severity | None = None,
        hint: str | None = None,
    ) -> None:
        rule = RULES[rule_id]
        key = (file, rule_id)
        self._counts[key] = self._counts.get(key, 0) + 1
        if self._counts[key] > MAX_FINDINGS_PER_RULE:
            return  # a crafted file must not flood the report; finish() says how many more
        self.findings.append(
            Finding(
                rule_id=rule_id,
                severity=severity or rule.severity,
                file=file,
                location=location,
                message=message,
                hint=hint or rule.help,
            )
        )

    def skip(self, file: str, reason: str) -> None:
        self.unscanned.append(Unscanned(file=file, reason=reason))

    def finish(self) -> None:
        """Say, on the first listed finding of each capped (file, rule), how many were left out.

        The count of findings stays the count of problems listed: no extra "N more" finding.
        """
        for (file, rule_id), count in self._counts.items():
            if count <= MAX_FINDINGS_PER_RULE:
                continue
            at = next(
                i for i, f in enumerate(self.findings) if f.file == file and f.rule_id == rule_id
            )
            first = self.findings[at]
            self.findings[at] = replace(
                first,
                message=f"{first.message} (and {count - MAX_FINDINGS_PER_RULE} more finding(s) "
                "of this rule in this file not listed)",
            )


def join_location(*parts: str) -> str:
    """``"zip member a/data.pkl"`` + ``"byte 12"`` -> ``"zip member a/data.pkl, byte 12"``."""
    return ", ".join(p for p in parts if p)
