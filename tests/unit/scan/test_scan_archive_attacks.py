"""Container attacks: ZIP tricks that broke other scanners, tar traversal, formats we cannot
open (reported as unscanned, never passed), pickles hidden in numpy/gzip, Keras Lambda layers."""

from __future__ import annotations

from pathlib import Path

from onnxguard.scan import ScanReport, Severity, scan_path
from unit.scan import attack_samples as samples
from unit.scan._helpers import finding, rules_of


def _scan(make: object, tmp_path: Path) -> ScanReport:
    make(tmp_path / "model")  # type: ignore[operator]
    return scan_path(tmp_path / "model")


def test_cve_2025_1944_zip_local_header_name_differs_from_central_directory(
    tmp_path: Path,
) -> None:
    report = _scan(samples.make_zip_name_mismatch, tmp_path)
    assert "archive/data.pkX" in finding(report, "ARC003").message
    # the payload is still found: the member is read from its local header like PyTorch does
    assert finding(report, "PKL001").location.startswith("zip member archive/data.pkl")
    assert report.unscanned == ()


def test_cve_2025_1945_zip_member_flagged_encrypted(tmp_path: Path) -> None:
    report = _scan(samples.make_zip_encrypted_flag, tmp_path)
    assert {"ARC004", "PKL001"} <= rules_of(report)


def test_cve_2025_10156_zip_member_with_bad_crc(tmp_path: Path) -> None:
    report = _scan(samples.make_zip_bad_crc, tmp_path)
    assert finding(report, "ARC005").severity is Severity.MEDIUM
    assert "PKL001" in rules_of(report)


def test_pickle_hidden_in_a_zip_member_not_named_pkl(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_pickle_in_unexpected_member, tmp_path), "PKL001")
    assert hit.location.startswith("zip member archive/extra/blob.bin")


def test_nullifai_broken_7z_checkpoint_is_malformed_and_unscanned(tmp_path: Path) -> None:
    report = _scan(samples.make_nullifai_7z, tmp_path)
    hit = finding(report, "ARC008")  # 7z magic, but not a 7z archive py7zr can read
    assert hit.severity is Severity.HIGH and "corrupt 7z" in hit.message
    assert [u.file for u in report.unscanned] == ["pytorch_model.bin"]
    assert "7z" in report.unscanned[0].reason
    assert report.failed("critical")  # unscanned fails whatever the threshold


def test_corrupt_zip_gzip_and_tar_are_malformed(tmp_path: Path) -> None:
    import gzip

    d = tmp_path / "m"
    d.mkdir()
    zipped = samples._torch_zip(samples._checkpoint_entries(samples._state_dict_pickle()))
    (d / "pytorch_model.bin").write_bytes(zipped[: len(zipped) // 2])  # central directory gone
    (d / "model.joblib").write_bytes(gzip.compress(b"x" * 1000)[:-12])
    report = scan_path(d)
    assert {f.file for f in report.findings if f.rule_id == "ARC008"} == {
        "pytorch_model.bin",
        "model.joblib",
    }


def test_cve_2019_6446_numpy_object_array_pickle(tmp_path: Path) -> None:
    report = _scan(samples.make_numpy_object_array, tmp_path)
    assert finding(report, "PKL001").location.startswith("numpy object array")
    assert report.kind_of("embeddings.npy") == "numpy"


def test_gzip_compressed_joblib_pickle(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_gzip_joblib_pickle, tmp_path), "PKL001")
    assert hit.location.startswith("gzip content")


def test_cve_2007_4559_tar_path_traversal_and_link_members(tmp_path: Path) -> None:
    report = _scan(samples.make_tar_path_traversal, tmp_path)
    assert "../../../home/user/.bashrc" in finding(report, "ARC001").message
    assert "/etc/shadow" in finding(report, "ARC007").message
    assert "PKL001" in rules_of(report)  # the traversing member is itself a payload


def test_zip_slip_member_name(tmp_path: Path) -> None:
    assert (
        "../../evil/data.pkl" in finding(_scan(samples.make_zip_slip, tmp_path), "ARC001").message
    )


def test_zip_with_duplicate_member_names(tmp_path: Path) -> None:
    import warnings
    import zipfile

    d = tmp_path / "m"
    d.mkdir()
    with zipfile.ZipFile(d / "weights.zip", "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate, as it should
        zf.writestr("archive/data.pkl", samples._state_dict_pickle())
        zf.writestr("archive/data.pkl", samples.payload_pickle())
    report = scan_path(d)
    assert "2 members" in finding(report, "ARC002").message
    assert "PKL001" in rules_of(report)  # both copies are scanned, not just the last one


def test_nested_archives_beyond_the_depth_limit_are_unscanned(tmp_path: Path) -> None:
    import gzip

    data = samples.payload_pickle()
    for _ in range(5):
        data = gzip.compress(data)
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.gz").write_bytes(data)
    report = scan_path(d)
    assert report.unscanned and "nested deeper" in report.unscanned[0].reason


def test_gzip_bomb_is_bounded(tmp_path: Path) -> None:
    import gzip

    from onnxguard.scan import ScanConfig

    d = tmp_path / "m"
    d.mkdir()
    (d / "bomb.gz").write_bytes(gzip.compress(b"\x00" * (8 << 20)))
    report = scan_path(d, ScanConfig(max_nested_bytes=1 << 20))
    assert report.unscanned and "inflates beyond" in report.unscanned[0].reason


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    report = _scan(samples.make_torchscript_archive, tmp_path)
    assert "TorchScript" in finding(report, "PKL009").message


def test_cve_2024_3660_keras_lambda_layer_in_hdf5(tmp_path: Path) -> None:
    report = _scan(samples.make_keras_lambda_h5, tmp_path)
    assert finding(report, "FILE008").severity is Severity.CRITICAL
    assert report.kind_of("tf_model.h5") == "hdf5"


def test_hdf5_without_lambda_is_only_info(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 4096)
    report = scan_path(d)
    assert rules_of(report, "low") == set() and "FILE007" in rules_of(report, "info")


def test_benign_npz_and_npy_scan_clean(tmp_path: Path) -> None:
    import numpy as np

    d = tmp_path / "m"
    d.mkdir()
    np.save(d / "a.npy", np.ones((3, 3), dtype=np.float32))
    np.savez_compressed(d / "b.npz", x=np.ones(3), y=np.zeros((2, 2)))
    report = scan_path(d)
    assert report.findings == () and report.unscanned == ()
    assert report.kind_of("b.npz") == "zip"


def test_tensor_storages_that_look_like_other_formats_are_data(tmp_path: Path) -> None:
    """Raw storage bytes in a PyTorch zip can start like a safetensors header, a PROTO
    opcode, gzip or a pyc by chance; none of that may produce a finding or an unscanned file."""
    import struct

    lookalikes = {
        "archive/data/0": struct.pack("<Q", 0xFFEEDDCCBBAA) + b"{" + b"\x00" * 55,
        "archive/data/1": b"\x80\x02\xff\xfe" + b"\x13" * 60,
        "archive/data/2": b"\x1f\x8b\x08\x00" + b"\x00" * 60,
        "archive/data/3": b"\xa7\x0d\r\n" + b"\x00" * 60,
        "archive/data/4": b"\x08\x07\x12\x03abc" + b"\x00" * 57,
    }
    d = tmp_path / "m"
    entries = samples._checkpoint_entries(samples._state_dict_pickle()) | lookalikes
    samples._write(d, "pytorch_model.bin", samples._torch_zip(entries))
    report = scan_path(d)
    assert rules_of(report, "low") == set(), report.to_text()
    assert report.unscanned == ()


def test_many_random_storages_scan_clean(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(1234)
    storages = {f"archive/data/{i}": rng.bytes(int(rng.integers(8, 4096))) for i in range(3000)}
    d = tmp_path / "m"
    entries = samples._checkpoint_entries(samples._state_dict_pickle()) | storages
    samples._write(d, "pytorch_model.bin", samples._torch_zip(entries))
    report = scan_path(d)
    assert rules_of(report, "low") == set() and report.unscanned == (), report.to_text()
