"""The one atomic write: temp file beside the target, fsync, rename, explicit mode.

A reader never sees half a file (the rename is atomic on one filesystem), a crash never leaves a
truncated target (the bytes are on disk before the rename), and the mode is set before any byte
is written, so a secret is never readable by others even for a moment.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

REPORT_MODE = -1
"""``mode=REPORT_MODE``: 0666 minus the umask, like a file the shell would create."""


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically; parent directories are created."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_stream(path, mode=mode) as handle:
        handle.write(payload)


@contextlib.contextmanager
def atomic_stream(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary handle on a temp file beside ``path``, renamed over it when the block ends
    without an error (removed otherwise): for outputs too large to hold in memory."""
    path = Path(path)
    if mode == REPORT_MODE:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
