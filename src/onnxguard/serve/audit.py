"""Hash-chained JSON-lines audit log: one record per request, tamper-evident, durable.

Each line is one JSON object in canonical form (sorted keys, no spaces) with ``seq`` (counts up by
one across files), ``prev`` (the ``hash`` of the record before it) and ``hash`` (SHA-256 of the
record without its ``hash``).  Editing a record breaks its hash; deleting or reordering records
breaks the chain of ``prev``; both are found by :func:`verify_chain` (``onnxguard audit verify``).

Durability: records go to a writer thread that writes every waiting record at once, flushes and
fsyncs (group commit), and only then lets the waiting responses go out.  A failed write turns
the log off for good and every later request is refused (fail closed: nothing is served
unaudited).

Rotation: when the live file would pass ``max_bytes`` it ends with a ``rotate`` record, is renamed
to ``NAME.<UTC time>`` and a new file starts with a ``file`` record that continues the chain
(and names the file before it).  With ``keep`` > 0 the oldest rotated files are deleted and the
deletion is recorded in the next ``file`` record, so a verifier can tell pruning from tampering.

Limits (documented in SERVING.md): whoever can rewrite the whole file can recompute every hash,
and records cut from the very end leave no trace in the file itself.  ``verify`` prints the head
hash and whether the log was closed by a clean shutdown; ship the head hash elsewhere to anchor it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from onnxguard.errors import AuditChainError, AuditLogError

__all__ = ["AuditChainError", "AuditLog", "AuditLogError", "ChainReport", "verify_chain"]

log = logging.getLogger("onnxguard.serve")

GENESIS = "0" * 64
FORMAT = "onnxguard-audit/1"
_TAIL_BYTES = 1 << 20
_STOP = object()


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the canonical form of ``record`` without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def hash_inputs(texts: Sequence[str]) -> str:
    """A digest of the request's inputs (length-prefixed UTF-8), recorded instead of the text."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- writer --------------------------------------------------------------------------------------
@dataclass
class _Pending:
    records: list[dict[str, Any]]
    done: Callable[[BaseException | None], None]


class AuditLog:
    """The live audit log of one server process."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 100 * 1024 * 1024,
        keep: int = 0,
        fsync: bool = True,
        server_info: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.fsync = fsync
        self.server_info = server_info or {}
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._write: Callable[[int, memoryview], int] = os.write
        """The raw write call (a seam for fault-injection tests; unbuffered on purpose: bytes
        that failed to reach the disk must not sit in a buffer that a later flush writes)."""
        self._size = 0
        self._seq = -1
        self._prev = GENESIS
        self._failed: BaseException | None = None
        self._groups: dict[
            asyncio.AbstractEventLoop, list[tuple[dict[str, Any], asyncio.Future[None]]]
        ] = {}
        self.records_written = 0

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._thread is not None

    def open(self) -> None:
        """Continue the chain of an existing log (whose tail must verify), or start one."""
        if self._thread is not None:
            return
        start_file = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > 0:
                self._seq, self._prev = _read_tail(self.path)
                start_file = False
            elif rotated := rotated_files(self.path):
                # The live file is missing but rotated ones exist: continue from the newest.
                self._seq, self._prev = _read_tail(rotated[-1])
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise AuditLogError(
                f"cannot open audit log {self.path}: {exc.strerror or exc}",
                hint="check that its directory exists and is writable by the server's user",
            ) from exc
        lines = []
        if start_file:
            previous = rotated_files(self.path)
            header: dict[str, Any] = {"type": "file", "format": FORMAT, "pruned": []}
            header["previous_file"] = previous[-1].name if previous else None
            lines.append(self._seal(header))
        lines.append(self._seal({"type": "start", "server": self.server_info}))
        try:
            self._write_now(lines)
        except OSError as exc:
            self._cut_back()
            os.close(self._fd)
            self._fd = None
            raise AuditLogError(
                f"cannot write audit log {self.path}: {exc.strerror or exc}",
                hint="free disk space or point --audit-log at a writable disk",
            ) from exc
        if start_file:
            _fsync_dir(self.path.parent)
        self._thread = threading.Thread(target=self._run, name="onnxguard-audit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Record a clean stop, write everything still queued, close the file."""
        if self._thread is None:
            return
        if self._failed is None:
            self._queue.put(_Pending([{"type": "stop"}], lambda exc: None))
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def healthy(self) -> bool:
        """Open and never failed: readiness follows this (a failed log refuses every request)."""
        return self._failed is None and self._thread is not None

    # --- appending -----------------------------------------------------------------------------
    async def append(self, fields: dict[str, Any], kind: str = "request") -> None:
        """Queue a record (``type`` = ``kind``) and wait until it is on disk (raises
        AuditLogError).

        Records appended in the same event-loop turn travel to the writer thread together
        (one hand-off, one write, one fsync for the group).
        """
        self._check_writable()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        group = self._groups.setdefault(loop, [])
        group.append(({"type": kind, **fields}, future))
        if len(group) == 1:
            loop.call_soon(self._hand_over, loop)
        await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        group = self._groups.pop(loop, [])
        if not group:
            return
        futures = [future for _, future in group]

        def done(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, futures, exc)

        self._queue.put(_Pending([record for record, _ in group], done))

    def append_sync(self, fields: dict[str, Any]) -> None:
        """Blocking variant of :meth:`append` (for threads and tests)."""
        self._check_writable()
        event = threading.Event()
        errors: list[BaseException] = []

        def done(exc: BaseException | None) -> None:
            if exc is not None:
                errors.append(exc)
            event.set()

        self._queue.put(_Pending([{"type": "request", **fields}], done))
        event.wait()
        if errors:
            raise errors[0]

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise AuditLogError(
                f"audit log {self.path} failed earlier: {self._failed}",
                hint="fix the disk problem and restart the server",
            )
        if self._thread is None:
            raise AuditLogError("audit log is not open")

    # --- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            batch: list[_Pending] = []
            if first is _STOP:
                stop = True
            else:
                batch.append(first)  # type: ignore[arg-type]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)  # type: ignore[arg-type]
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        error: BaseException | None = None
        if self._failed is not None:
            error = AuditLogError(f"audit log failed earlier: {self._failed}")
        else:
            try:
                lines: list[bytes] = []
                pending_size = 0
                for record in (r for item in batch for r in item.records):
                    # Rotate once the live file has reached max_bytes (it may pass it by one
                    # record); a clean stop always goes into the file it closes.
                    if self._size + pending_size >= self.max_bytes and record["type"] != "stop":
                        self._write_now(lines)
                        lines, pending_size = [], 0
                        self._rotate()
                    line = self._seal(record)
                    lines.append(line)
                    pending_size += len(line)
                self._write_now(lines)
            except OSError as exc:
                self._failed = exc
                self._cut_back()
                log.error("audit log write failed, refusing further requests: %s", exc)
                error = AuditLogError(
                    f"audit log write failed: {exc}",
                    hint="fix the disk problem and restart the server",
                )
        for item in batch:
            # RuntimeError: the waiting event loop is closed (the server shut down).
            with contextlib.suppress(RuntimeError):
                item.done(error)

    def _seal(self, fields: dict[str, Any]) -> bytes:
        record: dict[str, Any] = {"seq": self._seq + 1, "time": utc_now(), "prev": self._prev}
        record.update(fields)
        record["hash"] = record_hash(record)
        self._seq, self._prev = record["seq"], record["hash"]
        return (canonical(record) + "\n").encode("utf-8")

    def _write_now(self, lines: list[bytes]) -> None:
        if not lines:
            return
        assert self._fd is not None
        data = memoryview(b"".join(lines))
        written = 0
        while written < len(data):
            written += self._write(self._fd, data[written:])
        if self.fsync:
            os.fsync(self._fd)
        self._size += len(data)
        self.records_written += len(lines)

    def _cut_back(self) -> None:
        """After a failed write: drop its partial bytes, so the file ends at the last record that
        reached the disk whole (no phantom records for requests that were refused)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc:
            log.error("audit log could not be cut back to its last whole record: %s", exc)

    def _rotate(self) -> None:
        self._write_now([self._seal({"type": "rotate"})])
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.path.with_name(f"{self.path.name}.{stamp}")
        counter = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.{stamp}-{counter}")
            counter += 1
        os.replace(self.path, target)
        pruned: list[str] = []
        if self.keep > 0:
            rotated = rotated_files(self.path)
            for old in rotated[: max(0, len(rotated) - self.keep)]:
                old.unlink()
                pruned.append(old.name)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._size = 0
        self._write_now(
            [
                self._seal(
                    {
                        "type": "file",
                        "format": FORMAT,
                        "previous_file": target.name,
                        "pruned": pruned,
                    }
                )
            ]
        )
        _fsync_dir(self.path.parent)


def _settle(futures: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_tail(path: Path) -> tuple[int, str]:
    """(seq, hash) of the last record of ``path``; its line must be whole and verify."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - _TAIL_BYTES))
        tail = handle.read()
    hint = (
        f"run `onnxguard audit verify {path}` to see what is wrong, then move the file "
        "aside to start a new chain"
    )
    if not tail.endswith(b"\n"):
        raise AuditLogError(f"audit log {path} ends with a partial record", hint=hint)
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        record = json.loads(last)
        ok = (
            isinstance(record, dict)
            and record.get("hash") == record_hash(record)
            and isinstance(record.get("seq"), int)
        )
    except ValueError:
        ok = False
    if not ok:
        raise AuditLogError(f"the last record of audit log {path} does not verify", hint=hint)
    return int(record["seq"]), str(record["hash"])


# --- verification ------------------------------------------------------------------------------
def rotated_files(path: Path) -> list[Path]:
    """Rotated files of the live log ``path``, oldest first (by their first record's seq)."""
    pattern = re.compile(re.escape(path.name) + r"\.\d{8}T\d{6,12}Z(-\d+)?")
    found = [p for p in path.parent.glob(path.name + ".*") if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: (_first_seq(p), p.name))


def _first_seq(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            first = json.loads(handle.readline())
        return int(first["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found; ``ok`` only when no problem was found."""

    files: tuple[str, ...]
    records: int
    requests: int
    first_seq: int | None
    last_seq: int | None
    head: str | None
    """Hash of the last record: anchor it elsewhere to detect records cut from the end."""
    closed: bool
    """The last record is a clean ``stop`` (else: the server is running, or crashed)."""
    complete: bool
    """The chain starts at the genesis record (no earlier file was pruned)."""
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": list(self.files),
            "records": self.records,
            "requests": self.requests,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": self.head,
            "closed": self.closed,
            "complete": self.complete,
            "problems": list(self.problems),
        }


_MAX_PROBLEMS = 50


def verify_chain(path: Path, *, include_rotated: bool = True) -> ChainReport:
    """Check every record's hash and the chain across the live file and its rotated files."""
    path = Path(path)
    if path.is_dir():
        raise AuditChainError(
            f"{path} is a directory, not an audit log",
            hint="pass the file given to `serve --audit-log`",
        )
    files = (rotated_files(path) if include_rotated else []) + ([path] if path.exists() else [])
    if not files:
        raise AuditChainError(
            f"audit log {path} does not exist", hint="pass the path given to `serve --audit-log`"
        )
    walker = _ChainWalker(_all_pruned(files))
    for index, file in enumerate(files):
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise AuditChainError(
                f"cannot read audit log {file}: {exc.strerror or exc}",
                hint="check the path and its permissions",
            ) from exc
        walker.walk_file(index, file.name, data)
    return walker.report(files)


class _ChainWalker:
    """The state of one pass over the chain: expected ``prev`` and ``seq``, counts, problems."""

    def __init__(self, pruned: set[str]) -> None:
        self.pruned = pruned
        self.problems: list[str] = []
        self.prev: str | None = None
        self.expected_seq: int | None = None
        self.first_seq: int | None = None
        self.records = 0
        self.requests = 0
        self.last_type: Any = None
        self.complete = False

    def problem(self, text: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(text)

    def walk_file(self, index: int, name: str, data: bytes) -> None:
        if data and not data.endswith(b"\n"):
            self.problem(f"{name}: the last line is a partial record (write cut short)")
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        if not lines:
            self.problem(f"{name}: empty file")
            return
        for number, raw in enumerate(lines, 1):
            self.walk_line(index, f"{name} line {number}", number, raw)

    def walk_line(self, index: int, where: str, number: int, raw: bytes) -> None:
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            self.problem(f"{where}: not a JSON record")
            self.prev = None
            return
        self.records += 1
        seq, rec_prev, rec_hash = record.get("seq"), record.get("prev"), record.get("hash")
        if rec_hash != record_hash(record):
            self.problem(f"{where} (seq {seq}): hash mismatch: the record was edited")
        elif raw.decode("utf-8", "replace") != canonical(record):
            self.problem(f"{where} (seq {seq}): not in canonical form: the line was edited")
        if number == 1:
            self.first_record(index, where, record)
        if self.prev is not None and rec_prev != self.prev:
            self.problem(
                f"{where} (seq {seq}): chain broken: the record before it was "
                "deleted, replaced or reordered"
            )
        elif self.expected_seq is not None and seq != self.expected_seq:
            self.problem(
                f"{where}: sequence number {seq}, expected {self.expected_seq} "
                "(records deleted or reordered)"
            )
        self.prev = rec_hash if isinstance(rec_hash, str) else None
        self.expected_seq = seq + 1 if isinstance(seq, int) else None
        if record.get("type") == "request":
            self.requests += 1
        self.last_type = record.get("type")

    def first_record(self, index: int, where: str, record: dict[str, Any]) -> None:
        """A file's first record is a ``file`` record; the first file's starts the chain or
        continues one that the server pruned."""
        if record.get("type") != "file":
            self.problem(
                f"{where}: a log file must start with a 'file' record "
                "(the first lines were deleted?)"
            )
        if index != 0:
            return
        seq = record.get("seq")
        self.first_seq = seq if isinstance(seq, int) else None
        if record.get("prev") == GENESIS and seq == 0:
            self.complete = True
            return
        before = record.get("previous_file")
        if before is None or before not in self.pruned:
            self.problem(
                f"{where}: the chain continues a file that is missing "
                f"({before or 'unnamed'}) and was not pruned by the server"
            )
        self.prev, self.expected_seq = record.get("prev"), seq

    def report(self, files: Sequence[Path]) -> ChainReport:
        return ChainReport(
            files=tuple(str(f) for f in files),
            records=self.records,
            requests=self.requests,
            first_seq=self.first_seq,
            last_seq=None if self.expected_seq is None else self.expected_seq - 1,
            head=self.prev,
            closed=self.last_type == "stop",
            complete=self.complete,
            problems=tuple(self.problems),
        )


def _all_pruned(files: Sequence[Path]) -> set[str]:
    """Names recorded as pruned in any file's ``file`` record."""
    names: set[str] = set()
    for file in files:
        try:
            with file.open("rb") as handle:
                first = json.loads(handle.readline())
            names.update(str(n) for n in first.get("pruned") or [])
        except (OSError, ValueError, AttributeError):
            continue
    return names
