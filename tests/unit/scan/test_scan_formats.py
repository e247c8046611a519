"""Keras v3, 7z, TensorFlow SavedModel, ZIP symlinks and encryption, ONNX external data that
stays inside the model directory: each attack is found and each benign shape passes."""

from __future__ import annotations

from pathlib import Path

from onnxguard.scan import Severity, scan_path
from unit.scan import format_samples as fs
from unit.scan._helpers import finding, rules_of


def test_keras_v3_lambda_layer_is_critical(tmp_path: Path) -> None:  # CVE-2024-3660
    fs.make_keras_v3_lambda(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.kind_of("model.keras") == "keras"
    hit = finding(report, "FILE008")
    assert hit.severity is Severity.CRITICAL and "config.json" in hit.location


def test_keras_v3_module_outside_keras(tmp_path: Path) -> None:
    fs.make_keras_v3_external_module(tmp_path / "m")
    hit = finding(scan_path(tmp_path / "m"), "FILE010")
    assert "'os'" in hit.message and hit.severity is Severity.CRITICAL


def test_keras_v3_custom_registered_object_is_high(tmp_path: Path) -> None:
    import io
    import json
    import zipfile

    layer = {"module": None, "class_name": "MyLayer", "registered_name": "mypkg>MyLayer"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("config.json", json.dumps({"class_name": "Sequential", "layers": [layer]}))
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.keras").write_bytes(buf.getvalue())
    assert finding(scan_path(d), "FILE010").severity is Severity.HIGH


def test_clean_keras_v3_passes(tmp_path: Path) -> None:
    fs.make_clean_keras_v3(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert rules_of(report, "low") == set() and report.unscanned == ()


def test_zip_member_symlink_to_etc_passwd(tmp_path: Path) -> None:
    fs.make_zip_symlink_passwd(tmp_path / "m")
    hit = finding(scan_path(tmp_path / "m"), "ARC007")
    assert "/etc/passwd" in hit.message and hit.location == "zip member weights.bin"


def test_torch_zip_member_symlink_outside(tmp_path: Path) -> None:
    fs.make_torch_zip_symlink(tmp_path / "m")
    hit = finding(scan_path(tmp_path / "m"), "ARC007")
    assert "../evil.txt" in hit.message


def test_really_encrypted_zip_is_unscanned_once_not_misread(tmp_path: Path) -> None:
    fs.make_clean_encrypted_zip(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.findings == ()  # no ARC003/ARC005 from reading the 12-byte header as data
    assert len(report.unscanned) == 1
    assert "encrypted" in report.unscanned[0].reason
    assert "not checkable" in report.unscanned[0].reason


def test_7z_members_are_scanned(tmp_path: Path) -> None:  # nullifAI
    fs.make_7z_pickle(tmp_path / "m")
    hit = finding(scan_path(tmp_path / "m"), "PKL001")
    assert hit.location.startswith("7z member archive/data.pkl")


def test_clean_7z_passes(tmp_path: Path) -> None:
    fs.make_clean_7z(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.findings == () and report.unscanned == ()
    assert report.kind_of("model.7z") == "7z"


def test_saved_model_pyfunc_in_a_library_function(tmp_path: Path) -> None:
    fs.make_savedmodel_pyfunc(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.kind_of("saved_model.pb") == "tensorflow-saved-model"
    hit = finding(report, "FILE012")
    assert "EagerPyFunc" in hit.message and "__inference_fn" in hit.location
    assert report.unscanned == ()


def test_saved_model_readfile(tmp_path: Path) -> None:
    fs.make_savedmodel_readfile(tmp_path / "m")
    assert "ReadFile" in finding(scan_path(tmp_path / "m"), "FILE012").message


def test_saved_model_keras_metadata_lambda(tmp_path: Path) -> None:  # CVE-2024-3660, Keras 2
    fs.make_savedmodel_keras_lambda(tmp_path / "m")
    hit = finding(scan_path(tmp_path / "m"), "FILE008")
    assert hit.file == "keras_metadata.pb" and hit.severity is Severity.CRITICAL


def test_clean_saved_model_is_named_not_called_broken_onnx(tmp_path: Path) -> None:
    fs.make_clean_savedmodel(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert rules_of(report, "low") == set() and report.unscanned == ()
    assert {f.kind for f in report.files} == {
        "tensorflow-saved-model",
        "tensorflow-metadata",
        "tensorflow-variables",
    }
    assert "ONNX" not in report.to_text(min_severity="info")


def test_external_data_through_a_subdirectory_dotdot_stays_inside(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    weights = np.ones((4, 4), np.float32)
    (d / "weights.bin").write_bytes(weights.tobytes())
    tensor = numpy_helper.from_array(weights, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "sub/../weights.bin", "offset": "0", "length": "64"}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [tensor],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                    d / "model.onnx")  # fmt: skip
    report = scan_path(d)
    assert report.findings == () and report.unscanned == (), report.to_text()
    assert report.kind_of("weights.bin") == "onnx-external-data"
    (d / "sub").rmdir()  # now the path cannot be opened: missing, not an escape
    assert "ONNX005" in rules_of(scan_path(d))
