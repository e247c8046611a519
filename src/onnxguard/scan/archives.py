"""Containers: ZIP (PyTorch checkpoints, Keras v3, npz), 7z, tar, gzip/bzip2/xz, numpy, HDF5.

ZIP members are read from their *local* headers, as PyTorch's reader does, and compared with the
central directory that Python's ``zipfile`` trusts: a mismatch, a bogus encryption flag or a bad
CRC is reported (each broke a scanner while PyTorch loaded the file: CVE-2025-1944, -1945,
-10156) and the member is scanned anyway.  A member that really is encrypted (its data does not
read as plaintext with the recorded CRC) makes the archive unscanned, once, instead of being
misread.  Members whose Unix mode says symbolic link are reported, like tar links.  7z archives
are read in memory with py7zr.  Every member is identified by content and handed back to the
dispatcher, so a pickle hidden under any name inside any nesting is found.
"""

from __future__ import annotations

import ast
import bz2
import lzma
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO

from onnxguard.scan._context import (
    Blob,
    BytesBlob,
    LazyBlob,
    Malformed,
    Sink,
    Unscannable,
    join_location,
)
from onnxguard.scan.keras_check import check_keras_archive, is_keras_archive
from onnxguard.scan.pickles import scan_pickle_stream

# (blob, member name, location, depth, forced pickle) -> None
ScanMember = Callable[[Blob, str, str, int, bool], None]

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_TORCHSCRIPT = re.compile(r"(^|/)(code/.+\.py|constants\.pkl)$")
_KERAS_LAMBDA = re.compile(rb'"class_name":\s*"Lambda"')
_CHUNK = 1 << 20


def is_unsafe_member_name(name: str) -> bool:
    """Absolute, drive-qualified or ``..``-escaping names write outside the extraction dir."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return True
    return ".." in norm.split("/")


# --- ZIP -----------------------------------------------------------------------------------------
class _ZipMember:
    """Reads one member from its local header, checking it against the central directory."""

    def __init__(
        self, fh: BinaryIO, info: zipfile.ZipInfo, sink: Sink, file: str, location: str
    ) -> None:
        self.fh = fh
        self.info = info
        self.sink = sink
        self.file = file
        self.location = location
        fh.seek(info.header_offset)
        raw = fh.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
            sink.add(
                "ARC003", file, location, "no local file header where the central directory points"
            )
            raise Unscannable(f"{location}: no local header at offset {info.header_offset}")
        (_, _, flags, method, _, _, _, _, _, name_len, extra_len) = _LOCAL_HEADER.unpack(raw)
        local_name = fh.read(name_len)
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        central_name = info.orig_filename.encode(encoding, "replace")
        if local_name != central_name:
            sink.add(
                "ARC003",
                file,
                location,
                f"local header names {local_name!r} but the "
                f"central directory says {central_name!r}",
            )
        if method != info.compress_type:
            sink.add(
                "ARC003",
                file,
                location,
                f"local header compression method {method} "
                f"differs from the central directory's {info.compress_type}",
            )
        self.encrypted_flag = bool((flags | info.flag_bits) & 0x1)
        self.method = info.compress_type
        self.data_start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if self.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Unscannable(f"{location}: compression method {self.method} is not supported")

    def head(self, n: int) -> bytes:
        self.fh.seek(self.data_start)
        if self.method == zipfile.ZIP_STORED:
            return self.fh.read(min(n, self.info.compress_size))
        raw = self.fh.read(min(self.info.compress_size, max(n, 1 << 16)))
        try:
            return zlib.decompressobj(-15).decompress(raw, n)
        except zlib.error:
            return b""

    def plaintext_matches(self, limit: int) -> bool:
        """Does the data of an encrypted-flagged member read as plaintext with the right CRC?

        Yes: the flag is a lie (CVE-2025-1945: PyTorch ignores it, zipfile-based scanners give
        up).  No: the member really is encrypted (a 12-byte header precedes ciphertext).
        """
        if self.info.file_size > limit:
            return False
        self.fh.seek(self.data_start)
        raw = self.fh.read(self.info.compress_size)
        try:
            data = raw if self.method == zipfile.ZIP_STORED else zlib.decompress(raw, -15)
        except zlib.error:
            return False
        return len(data) == self.info.file_size and zlib.crc32(data) == self.info.CRC

    def full(self, limit: int) -> bytes:
        size = self.info.file_size
        if size > limit:
            raise Unscannable(
                f"{self.location}: {size:,} bytes, above the in-memory limit of {limit:,}"
            )
        self.fh.seek(self.data_start)
        raw = self.fh.read(self.info.compress_size)
        if self.method == zipfile.ZIP_STORED:
            data = raw
        else:
            try:
                data = zlib.decompressobj(-15).decompress(raw, limit + 1)
            except zlib.error as exc:
                raise Malformed(f"{self.location}: corrupt deflate data ({exc})") from exc
            if len(data) > limit:
                raise Unscannable(f"{self.location}: inflates beyond {limit:,} bytes")
        if len(data) != size:
            self.sink.add(
                "ARC003",
                self.file,
                self.location,
                f"member holds {len(data):,} bytes but the central directory says {size:,}",
            )
        if zlib.crc32(data) != self.info.CRC:
            self.sink.add(
                "ARC005",
                self.file,
                self.location,
                "CRC-32 of the member data does not match the archive's record",
            )
        return data


def scan_zip(
    blob: Blob, sink: Sink, file: str, location: str, depth: int, scan_member: ScanMember
) -> str:
    """Scan every member of a ZIP archive (PyTorch checkpoint, Keras v3, npz, anything).

    Returns the label for the file: ``"keras"`` for a Keras v3 model, else ``"zip"``.
    """
    config = sink.config
    with blob.open() as fh:
        try:
            archive = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
            raise Malformed(join_location(location, f"corrupt ZIP archive: {exc}")) from exc
        infos = archive.infolist()
        if len(infos) > config.max_archive_members:
            raise Unscannable(
                join_location(
                    location,
                    f"{len(infos):,} members, above the limit of {config.max_archive_members:,}",
                )
            )
        _check_zip_directory(infos, sink, file, location)
        members, encrypted = _scan_zip_members(fh, infos, sink, file, location, depth, scan_member)
        if encrypted:
            shown = ", ".join(encrypted[:3]) + (" ..." if len(encrypted) > 3 else "")
            sink.skip(
                file,
                join_location(
                    location,
                    f"encrypted ZIP ({len(encrypted)} member(s): {shown}): contents not checkable",
                ),
            )
        if is_keras_archive(members):
            check_keras_archive(members, sink, file, location)
            return "keras"
    return "zip"


def _scan_zip_members(
    fh: BinaryIO,
    infos: list[zipfile.ZipInfo],
    sink: Sink,
    file: str,
    location: str,
    depth: int,
    scan_member: ScanMember,
) -> tuple[dict[str, LazyBlob], list[str]]:
    """Hand every readable member to ``scan_member``; returns them and the encrypted ones."""
    limit = max(sink.config.max_pickle_bytes, sink.config.max_nested_bytes)
    encrypted: list[str] = []
    members: dict[str, LazyBlob] = {}
    for info in infos:
        where = join_location(location, f"zip member {info.filename}")
        _check_member_name(info.filename, sink, file, where)
        if info.is_dir():
            continue
        try:
            member = _ZipMember(fh, info, sink, file, where)
        except Unscannable as exc:
            sink.skip(file, str(exc))
            continue
        if member.encrypted_flag:
            if not member.plaintext_matches(limit):
                encrypted.append(info.filename)
                continue
            sink.add(
                "ARC004",
                file,
                where,
                "member is flagged as encrypted but holds plaintext; PyTorch ignores the "
                "flag while zipfile-based scanners give up",
            )
        mblob = LazyBlob(info.file_size, member.head, partial(member.full, limit))
        if _is_symlink(info):
            target = mblob.head(1024).decode("utf-8", "replace")
            sink.add("ARC007", file, where, f"symbolic link member pointing to {target!r}")
            continue
        members[info.filename] = mblob
        scan_member(mblob, info.filename, where, depth + 1, info.filename.endswith(".pkl"))
    return members, encrypted


def _check_zip_directory(
    infos: list[zipfile.ZipInfo], sink: Sink, file: str, location: str
) -> None:
    """Checks on the central directory as a whole: duplicates, total size, TorchScript."""
    config = sink.config
    for name, count in Counter(i.filename for i in infos).items():
        if count > 1:
            sink.add(
                "ARC002",
                file,
                join_location(location, f"zip member {name}"),
                f"{count} members are named {name!r}",
            )
    total = sum(i.file_size for i in infos)
    if total > config.max_archive_bytes:
        sink.add(
            "ARC006",
            file,
            location,
            f"members expand to {total:,} bytes, above the limit of {config.max_archive_bytes:,}",
        )
    script = [i.filename for i in infos if _TORCHSCRIPT.search(i.filename)]
    if script:
        sink.add(
            "PKL009",
            file,
            join_location(location, f"zip member {script[0]}"),
            f"TorchScript archive ({len(script)} code/constant members)",
        )


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    """Unix mode bits in the external attributes say S_IFLNK (what unzip and tools extract)."""
    return stat.S_ISLNK(info.external_attr >> 16)


# --- tar -----------------------------------------------------------------------------------------
def scan_tar(
    blob: Blob, sink: Sink, file: str, location: str, depth: int, scan_member: ScanMember
) -> None:
    """Scan a tar archive's members (legacy ``torch.save`` wrote tar files too)."""
    config = sink.config
    with blob.open() as fh:
        try:
            archive = tarfile.open(fileobj=fh, mode="r:")  # noqa: SIM115 - closed with fh
            members = []
            for member in archive:
                members.append(member)
                if len(members) > config.max_archive_members:
                    raise Unscannable(
                        join_location(location, f"more than {config.max_archive_members:,} members")
                    )
        except (tarfile.TarError, OSError, ValueError) as exc:
            raise Malformed(join_location(location, f"corrupt tar archive: {exc}")) from exc
        for name, count in Counter(m.name for m in members).items():
            if count > 1:
                sink.add(
                    "ARC002",
                    file,
                    join_location(location, f"tar member {name}"),
                    f"{count} members are named {name!r}",
                )
        total = sum(m.size for m in members if m.isfile())
        if total > config.max_archive_bytes:
            sink.add(
                "ARC006",
                file,
                location,
                f"members expand to {total:,} bytes, above the "
                f"limit of {config.max_archive_bytes:,}",
            )
        for member in members:
            where = join_location(location, f"tar member {member.name}")
            _check_member_name(member.name, sink, file, where)
            if member.issym() or member.islnk():
                sink.add("ARC007", file, where, f"link member pointing to {member.linkname!r}")
            elif member.isdev() or member.isfifo():
                sink.add("ARC007", file, where, "device or FIFO member")
            if not member.isfile():
                continue
            mblob = _tar_member_blob(archive, member, config.max_nested_bytes, where)
            scan_member(mblob, member.name, where, depth + 1, member.name.endswith(".pkl"))


def _tar_member_blob(
    archive: tarfile.TarFile, member: tarfile.TarInfo, limit: int, where: str
) -> LazyBlob:
    def read(n: int) -> bytes:
        stream = archive.extractfile(member)
        if stream is None:
            raise Unscannable(f"{where}: cannot read member")
        with stream:
            return stream.read(n)

    def full() -> bytes:
        if member.size > limit:
            raise Unscannable(
                f"{where}: {member.size:,} bytes, above the in-memory limit of {limit:,}"
            )
        return read(member.size)

    return LazyBlob(member.size, read, full)


# --- 7z ------------------------------------------------------------------------------------------
def scan_7z(
    blob: Blob, sink: Sink, file: str, location: str, depth: int, scan_member: ScanMember
) -> None:
    """Scan a 7z archive's members in memory with py7zr (nullifAI shipped pickles this way)."""
    try:
        import py7zr
        from py7zr.io import BytesIOFactory
    except ImportError as exc:
        raise Unscannable(
            join_location(location, "7z archive: py7zr is not installed (onnxguard[build])")
        ) from exc
    config = sink.config
    with blob.open() as fh:
        try:
            archive = py7zr.SevenZipFile(fh)
            with archive:
                if archive.needs_password():
                    raise Unscannable(
                        join_location(location, "encrypted 7z archive: contents not checkable")
                    )
                infos = archive.list()
                _check_7z_listing(infos, sink, file, location)
                factory = BytesIOFactory(config.max_nested_bytes)
                archive.extractall(factory=factory)  # noqa: S202 - into memory, never to disk
        except Unscannable:
            raise
        except (py7zr.exceptions.ArchiveError, OSError, ValueError, EOFError, KeyError,
                lzma.LZMAError, TypeError, AttributeError) as exc:  # fmt: skip
            raise Malformed(join_location(location, f"corrupt 7z archive: {exc}")) from exc
    for info in infos:
        if info.is_directory or info.is_symlink:
            continue
        where = join_location(location, f"7z member {info.filename}")
        try:
            product = factory.get(info.filename)  # type: ignore[no-untyped-call]
        except KeyError:
            sink.skip(file, f"{where}: member was not extracted")
            continue
        product.seek(0)
        data = product.read()
        scan_member(BytesBlob(data), info.filename, where, depth + 1, False)


def _check_member_name(name: str, sink: Sink, file: str, where: str) -> None:
    """ARC001 for a member whose name would land outside the extraction directory."""
    if is_unsafe_member_name(name):
        sink.add("ARC001", file, where, f"member name {name!r} escapes the extraction directory")


def _check_7z_listing(infos: list[Any], sink: Sink, file: str, location: str) -> None:
    config = sink.config
    if len(infos) > config.max_archive_members:
        raise Unscannable(join_location(location, f"{len(infos):,} members in the 7z archive"))
    total = sum(i.uncompressed or 0 for i in infos)
    if total > config.max_nested_bytes:
        raise Unscannable(
            join_location(
                location,
                f"7z members expand to {total:,} bytes, above max_nested_bytes "
                f"({config.max_nested_bytes:,})",
            )
        )
    for info in infos:
        where = join_location(location, f"7z member {info.filename}")
        _check_member_name(info.filename, sink, file, where)
        if info.is_symlink:
            sink.add("ARC007", file, where, "symbolic link member")


# --- compressed streams --------------------------------------------------------------------------
def decompress(blob: Blob, kind: str, limit: int, location: str) -> bytes:
    """Inflate a gzip/bzip2/xz stream into memory, refusing to go past ``limit`` bytes."""
    import gzip

    modules = {"gzip": gzip, "bzip2": bz2, "xz": lzma}
    with blob.open() as raw:
        try:
            with modules[kind].open(raw, "rb") as stream:
                data: bytes = stream.read(limit + 1)
        except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as exc:
            raise Malformed(join_location(location, f"corrupt {kind} stream: {exc}")) from exc
    if len(data) > limit:
        raise Unscannable(
            join_location(
                location, f"{kind} stream inflates beyond {limit:,} bytes (max_nested_bytes)"
            )
        )
    return data


def looks_like_gzip(head: bytes) -> bool:
    """Does a gzip header plus the start of its deflate stream decode?  (For archive members:
    three magic bytes can occur in raw tensor data by chance.)"""
    try:
        zlib.decompressobj(31).decompress(head, 1)
    except zlib.error:
        return False
    return True


# --- numpy ---------------------------------------------------------------------------------------
def scan_numpy(blob: Blob, sink: Sink, file: str, location: str) -> bool:
    """Check a ``.npy`` header; an object array is a pickle (CVE-2019-6446): scan it.

    Returns True when the array holds a pickle.
    """
    with blob.open() as fh:
        magic = fh.read(8)
        major = magic[6] if len(magic) == 8 else 0
        if major == 1:
            raw = fh.read(2)
            (length,) = struct.unpack("<H", raw) if len(raw) == 2 else (-1,)
        elif major in (2, 3):
            raw = fh.read(4)
            (length,) = struct.unpack("<I", raw) if len(raw) == 4 else (-1,)
        else:
            raise Unscannable(join_location(location, f"unknown .npy format version {major}"))
        if not 0 <= length <= 65536:
            raise Unscannable(join_location(location, f"implausible .npy header length {length}"))
        try:
            header = ast.literal_eval(fh.read(length).decode("utf-8" if major == 3 else "latin-1"))
            descr = header["descr"]
        except (
            ValueError,
            SyntaxError,
            KeyError,
            TypeError,
            UnicodeDecodeError,
            MemoryError,
            RecursionError,
        ) as exc:
            raise Unscannable(join_location(location, f"malformed .npy header: {exc}")) from exc
        if "O" not in repr(descr):
            return False
        where = join_location(location, "numpy object array")
        scan_pickle_stream(
            fh, blob.size, sink, file, where, max_opcodes=sink.config.max_pickle_opcodes
        )
        return True


# --- HDF5 ----------------------------------------------------------------------------------------
def scan_hdf5(blob: Blob, sink: Sink, file: str, location: str) -> None:
    """Keras HDF5 models store their config as JSON in an attribute: look for Lambda layers."""
    at = find_keras_lambda(blob)
    if at is not None:
        sink.add(
            "FILE008",
            file,
            join_location(location, f"byte {at}"),
            "model config declares a Keras Lambda layer (marshalled Python code)",
        )
        return
    sink.add(
        "FILE007",
        file,
        location,
        "HDF5 file (Keras/TensorFlow weights); no Lambda layer "
        "found, the format is not otherwise parsed",
    )


def find_keras_lambda(blob: Blob) -> int | None:
    """Byte offset of a ``"class_name": "Lambda"`` in a Keras config stored anywhere in ``blob``
    (HDF5 attribute, ``keras_metadata.pb``), read in overlapping chunks; None when absent."""
    overlap = 64
    previous = b""
    with blob.open() as fh:
        offset = 0
        while chunk := fh.read(_CHUNK):
            window = previous + chunk
            match = _KERAS_LAMBDA.search(window)
            if match:
                return offset - len(previous) + match.start()
            previous = window[-overlap:]
            offset += len(chunk)
    return None
