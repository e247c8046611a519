"""The pickle walk never passes what it could not read to the end (issue: fail-open paths).

Each sample is assembled opcode by opcode and only ever scanned; where the scanner's verdict
depends on what ``pickle.loads`` would do, the test says which unpickler behaviour it mirrors.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest

from onnxguard.scan import Severity, scan_path
from unit.scan import attack_samples as samples
from unit.scan._helpers import finding, rules_of


def test_long_unicode_line_does_not_stop_the_walk_before_os_system(tmp_path: Path) -> None:
    samples.make_long_line_fail_open(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    hit = finding(report, "PKL001")
    assert "os.system" in hit.message
    assert int(hit.location.split()[-1]) > 70_000  # found after the long line
    assert "PKL007" not in rules_of(report)  # the walk reached STOP


def test_long_line_pickle_disguised_as_text_is_a_pickle(tmp_path: Path) -> None:
    samples.make_long_line_text_disguise(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.kind_of("notes.txt") == "pickle"
    assert finding(report, "PKL001").severity is Severity.CRITICAL


def test_line_longer_than_the_inline_limit_is_skipped_not_a_stop(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    line = b"S'" + b"B" * (1 << 21) + b"'\n0"  # 2 MiB STRING: skipped as opaque, walk goes on
    (d / "model.pkl").write_bytes(b"\x80\x02" + line + samples.protocol0_payload())
    report = scan_path(d)
    assert "os.system" in finding(report, "PKL001").message


def test_stream_that_ends_inside_a_text_line_is_high(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.pkl").write_bytes(b"\x80\x02V" + b"C" * 100_000)  # no newline, no STOP
    report = scan_path(d)
    assert finding(report, "PKL007").severity is Severity.HIGH
    assert report.failed("high")


def test_frame_that_ends_inside_an_opcode_is_high(tmp_path: Path) -> None:
    samples.make_frame_length_mismatch(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    frame = finding(report, "PKL010")
    assert frame.severity is Severity.HIGH and "frame boundary" in frame.message
    assert "PKL001" in rules_of(report)  # and the walk went on to the payload


def test_frame_longer_than_the_file_is_high(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    stream = b"\x80\x04\x95" + (1 << 40).to_bytes(8, "little") + b"N."
    (d / "model.pkl").write_bytes(stream)
    assert "only" in finding(scan_path(d), "PKL010").message


def test_real_framed_pickles_have_no_frame_finding(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    data = {"k" * 10: list(range(50_000)), "s": "x" * 200_000, "b": b"\0" * 100_000}
    for proto in (4, 5):
        (d / f"p{proto}.pkl").write_bytes(pickle.dumps(data, protocol=proto))
    report = scan_path(d)
    assert report.findings == () or rules_of(report, "low") == set(), report.to_text()


def test_truncated_binunicode_that_decodes_as_text_is_a_malformed_pickle(tmp_path: Path) -> None:
    samples.make_truncated_binunicode(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.kind_of("model.pkl") == "pickle"
    assert finding(report, "PKL007").severity is Severity.HIGH


def test_text_starting_with_a_length_opcode_letter_stays_text(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "vocab.txt").write_text("Xylophone\nBanana\nTea\n")
    report = scan_path(d)
    assert report.kind_of("vocab.txt") == "text" and report.findings == ()


def test_joblib_numpy_array_wrapper_is_not_a_gadget(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    import numpy as np

    d = tmp_path / "m"
    d.mkdir()
    arrays = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ids": np.arange(5, dtype=np.int64),
        "names": np.array(["a", "bb"]),
        "flags": np.array([True, False]),
        "objects": np.array([{"x": 1}, None], dtype=object),
        "empty": np.zeros((0, 3)),
    }
    joblib.dump(arrays, d / "model.joblib")
    buf = io.BytesIO()
    joblib.dump([np.ones(3)] * 2, buf)
    (d / "list.joblib").write_bytes(buf.getvalue())
    report = scan_path(d)
    assert rules_of(report, "low") == set(), report.to_text()
    assert report.unscanned == ()


def test_joblib_payload_after_an_array_is_still_found(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    import numpy as np

    buf = io.BytesIO()
    joblib.dump({"w": np.ones(4)}, buf)
    data = buf.getvalue()
    assert data.endswith(b".")
    # splice os.system(...) + POP before the final STOP (after the array bytes)
    spliced = data[:-1] + samples.call(samples.glob("os", "system"), samples.ustr("x")) + b"0."
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.joblib").write_bytes(spliced)
    assert "os.system" in finding(scan_path(d), "PKL001").message


def test_joblib_wrapper_with_a_forged_shape_is_high(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    import numpy as np

    buf = io.BytesIO()
    joblib.dump(np.ones(4), buf)
    forged = buf.getvalue().replace(b"K\x04\x85", b"J\xff\xff\xff\x0f\x85", 1)  # shape (2**28-1,)
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.joblib").write_bytes(forged)
    report = scan_path(d)
    assert report.failed("high"), report.to_text()
