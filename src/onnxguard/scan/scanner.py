"""Walk a model directory (or one file), identify every file by content and run its checks.

Fail closed: every file gets a verdict — scanned (with or without findings) or unscanned with a
reason; symbolic links are reported and never followed out of the directory; special files are
never opened; a malicious file produces findings, never an exception.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from onnxguard.errors import ScanFindingsError, ScanIncompleteError, ScanTargetError
from onnxguard.scan import archives, config_check, gguf_check, safetensors_check, tf_check
from onnxguard.scan._context import (
    Blob,
    BytesBlob,
    FileBlob,
    Malformed,
    ScanConfig,
    Sink,
    Unscannable,
    join_location,
)
from onnxguard.scan._filetype import Kind, sniff
from onnxguard.scan._rules import Severity
from onnxguard.scan.pickles import parse_pickle, scan_pickle_stream
from onnxguard.scan.report import ScannedFile, ScanReport

_EOCD = b"PK\x05\x06"
_TAIL = 65536 + 22
_NOT_SUPPORTED = {
    Kind.RAR: "RAR archive: content cannot be checked; unpack it and scan the files",
    Kind.ZSTD: "zstd stream: content cannot be checked; decompress it and scan the result",
    Kind.ORT_FORMAT: "ONNX Runtime (.ort) flatbuffer model: not parsed; scan the .onnx it was "
    "made from",
}
_DEEP_SNIFF_BYTES = 1 << 20  # archive members up to this size are read whole to identify them
_ARCHIVE_KINDS = frozenset({Kind.ZIP, Kind.TAR, Kind.GZIP, Kind.BZIP2, Kind.XZ, Kind.SEVEN_ZIP})


def scan_path(path: Path | str, config: ScanConfig | None = None) -> ScanReport:
    """Scan a model directory (recursively) or a single file.

    Never raises for what a file contains — that is what findings are for; raises
    :class:`ScanTargetError` when ``path`` does not exist or is neither file nor directory.
    """
    config = config or ScanConfig()
    target = Path(path)
    try:
        st = target.stat()  # the argument itself may be a link the user chose to give
    except OSError as exc:
        raise ScanTargetError(
            f"cannot scan {str(target)!r}: {exc.strerror or 'does not exist'}",
            hint="Pass an existing model directory or file.",
            path=str(target),
        ) from exc
    if stat.S_ISDIR(st.st_mode):
        root = target.resolve()
        entries = _walk(root, config)
    elif stat.S_ISREG(st.st_mode):
        resolved = target.resolve()
        root = resolved.parent
        entries = [(resolved.name, resolved)]
    else:
        raise ScanTargetError(
            f"cannot scan {str(target)!r}: not a regular file or directory",
            hint="Pass a model directory or a model file.",
            path=str(target),
        )
    sink = Sink(config)
    _Scanner(root, sink).run(entries)
    sink.finish()
    return ScanReport(
        root=str(root),
        findings=tuple(sink.findings),
        unscanned=tuple(sink.unscanned),
        files=tuple(sorted(sink.files, key=lambda f: f.file)),
    )


def enforce(report: ScanReport, fail_on: Severity = Severity.HIGH) -> None:
    """Raise when the report fails: findings at or above ``fail_on``, or anything unscanned."""
    level = Severity.parse(fail_on)  # also accepts a str at run time, for untyped callers
    bad = report.at_or_above(level)
    if bad:
        top = "; ".join(
            f"{f.severity.value} {f.rule_id} {f.file}"
            + (f" [{f.location}]" if f.location else "")
            + f": {f.message}"
            for f in bad[:3]
        )
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        unscanned = (
            f"; {len(report.unscanned)} file(s) could not be scanned" if (report.unscanned) else ""
        )
        raise ScanFindingsError(
            f"scan of {report.root} found {len(bad)} problem(s) at or above {level.value}: "
            f"{top}{more}{unscanned}",
            hint=f"{bad[0].hint} Run `onnxguard scan {report.root}` for the full report.",
            findings=[f.to_dict() for f in bad[:20]],
            summary=report.summary(),
        )
    if report.unscanned:
        listed = "; ".join(f"{u.file}: {u.reason}" for u in report.unscanned[:3])
        more = f" (+{len(report.unscanned) - 3} more)" if len(report.unscanned) > 3 else ""
        raise ScanIncompleteError(
            f"scan of {report.root} could not check {len(report.unscanned)} file(s): "
            f"{listed}{more}",
            hint="Remove files the model does not need, or convert them to a format onnxguard "
            "can check (safetensors, ONNX); unscanned files are never trusted.",
            unscanned=[u.to_dict() for u in report.unscanned[:20]],
            summary=report.summary(),
        )


def _walk(root: Path, config: ScanConfig) -> list[tuple[str, Path]]:
    """Every non-directory entry under ``root`` (links included, never followed)."""
    entries: list[tuple[str, Path]] = []
    for current, dirs, files in os.walk(root, followlinks=False):
        base = Path(current)
        dirs.sort()
        for name in [*sorted(files), *[d for d in dirs if (base / d).is_symlink()]]:
            full = base / name
            entries.append((full.relative_to(root).as_posix(), full))
            if len(entries) > config.max_files:
                raise ScanTargetError(
                    f"{root} holds more than {config.max_files:,} files",
                    hint="Scan the model directory itself, not a parent of it.",
                )
    return entries


class _Scanner:
    """One scan: directory entries in, findings out."""

    def __init__(self, root: Path, sink: Sink) -> None:
        self.root = root
        self.sink = sink
        self.config = sink.config
        self._current = ""
        self.saved_models: set[str] = set()  # directories of parsed SavedModels

    def run(self, entries: list[tuple[str, Path]]) -> None:
        regular: list[tuple[str, Path, os.stat_result]] = []
        for rel, full in entries:
            try:
                st = full.lstat()
            except OSError as exc:
                self.sink.skip(rel, f"cannot stat: {exc.strerror}")
                continue
            if stat.S_ISLNK(st.st_mode):
                target = self._symlink(rel, full)
                if target is not None:
                    regular.append((rel, target, target.stat()))
            elif stat.S_ISREG(st.st_mode):
                regular.append((rel, full, st))
            elif not stat.S_ISDIR(st.st_mode):
                self.sink.add(
                    "FILE004",
                    rel,
                    "",
                    f"{_type_name(st.st_mode)} in the model directory (not opened)",
                )
        # ONNX first: the files they reference as external data are raw tensor bytes.
        kinds = {}
        for rel, full, st in regular:
            blob = FileBlob(full, st.st_size)
            try:
                kinds[rel] = sniff(blob, full.name)
            except (OSError, Unscannable) as exc:
                self.sink.skip(rel, f"cannot read: {exc}")
        # Models named *.onnx first: raw weights can look like a protobuf by chance.
        candidates = [e for e in regular if kinds.get(e[0]) is Kind.ONNX]
        candidates.sort(
            key=lambda e: (
                not e[0].lower().endswith(".onnx"),
                not tf_check.is_saved_model_file(e[0]),
            )
        )
        external: set[str] = set()
        for rel, full, st in candidates:
            if os.path.realpath(full) not in external:
                external |= {os.path.realpath(p) for p in self._onnx(rel, full, st.st_size)}
        for rel, full, st in regular:
            kind = kinds.get(rel)
            if kind is None:
                continue
            blob = FileBlob(full, st.st_size)
            data_kind = tf_check.saved_model_data_kind(rel, self.saved_models)
            if os.path.realpath(full) in external and not self._loadable(kind, blob):
                self.sink.files.append(ScannedFile(rel, "onnx-external-data", st.st_size))
            elif kind is Kind.ONNX:
                continue  # checked (or reported unscannable) with the models above
            elif data_kind is not None and not self._loadable(kind, blob):
                self._keras_metadata(rel, full, st.st_size)
                self.sink.files.append(ScannedFile(rel, data_kind, st.st_size))
            else:
                self.scan_file(rel, blob, kind)

    def _symlink(self, rel: str, full: Path) -> Path | None:
        """Report a link; return the target when it may be scanned under the link's name."""
        link = os.readlink(full)
        try:
            target = full.resolve(strict=True)
        except (OSError, RuntimeError):
            self.sink.add("FILE003", rel, "", f"link to {link!r}, which does not exist")
            return None
        if _inside(target, self.root):
            self.sink.add("FILE002", rel, "", f"link to {link!r} (scanned as its target)")
            return None
        for allowed in self.config.allowed_symlink_roots:
            if _inside(target, Path(allowed).resolve()) and target.is_file():
                return target
        self.sink.add(
            "FILE001", rel, "", f"link to {str(target)!r}, outside {str(self.root)!r}; not followed"
        )
        return None

    def _onnx(self, rel: str, full: Path, size: int) -> set[Path]:
        from onnxguard.scan.onnx_check import scan_onnx

        try:
            external = scan_onnx(full, size, self.sink, rel, full.parent)
        except Unscannable as exc:
            data_kind = tf_check.saved_model_data_kind(rel, self.saved_models)
            if tf_check.is_saved_model_file(rel):
                self._saved_model(rel, full, size)
            elif data_kind is not None:
                self._keras_metadata(rel, full, size)
                self.sink.files.append(ScannedFile(rel, data_kind, size))
            else:
                self.sink.skip(rel, str(exc))
            return set()
        except Exception as exc:  # a scanner bug must fail closed, never pass the file
            self.sink.skip(rel, f"scanner error ({type(exc).__name__}: {exc}); not trusted")
            return set()
        self.sink.files.append(ScannedFile(rel, Kind.ONNX.value, size))
        return external

    def _saved_model(self, rel: str, full: Path, size: int) -> None:
        """A ``saved_model.pb`` that is not ONNX: a TensorFlow SavedModel, checked op by op."""
        try:
            tf_check.scan_saved_model(full, size, self.sink, rel)
        except Unscannable as exc:
            self.sink.skip(rel, str(exc))
            return
        self.saved_models.add(rel.rpartition("/")[0])
        self.sink.files.append(ScannedFile(rel, "tensorflow-saved-model", size))

    def _keras_metadata(self, rel: str, full: Path, size: int) -> None:
        """Keras 2 SavedModels keep their layer configs in ``keras_metadata.pb``."""
        if rel.rsplit("/", 1)[-1] != "keras_metadata.pb":
            return
        at = archives.find_keras_lambda(FileBlob(full, size))
        if at is not None:
            self.sink.add(
                "FILE008",
                rel,
                f"byte {at}",
                "Keras metadata declares a Lambda layer (marshalled Python code)",
            )

    def _loadable(self, kind: Kind, blob: Blob) -> bool:
        """Is an ONNX data file also something a loader would open as a model format?"""
        if kind in (Kind.UNKNOWN, Kind.TEXT, Kind.EMPTY, Kind.ONNX):
            return False
        if kind is Kind.PICKLE:
            from onnxguard.scan.pickles import _Problems, _TooLong

            with blob.open() as fh:
                try:
                    result = parse_pickle(fh, blob.size, _Problems(), max_opcodes=100_000)
                except _TooLong:
                    return True
            return result.complete or bool(result.globals)
        return True

    def scan_file(self, rel: str, blob: Blob, kind: Kind) -> None:
        self._current = rel
        try:
            label = self.dispatch(blob, rel, rel, "", 0, kind=kind)
        except Malformed as exc:
            self.sink.add("ARC008", rel, "", str(exc))
            self.sink.skip(rel, str(exc))
            return
        except Unscannable as exc:
            self.sink.skip(rel, str(exc))
            return
        except OSError as exc:
            self.sink.skip(rel, f"read error: {exc}")
            return
        except Exception as exc:  # a scanner bug must fail closed, never pass the file
            self.sink.skip(rel, f"scanner error ({type(exc).__name__}: {exc}); not trusted")
            return
        if kind not in _ARCHIVE_KINDS and kind is not Kind.EMPTY:
            self._polyglot(rel, blob)
        self.sink.files.append(ScannedFile(rel, label, blob.size))

    def dispatch(
        self,
        blob: Blob,
        name: str,
        file: str,
        location: str,
        depth: int,
        *,
        kind: Kind | None = None,
        member: bool = False,
    ) -> str:
        """Run the checks for one blob; returns the label recorded for it."""
        if depth > self.config.max_archive_depth:
            raise Unscannable(
                join_location(
                    location, f"archives nested deeper than {self.config.max_archive_depth}"
                )
            )
        kind = kind or sniff(blob, name)
        sink = self.sink
        if kind in (Kind.PICKLE, Kind.TORCH_LEGACY):
            self._pickle(blob, file, location, kind)
        elif kind is Kind.ZIP:
            return archives.scan_zip(blob, sink, file, location, depth, self._member)
        elif kind is Kind.SEVEN_ZIP:
            archives.scan_7z(blob, sink, file, location, depth, self._member)
        elif kind is Kind.GGUF:
            gguf_check.scan_gguf(blob, sink, file, location)
        elif kind is Kind.TAR:
            archives.scan_tar(blob, sink, file, location, depth, self._member)
        elif kind in (Kind.GZIP, Kind.BZIP2, Kind.XZ):
            data = archives.decompress(blob, kind.value, self.config.max_nested_bytes, location)
            inner = name.rsplit(".", 1)[0] if "." in name else name
            where = join_location(location, f"{kind.value} content")
            self._member(BytesBlob(data), inner, where, depth + 1, False)
        elif kind in _NOT_SUPPORTED:
            raise Unscannable(join_location(location, _NOT_SUPPORTED[kind]))
        elif kind is Kind.SAFETENSORS:
            safetensors_check.scan_safetensors(blob, sink, file, location)
        elif kind is Kind.NUMPY:
            if archives.scan_numpy(blob, sink, file, location):
                sink.add("FILE009", file, location, "numpy object array (pickled objects)")
        elif kind is Kind.HDF5:
            archives.scan_hdf5(blob, sink, file, location)
        elif kind is Kind.EXECUTABLE:
            sink.add("FILE005", file, location, "native executable, library or compiled Python")
        elif kind is Kind.PYTHON:
            sink.add("CFG002", file, location, f"{name.rsplit('/', 1)[-1]} is code")
        elif kind is Kind.TEXT:
            return config_check.scan_text(blob, sink, file, location, name)
        elif kind is Kind.SENTENCEPIECE:
            pass  # tokenizer data: every field was decoded while identifying it
        elif kind is Kind.ONNX:
            if member:
                raise Unscannable(
                    join_location(
                        location, "ONNX model inside an archive: extract it and scan the directory"
                    )
                )
            raise Unscannable("not an ONNX model and no other known format")
        elif kind is Kind.UNKNOWN and not member:
            raise Unscannable("unknown binary format (identified by content, not by name)")
        return kind.value

    def _member(self, blob: Blob, name: str, location: str, depth: int, pickle: bool) -> None:
        """Archive members: by content; unknown bytes inside an archive are data (tensors)."""
        try:
            deep = isinstance(blob, BytesBlob) or blob.size <= _DEEP_SNIFF_BYTES
            kind = Kind.PICKLE if pickle else sniff(blob, name, deep=deep, member=True)
            if kind in (Kind.UNKNOWN, Kind.TEXT, Kind.EMPTY):
                return
            if kind is Kind.PICKLE and not pickle and not _looks_like_pickle(blob.head(1 << 20)):
                return  # tensor bytes that start like a PROTO opcode: not a pickle at all
            if kind is Kind.GZIP and not archives.looks_like_gzip(blob.head(1 << 16)):
                return  # tensor bytes that start like a gzip header
            if kind is Kind.ONNX and not name.lower().endswith(".onnx"):
                return  # protobuf-looking tensor bytes
            self.dispatch(blob, name, self._current, location, depth, kind=kind, member=True)
        except Malformed as exc:
            self.sink.add("ARC008", self._current, location, str(exc))
            self.sink.skip(self._current, str(exc))
        except Unscannable as exc:
            self.sink.skip(self._current, str(exc))

    def _pickle(self, blob: Blob, file: str, location: str, kind: Kind) -> None:
        limit = self.config.max_pickle_bytes
        if blob.size > limit and not isinstance(blob, FileBlob):
            raise Unscannable(
                join_location(
                    location, f"pickle of {blob.size:,} bytes, above max_pickle_bytes ({limit:,})"
                )
            )
        before = len(self.sink.findings)
        with blob.open() as fh:
            scan_pickle_stream(
                fh,
                blob.size,
                self.sink,
                file,
                location,
                max_opcodes=self.config.max_pickle_opcodes,
                legacy_torch=kind is Kind.TORCH_LEGACY,
            )
        if len(self.sink.findings) == before:
            self.sink.add("FILE009", file, location, f"{kind.value}: only safe-listed globals")

    def _polyglot(self, rel: str, blob: Blob) -> None:
        """A ZIP central directory at the end of a non-ZIP file makes it a polyglot."""
        tail = blob.tail(min(_TAIL, blob.size))
        base = blob.size - len(tail)
        at = tail.rfind(_EOCD)
        while at != -1:
            record = tail[at : at + 22]
            if len(record) == 22:
                cd_size = int.from_bytes(record[12:16], "little")
                cd_start = base + at - cd_size
                if cd_size > 0 and cd_start >= 0 and _read_at(blob, cd_start, 4) == b"PK\x01\x02":
                    self.sink.add(
                        "FILE006",
                        rel,
                        f"byte {base + at}",
                        "ZIP end-of-central-directory record at the end of the file",
                    )
                    return
            at = tail.rfind(_EOCD, 0, at)


def _looks_like_pickle(head: bytes) -> bool:
    """A pickle completes or imports a global within its first MiB; raw tensor bytes do not."""
    import io

    from onnxguard.scan.pickles import _Problems, _TooLong

    try:
        result = parse_pickle(io.BytesIO(head), len(head), _Problems(), max_opcodes=100_000)
    except _TooLong:
        return True
    return result.complete or bool(result.globals)


def _read_at(blob: Blob, offset: int, n: int) -> bytes:
    with blob.open() as fh:
        fh.seek(offset)
        return fh.read(n)


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([str(path), str(root)]) == str(root)


def _type_name(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "special file"
