"""safetensors checks: the header must describe the file exactly, byte for byte.

safetensors cannot run code, but a header that lies makes tools read different tensors from the
same file: duplicate JSON keys (first vs last wins), spans that overlap, bytes hidden in gaps or
after the last tensor (a second payload — a ZIP or pickle appended makes a polyglot).  Only the
header is read and the file is stat'ed: a 90 MB model costs microseconds.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from onnxguard.scan._context import Blob, Sink

# bits per element, as in the safetensors Rust crate's Dtype
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


class _Duplicate(Exception):
    pass


def _pairs_hook(duplicates: list[str]) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    return hook


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def scan_safetensors(blob: Blob, sink: Sink, file: str, location: str = "") -> int:
    """Check a safetensors file's header against its size; returns the number of tensors."""
    limit = sink.config.max_safetensors_header_bytes
    size = blob.size
    if size < 8:
        sink.add("SFT001", file, location, f"file of {size} bytes has no 8-byte header length")
        return 0
    with blob.open() as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > limit:
            sink.add(
                "SFT001",
                file,
                location,
                f"header claims {length:,} bytes, above the "
                f"limit of {limit:,} (max_safetensors_header_bytes)",
            )
            return 0
        if 8 + length > size:
            sink.add(
                "SFT001",
                file,
                location,
                f"header claims {length:,} bytes but the file "
                f"has only {size - 8:,} after the length field",
            )
            return 0
        raw = fh.read(length)
    duplicates: list[str] = []
    try:
        text = raw.decode("utf-8")
        if not text.startswith("{"):
            raise ValueError("header does not start with '{'")
        header = json.loads(
            text, object_pairs_hook=_pairs_hook(duplicates), parse_constant=_reject_constant
        )
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        sink.add("SFT002", file, location, f"header is not valid JSON: {exc}")
        return 0
    for key in sorted(set(duplicates)):
        sink.add(
            "SFT003",
            file,
            _loc(location, key),
            f"key {key!r} appears more than once in "
            "the header; parsers that keep the first and the last copy load different data",
        )
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        sink.add(
            "SFT010",
            file,
            _loc(location, "__metadata__"),
            "`__metadata__` must map strings to strings",
        )
    grouped = _PerCause()
    spans = _entries(header, grouped, file, location)
    _check_layout(spans, size - 8 - length, grouped, file, location)
    grouped.flush(sink)
    return len(header)


class _PerCause:
    """Buffers per-tensor findings and reports one per rule with a count.

    A truncated file makes every tensor after the cut "outside the file": one finding that says
    how many (and names the first few) is the report; fifty copies of it are noise.
    """

    def __init__(self) -> None:
        self.items: dict[str, list[tuple[str, str, str]]] = {}

    def add(self, rule_id: str, file: str, location: str, message: str) -> None:
        self.items.setdefault(rule_id, []).append((file, location, message))

    def flush(self, sink: Sink) -> None:
        for rule_id, entries in self.items.items():
            file, location, message = entries[0]
            if len(entries) > 1:
                others = [loc.rsplit("tensor ", 1)[-1] for _f, loc, _m in entries[1:4]]
                more = f" and {len(entries) - 4} more" if len(entries) > 4 else ""
                message = f"{len(entries)} tensors: {message} (also {', '.join(others)}{more})"
            sink.add(rule_id, file, location, message)


def _loc(location: str, tensor: str) -> str:
    return f"{location}, tensor {tensor!r}" if location else f"tensor {tensor!r}"


def _entries(
    header: dict[str, Any], sink: _PerCause, file: str, location: str
) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        where = _loc(location, name)
        if not isinstance(entry, dict):
            sink.add("SFT004", file, where, "entry is not an object")
            continue
        extra = set(entry) - _ENTRY_KEYS
        missing = _ENTRY_KEYS - set(entry)
        if extra or missing:
            sink.add(
                "SFT004",
                file,
                where,
                "entry must have exactly dtype, shape and "
                f"data_offsets (extra: {sorted(extra)}, missing: {sorted(missing)})",
            )
            if missing:
                continue
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            sink.add("SFT004", file, where, f"unknown dtype {dtype!r}")
            continue
        if not (isinstance(shape, list) and all(_is_uint(d) for d in shape)):
            sink.add(
                "SFT004", file, where, f"shape {shape!r} is not a list of non-negative integers"
            )
            continue
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(map(_is_uint, offsets))
            and offsets[0] <= offsets[1]
        ):
            sink.add(
                "SFT004",
                file,
                where,
                f"data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end",
            )
            continue
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        begin, end = offsets
        if bits % 8 or bits // 8 != end - begin:
            sink.add(
                "SFT005",
                file,
                where,
                f"{dtype} × {shape} is {bits / 8:g} bytes but the "
                f"span [{begin}, {end}) holds {end - begin}",
            )
        spans.append((begin, end, name))
    return spans


def _check_layout(
    spans: list[tuple[int, int, str]], data_size: int, sink: _PerCause, file: str, location: str
) -> None:
    """Spans must tile [0, data_size) exactly: no overlap, no gap, nothing outside or after."""
    expected = 0
    previous = ""
    for begin, end, name in sorted(spans):
        where = _loc(location, name)
        if end > data_size:
            sink.add(
                "SFT006",
                file,
                where,
                f"span [{begin}, {end}) ends beyond the {data_size:,} data bytes of the file",
            )
        if begin < expected:
            sink.add(
                "SFT007",
                file,
                where,
                f"span [{begin}, {end}) overlaps tensor {previous!r} (which ends at {expected})",
            )
        elif begin > expected:
            sink.add(
                "SFT008",
                file,
                where,
                f"{begin - expected} unused bytes before this tensor (from {expected})",
            )
        if end >= expected:
            expected, previous = end, name
    if expected < data_size:
        sink.add(
            "SFT009",
            file,
            location,
            f"{data_size - expected:,} bytes after the last "
            f"tensor (data ends at {expected:,} of {data_size:,})",
        )


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
