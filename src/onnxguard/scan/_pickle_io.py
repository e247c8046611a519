"""Reading pickle opcodes and their arguments the way ``pickle.load`` does, within bounds.

Split from :mod:`onnxguard.scan.pickles` (the symbolic machine): this module only turns bytes
into (opcode, argument) pairs.  Text arguments are read to their newline whatever their length
(as the unpickler does); arguments too large to hold are skipped and stand for an opaque value.
"""

from __future__ import annotations

import io
import pickletools
import struct
from typing import Any, BinaryIO


class Opaque:
    """A value whose content does not matter to the policy (numbers, containers, call results)."""


OPAQUE = Opaque()
NONE = Opaque()
MAX_INLINE = 1 << 20  # byte/str arguments above this are skipped, not read into memory
_LINE_CHUNK = 1 << 16

OPS = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
BIG_ARGS = {  # argument name -> (length prefix size, struct format)
    "bytes4": (4, "<I"),
    "unicodestring4": (4, "<I"),
    "string4": (4, "<i"),
    "bytes8": (8, "<Q"),
    "bytearray8": (8, "<Q"),
    "unicodestring8": (8, "<Q"),
}
_PAIR_ARGS = ("stringnl_noescape_pair", "stringnl_noescape")


class Reader:
    """Bounded reads over a seekable stream that ends at ``end``."""

    def __init__(self, fh: BinaryIO, end: int) -> None:
        self.fh = fh
        self.end = end

    def read(self, n: int) -> bytes:
        return self.fh.read(max(0, min(n, self.end - self.fh.tell())))

    def tell(self) -> int:
        return self.fh.tell()

    def skip(self, n: int) -> None:
        if n > self.end - self.fh.tell():
            raise ValueError(f"{n:,} bytes to skip but only {self.end - self.fh.tell():,} remain")
        self.fh.seek(n, 1)

    def line(self) -> bytes | None:
        """One newline-terminated line of any length, as ``pickle.load`` reads it.

        Returns the line (with its newline) when it fits in memory, None when it was longer
        than ``MAX_INLINE`` and was skipped; ValueError when the stream ends first.
        """
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = self.fh.readline(min(_LINE_CHUNK, max(0, self.end - self.fh.tell())))
            if not chunk:
                raise ValueError("stream ends inside a text argument (no newline)")
            size += len(chunk)
            if size <= MAX_INLINE:
                parts.append(chunk)
            if chunk.endswith(b"\n"):
                return b"".join(parts) if size <= MAX_INLINE else None


def read_arg(reader: Reader, op: pickletools.OpcodeInfo) -> Any:
    arg = op.arg
    if arg is None:
        return None
    if arg.name in BIG_ARGS:
        return _read_sized(reader, arg.name)
    if arg.n == -1:  # newline-terminated text argument(s)
        lines = [reader.line() for _ in range(2 if arg.name.endswith("pair") else 1)]
        if any(line is None for line in lines):
            return OPAQUE  # longer than anything worth holding; a name this long cannot import
        if arg.name in _PAIR_ARGS:
            return tuple(line[:-1].decode("utf-8") for line in lines if line is not None)
        return arg.reader(io.BytesIO(lines[0]))  # type: ignore[arg-type]
    if arg.n > 0:  # fixed width
        raw = reader.read(arg.n)
        if len(raw) != arg.n:
            raise ValueError("truncated argument")
        return arg.reader(io.BytesIO(raw))  # type: ignore[arg-type]
    if arg.name in ("long1", "long4"):
        width = 1 if arg.name == "long1" else 4
        raw = reader.read(width)
        if len(raw) != width:
            raise ValueError("truncated length prefix")
        length = raw[0] if width == 1 else struct.unpack("<i", raw)[0]
        if length < 0:
            raise ValueError("negative length")
        data = reader.read(length)
        if len(data) != length:
            raise ValueError(f"argument of {length:,} bytes runs past the end")
        return int.from_bytes(data, "little", signed=True) if length <= 4096 else OPAQUE
    length_byte = reader.read(1)  # string1, bytes1, unicodestring1
    if not length_byte:
        raise ValueError("truncated length prefix")
    data = reader.read(length_byte[0])
    if len(data) != length_byte[0]:
        raise ValueError("argument runs past the end")
    return data.decode("utf-8", "surrogatepass") if arg.name == "unicodestring1" else data


def _read_sized(reader: Reader, kind: str) -> Any:
    width, fmt = BIG_ARGS[kind]
    raw = reader.read(width)
    if len(raw) != width:
        raise ValueError("truncated length prefix")
    (length,) = struct.unpack(fmt, raw)
    if length < 0:
        raise ValueError("negative length")
    remaining = reader.end - reader.tell()
    if length > remaining:
        raise ValueError(f"argument of {length:,} bytes but only {remaining:,} remain")
    if length > MAX_INLINE:
        reader.skip(length)
        return OPAQUE
    data = reader.read(length)
    if kind.startswith("unicode"):
        return data.decode("utf-8", "surrogatepass")
    return data
