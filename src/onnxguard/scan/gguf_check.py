"""GGUF (llama.cpp) files: the metadata is read and its chat templates are analysed.

GGUF weights are plain data, but the metadata carries ``tokenizer.chat_template`` (and named
``tokenizer.chat_template.<name>`` variants) that llama-cpp-python rendered with an unsandboxed
Jinja2 environment (CVE-2024-34359).  The header is parsed field by field with bounds on every
count and length; a header that does not parse is unscannable, never a pass.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

from onnxguard.scan._context import Blob, Sink, Unscannable, join_location
from onnxguard.scan.templates import check_template

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_MAX_STRING = 64 << 20
_MAX_COUNT = 1 << 24


class _Reader:
    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size

    def take(self, n: int) -> bytes:
        if n > self.size - self.fh.tell():
            raise ValueError(f"field of {n:,} bytes runs past the end of the file")
        return self.fh.read(n)

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("<Q")
        if length > _MAX_STRING:
            raise ValueError(f"string of {length:,} bytes")
        return str(self.take(length).decode("utf-8"))

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY and depth < 2:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            if count > _MAX_COUNT:
                raise ValueError(f"array of {count:,} items")
            items = [self.value(item_kind, depth + 1) for _ in range(count)]
            return None if item_kind != _STRING else items
        raise ValueError(f"unknown metadata value type {kind}")


def scan_gguf(blob: Blob, sink: Sink, file: str, location: str) -> int:
    """Read the GGUF header; check every chat template.  Returns the number of keys read."""
    with blob.open() as fh:
        reader = _Reader(fh, blob.size)
        try:
            metadata = _read_metadata(reader)
        except (ValueError, UnicodeDecodeError, struct.error) as exc:
            where = join_location(location, f"GGUF header does not parse: {exc}")
            raise Unscannable(where) from exc
    for key, value in metadata.items():
        is_template = key == "tokenizer.chat_template" or key.startswith("tokenizer.chat_template.")
        if is_template and isinstance(value, str):
            check_template(value, sink, file, join_location(location, f"metadata {key}"))
    return len(metadata)


def _read_metadata(reader: _Reader) -> dict[str, Any]:
    if reader.take(4) != b"GGUF":
        raise ValueError("no GGUF magic")
    version = reader.unpack("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported")
    tensors, count = reader.unpack("<Q"), reader.unpack("<Q")
    if count > _MAX_COUNT or tensors > _MAX_COUNT:
        raise ValueError(f"{count:,} metadata keys / {tensors:,} tensors")
    metadata: dict[str, Any] = {}
    for _ in range(count):
        key = reader.string()
        if key in metadata:
            raise ValueError(f"metadata key {key!r} appears twice")
        metadata[key] = reader.value(reader.unpack("<I"))
    for _ in range(tensors):  # name, dims, type, offset: the header must be whole
        reader.string()
        dims = reader.unpack("<I")
        if dims > 8:
            raise ValueError(f"tensor with {dims} dimensions")
        reader.take(8 * dims + 4 + 8)
    return metadata
