"""Property-based fuzzing (hypothesis) of the pickle walker, the ZIP reader and the safetensors
header parser: arbitrary bytes never raise, never hang, and a known gadget after any prefix is
never passed when CPython's unpickler would reach it.

The unpickler oracle runs in this process but can import nothing: its ``find_class`` returns an
inert stand-in for allowlisted globals and raises for every other one, before any import.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxguard.scan import ScanReport, scan_path
from onnxguard.scan._pickle_policy import is_safe_global
from onnxguard.scan.pickles import _Problems, parse_pickle
from unit.scan import attack_samples as samples

# Hangs are bounded by pytest-timeout per test (below), not by a per-example deadline that a
# loaded machine would trip.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Reached(Exception):
    """The unpickler asked for a global outside the allowlist."""


class _Inert:
    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


class _Oracle(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if is_safe_global(module, name):
            return _Inert
        raise _Reached(f"{module}.{name}")

    def persistent_load(self, pid: object) -> object:
        return _Inert()


def _reaches_gadget(data: bytes) -> bool:
    """Would repeated ``pickle.load`` calls on ``data`` import something outside the allowlist?"""
    stream = io.BytesIO(data)
    for _ in range(64):
        if stream.tell() >= len(data):
            return False
        try:
            _Oracle(stream).load()
        except _Reached:
            return True
        except Exception:
            return False
    return False


def _scan_bytes(tmp_path: Path, name: str, data: bytes) -> ScanReport:
    d = tmp_path / "fuzz"
    d.mkdir(exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    (d / name).write_bytes(data)
    return scan_path(d)


def _no_scanner_bug(report: ScanReport) -> None:
    assert not [u for u in report.unscanned if u.reason.startswith("scanner error")], report


_GADGETS = st.sampled_from(
    [
        samples.payload_pickle(),
        samples.payload_pickle("builtins", "eval", "1"),
        b"\x80\x04" + samples.short("os") + samples.short("system") + b"\x93"
        + samples.ustr("x") + b"\x85R.",
        samples.protocol0_payload(),
        b"\x80\x02" + samples.call(samples.glob("argparse", "Namespace")) + b".",
    ]
)  # fmt: skip


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.binary(max_size=2048))
def test_walker_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    result = parse_pickle(io.BytesIO(data), len(data), _Problems(), max_opcodes=100_000)
    assert result.complete or result.error is not None


@pytest.mark.timeout(300)
@FUZZ
@given(
    prefix=st.binary(max_size=48),
    gadget=_GADGETS,
    name=st.sampled_from(["model.pkl", "x.bin", "notes.txt"]),
)
def test_gadget_after_any_prefix_is_never_passed(
    tmp_path: Path, prefix: bytes, gadget: bytes, name: str
) -> None:
    data = prefix + gadget
    report = _scan_bytes(tmp_path, name, data)
    _no_scanner_bug(report)
    if _reaches_gadget(data):
        assert report.at_or_above("high") or report.unscanned, (data, report.to_text())


@pytest.mark.timeout(300)
@FUZZ
@given(
    benign=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=20)
        | st.binary(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=12,
    ),
    proto=st.integers(0, 5),
    gadget=_GADGETS,
    mode=st.sampled_from(["splice", "append"]),
)
def test_gadget_hidden_in_a_benign_pickle_is_found(
    tmp_path: Path, benign: object, proto: int, gadget: bytes, mode: str
) -> None:
    clean = pickle.dumps(benign, protocol=proto)
    body = gadget[2:-1] if gadget.startswith(b"\x80") else gadget[:-1]
    if mode == "splice" and proto >= 2:
        data = clean[:2] + body + b"0" + clean[2:]
    else:
        data = clean + gadget
    report = _scan_bytes(tmp_path, "model.pkl", data)
    assert _reaches_gadget(data)
    assert report.at_or_above("high") or report.unscanned, report.to_text()
    clean_report = _scan_bytes(tmp_path, "model.pkl", clean)
    assert not clean_report.at_or_above("low") and not clean_report.unscanned


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", samples._state_dict_pickle())
        zf.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


@pytest.mark.timeout(300)
@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=6),
       cut=st.integers(0, 10_000))  # fmt: skip
def test_zip_reader_survives_corruption(
    tmp_path: Path, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(_zip_bytes())
    for at, xor in flips:
        data[at % len(data)] ^= xor
    data = data[: max(4, cut % (len(data) + 1))]
    report = _scan_bytes(tmp_path, "pytorch_model.bin", bytes(data))
    _no_scanner_bug(report)
    assert report.files or report.unscanned


@pytest.mark.timeout(300)
@FUZZ
@given(header=st.one_of(
    st.binary(max_size=256),
    st.dictionaries(st.text(max_size=8), st.dictionaries(
        st.sampled_from(["dtype", "shape", "data_offsets", "x"]),
        st.one_of(st.sampled_from(["F32", "I8", "BF16", "??"]),
                  st.lists(st.integers(-5, 1 << 40), max_size=3)),
    ), max_size=4).map(lambda h: __import__("json").dumps(h).encode()),
), declared=st.integers(0, 1 << 64 - 1), tail=st.binary(max_size=64))  # fmt: skip
def test_safetensors_header_parser_never_raises(
    tmp_path: Path, header: bytes, declared: int, tail: bytes
) -> None:
    length = declared if declared % 3 == 0 else len(header)
    data = struct.pack("<Q", length % (1 << 64)) + header + tail
    report = _scan_bytes(tmp_path, "model.safetensors", data)
    _no_scanner_bug(report)
