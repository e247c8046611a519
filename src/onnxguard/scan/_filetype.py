"""Identify a file by its content, never by its name.

Renaming ``pytorch_model.bin`` to ``notes.txt`` must not change what the scanner does (picklescan
CVE-2025-1889): every file is sniffed from its first bytes and, where formats have no magic
number (protocol 0/1 pickles, ONNX protobuf), by parsing a prefix.
"""

from __future__ import annotations

import codecs
import re
import struct
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from onnxguard.scan._context import Blob, FileBlob

HEAD = 4096
# C0 controls that never occur in text files (tab, newlines, form feed and ESC do).
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")


class Kind(StrEnum):
    """What a file is, as far as the scanner is concerned."""

    EMPTY = "empty"
    TEXT = "text"
    PYTHON = "python-source"
    PICKLE = "pickle"
    TORCH_LEGACY = "pytorch-legacy"
    ZIP = "zip"
    SAFETENSORS = "safetensors"
    NUMPY = "numpy"
    HDF5 = "hdf5"
    TAR = "tar"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    SEVEN_ZIP = "7z"
    ZSTD = "zstd"
    RAR = "rar"
    GGUF = "gguf"
    ORT_FORMAT = "ort-format"
    SENTENCEPIECE = "sentencepiece"
    ONNX = "onnx"
    EXECUTABLE = "executable"
    UNKNOWN = "unknown-binary"


# Kinds that hold a pickle a loader would unpickle.
PICKLE_KINDS = frozenset({Kind.PICKLE, Kind.TORCH_LEGACY})

_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_MAGIC: tuple[tuple[bytes, Kind], ...] = (
    (_LEGACY_TORCH, Kind.TORCH_LEGACY),
    (b"PK\x03\x04", Kind.ZIP),
    (b"PK\x05\x06", Kind.ZIP),
    (b"7z\xbc\xaf\x27\x1c", Kind.SEVEN_ZIP),
    (b"Rar!\x1a\x07", Kind.RAR),
    (b"\x1f\x8b\x08", Kind.GZIP),  # deflate is gzip's only method
    (b"\xfd7zXZ\x00", Kind.XZ),
    (b"\x28\xb5\x2f\xfd", Kind.ZSTD),
    (b"\x89HDF\r\n\x1a\n", Kind.HDF5),
    (b"\x93NUMPY", Kind.NUMPY),
    (b"GGUF", Kind.GGUF),
    (b"\x7fELF", Kind.EXECUTABLE),
    (b"\xfe\xed\xfa\xce", Kind.EXECUTABLE),
    (b"\xfe\xed\xfa\xcf", Kind.EXECUTABLE),
    (b"\xce\xfa\xed\xfe", Kind.EXECUTABLE),
    (b"\xcf\xfa\xed\xfe", Kind.EXECUTABLE),
    (b"\xca\xfe\xba\xbe", Kind.EXECUTABLE),
    (b"\x00asm", Kind.EXECUTABLE),
)
_PYTHON_SUFFIXES = (".py", ".pyw", ".pyi", ".ipynb")
# ModelProto fields, in the order protobuf writes them: a serialized model starts with one.
_ONNX_FIRST_TAGS = frozenset({0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42})


def sniff(blob: Blob, name: str, *, deep: bool = True, member: bool = False) -> Kind:
    """Identify ``blob`` (called ``name``) by content.

    ``deep`` reads the whole blob where formats have no magic (text validity, PROTO-less
    pickles); without it only the first 4 KiB are looked at.  ``member`` is for archive
    members, which are mostly raw tensor bytes: signatures of two or three bytes (safetensors'
    length + ``{``, pyc) could match by chance there, so they also need the member's name.
    """
    if blob.size == 0:
        return Kind.EMPTY
    head = blob.head(HEAD)
    kind = _by_magic(head) or _by_signature(head, name.lower(), blob.size, member=member)
    if kind is not None:
        return kind
    if not deep:
        return _by_text_head(head, name.lower())
    return _by_content(blob, head, name.lower())


def _by_magic(head: bytes) -> Kind | None:
    """Formats with a magic number, and pickles that start with PROTO."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return Kind.PICKLE  # members: confirmed by parsing before anything is reported
    return None


def _by_signature(head: bytes, lower: str, size: int, *, member: bool) -> Kind | None:
    """Formats recognised by a weaker signature at a fixed place (or, for ONNX, the name)."""
    if _is_safetensors(head) and (not member or lower.endswith(".safetensors")):
        return Kind.SAFETENSORS
    if (_is_pyc(head) and (not member or lower.endswith(".pyc"))) or _is_pe(head):
        return Kind.EXECUTABLE
    if len(head) > 262 and head[257:262] == b"ustar":
        return Kind.TAR
    if len(head) >= 8 and head[4:8] == b"ORTM":
        return Kind.ORT_FORMAT
    # ONNX Runtime needs ir_version, so a loadable model starts with field 1 (byte 0x08)
    if (
        lower.endswith(".onnx")
        or head[0] in (0x12, 0x1A)
        or (head[0] == 0x08 and _plausible_onnx(head))
    ):
        return Kind.ONNX
    from onnxguard.scan.pickles import looks_truncated

    if looks_truncated(head, size):
        return Kind.PICKLE  # a pickle cut short: scanned, and reported as malformed
    return None


def _by_text_head(head: bytes, lower: str) -> Kind:
    """Archive members: decide from the head alone (a member may be gigabytes of tensor)."""
    text = not _CONTROL.search(head) and _utf8_prefix(head)
    if text and (lower.endswith(_PYTHON_SUFFIXES) or head.startswith(b"#!")):
        return Kind.PYTHON
    return Kind.TEXT if text else Kind.UNKNOWN


def _by_content(blob: Blob, head: bytes, lower: str) -> Kind:
    """Formats without magic: text (or a protocol-0 pickle in disguise), SentencePiece,
    PROTO-less binary pickles, and protobuf that may be ONNX."""
    if not _CONTROL.search(head) and _is_utf8(blob):
        if lower.endswith(_PYTHON_SUFFIXES) or head.startswith(b"#!"):
            return Kind.PYTHON
        if head[:1] not in (b"{", b"[", b"#", b" ", b"\n") and _probe(blob):
            return Kind.PICKLE  # protocol 0 text pickle
        return Kind.TEXT
    if head[:1] == b"\x0a" and _is_sentencepiece(blob):
        return Kind.SENTENCEPIECE
    if _probe(blob):
        return Kind.PICKLE  # protocol 0/1 pickle with binary data (no PROTO opcode)
    if head[0] in _ONNX_FIRST_TAGS:
        return Kind.ONNX  # confirmed (or refused) when parsed
    return Kind.UNKNOWN


def sniff_path(path: Path) -> Kind:
    """Identify a file on disk by content (follows no symlink; errors raise OSError)."""
    if path.is_symlink() or not path.is_file():
        raise OSError(f"not a regular file: {path}")
    return sniff(FileBlob(path, path.stat().st_size), path.name)


def is_pickle_file(path: Path) -> bool:
    """Does loading this file unpickle it (plain or legacy torch pickle, or a PyTorch zip)?

    The source loader uses this to tell pickle checkpoints from safetensors whatever the file is
    called.  A ZIP counts when it holds a ``.pkl`` member (``torch.save`` since PyTorch 1.6).
    """
    kind = sniff_path(path)
    if kind in PICKLE_KINDS:
        return True
    if kind is Kind.ZIP:
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith(".pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return True  # a broken zip is treated as the worst case
    return False


def _is_safetensors(head: bytes) -> bool:
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    # a text file may have "{" as 9th character: its first 8 bytes are printable
    return length >= 2 and not all(0x20 <= b < 0x7F for b in head[:8])


def _is_pyc(head: bytes) -> bool:
    if len(head) < 16 or head[2:4] != b"\r\n":
        return False
    return 2900 <= int.from_bytes(head[:2], "little") < 4000


def _is_pe(head: bytes) -> bool:
    if not head.startswith(b"MZ") or len(head) < 64:
        return False
    offset = int.from_bytes(head[0x3C:0x40], "little")
    return head[offset : offset + 4] == b"PE\x00\x00"


def _is_utf8(blob: Blob) -> bool:
    """Stream-decode the whole blob: text is valid UTF-8 without binary control bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with blob.open() as fh:
        while chunk := fh.read(1 << 20):
            if _CONTROL.search(chunk):
                return False
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                return False
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _utf8_prefix(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return False
    return True


_SPM_MAX_BYTES = 64 << 20


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def protobuf_fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """Decode one protobuf message level: (field, wire type, payload); ValueError if malformed."""
    out: list[tuple[int, int, bytes | int]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((field, wire, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("length beyond the message")
            out.append((field, wire, data[pos : pos + length]))
            pos += length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(data):
                raise ValueError("truncated fixed field")
            out.append((field, wire, data[pos : pos + width]))
            pos += width
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _is_sentencepiece(blob: Blob) -> bool:
    """A SentencePiece ``ModelProto`` (``spiece.model``, ``tokenizer.model``): repeated pieces
    (string, float score, enum type) plus trainer/normalizer specs, and nothing else."""
    if blob.size > _SPM_MAX_BYTES:
        return False
    with blob.open() as fh:
        data = fh.read()
    try:
        top = protobuf_fields(data)
        pieces = 0
        for field, wire, payload in top:
            if field not in (1, 2, 3, 4, 5) or wire != 2 or not isinstance(payload, bytes):
                return False
            if field == 1:
                for sub, sub_wire, value in protobuf_fields(payload):
                    if (sub, sub_wire) == (1, 2) and isinstance(value, bytes):
                        value.decode("utf-8")
                    elif (sub, sub_wire) not in ((2, 5), (3, 0)):
                        return False
                pieces += 1
    except (ValueError, UnicodeDecodeError):
        return False
    return pieces > 0


def _plausible_onnx(head: bytes) -> bool:
    """``ir_version`` (field 1) is a small varint."""
    return len(head) > 1 and 1 <= head[1] <= 64


def _probe(blob: Blob) -> bool:
    from onnxguard.scan.pickles import probe_pickle

    fh: BinaryIO
    with blob.open() as fh:
        return probe_pickle(fh, blob.size)
