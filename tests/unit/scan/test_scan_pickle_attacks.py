"""Pickle attacks: each sample is assembled opcode by opcode and only ever scanned.

Names follow the attack or CVE.  Each test asserts the rule, the severity, where it points
(byte offset, zip member) and that the verdict fails the default ``fail_on="high"``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from onnxguard.scan import ScanReport, Severity, is_pickle_file, scan_path
from onnxguard.scan._pickle_policy import is_dangerous_global, is_safe_global
from onnxguard.scan.pickles import parse_pickle
from unit.scan import attack_samples as samples
from unit.scan._helpers import finding, rules_of


def _scan(make: object, tmp_path: Path) -> ScanReport:
    make(tmp_path / "model")  # type: ignore[operator]
    report = scan_path(tmp_path / "model")
    assert report.failed("high"), report.to_text()
    return report


def test_reduce_os_system_is_critical_with_offset(tmp_path: Path) -> None:
    report = _scan(samples.make_reduce_os_system, tmp_path)
    hit = finding(report, "PKL001")
    assert hit.severity is Severity.CRITICAL
    assert hit.file == "pytorch_model.bin"
    assert "os.system" in hit.message and hit.location == "byte 2"
    assert report.kind_of("pytorch_model.bin") == "pickle"


def test_builtins_exec_is_critical(tmp_path: Path) -> None:
    assert "builtins.exec" in finding(_scan(samples.make_builtins_exec, tmp_path), "PKL001").message


def test_sleepy_pickle_injected_into_torch_zip_checkpoint(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_sleepy_pickle_torch_zip, tmp_path), "PKL001")
    assert hit.location.startswith("zip member archive/data.pkl")


def test_legacy_torch_save_payload_in_fourth_pickle(tmp_path: Path) -> None:
    report = _scan(samples.make_legacy_torch_payload, tmp_path)
    assert report.kind_of("pytorch_model.bin") == "pytorch-legacy"
    # the first three pickles (magic, protocol, sys_info) are clean; the payload is later on
    assert int(finding(report, "PKL001").location.split()[-1]) > 20


def test_cve_2025_1716_pip_main_is_not_missed_by_a_blocklist(tmp_path: Path) -> None:
    assert "pip.main" in finding(_scan(samples.make_pip_main, tmp_path), "PKL001").message


def test_importlib_import_module_getattr_chain(tmp_path: Path) -> None:
    report = _scan(samples.make_importlib_getattr_chain, tmp_path)
    messages = " ".join(f.message for f in report.findings)
    assert "importlib.import_module" in messages and "builtins.getattr" in messages
    assert finding(report, "PKL004").severity is Severity.HIGH  # calling the getattr result


def test_pkgutil_resolve_name_bypass(tmp_path: Path) -> None:
    report = _scan(samples.make_pkgutil_resolve_name, tmp_path)
    assert {"PKL001", "PKL004"} <= rules_of(report)


def test_cve_2025_10157_submodule_of_a_dangerous_module(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_asyncio_submodule, tmp_path), "PKL001")
    assert "asyncio.unix_events" in hit.message


def test_cve_2025_46417_linecache_ssl_exfiltration(tmp_path: Path) -> None:
    report = _scan(samples.make_linecache_ssl_exfiltration, tmp_path)
    subjects = {f.message.split(",")[0] for f in report.findings if f.rule_id == "PKL001"}
    assert subjects == {"imports linecache.getline", "imports ssl.get_server_certificate"}


def test_stack_global_with_memoized_names_is_resolved(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_memo_stack_global, tmp_path), "PKL001")
    assert "os.system" in hit.message


def test_stack_global_with_computed_names_is_critical(tmp_path: Path) -> None:
    report = _scan(samples.make_computed_stack_global, tmp_path)
    assert finding(report, "PKL003").severity is Severity.CRITICAL


def test_cve_2025_1889_protocol0_pickle_renamed_to_txt(tmp_path: Path) -> None:
    report = _scan(samples.make_protocol0_renamed_txt, tmp_path)
    assert report.kind_of("notes.txt") == "pickle"
    assert finding(report, "PKL001").file == "notes.txt"


def test_nullifai_payload_before_a_broken_stream(tmp_path: Path) -> None:
    report = _scan(samples.make_nullifai_broken_pickle, tmp_path)
    assert finding(report, "PKL001").severity is Severity.CRITICAL
    broken = finding(report, "PKL006")
    assert "os.system" in broken.message and "invalid opcode" in broken.message


def test_pickle_ext_opcode_extension_registry(tmp_path: Path) -> None:
    report = _scan(samples.make_ext_opcode, tmp_path)
    assert "EXT1 1" in finding(report, "PKL005").message


def test_build_on_imported_class_monkeypatch(tmp_path: Path) -> None:
    report = _scan(samples.make_build_monkeypatch, tmp_path)
    assert "collections.OrderedDict" in finding(report, "PKL008").message
    assert "os.system" in finding(report, "PKL001").message  # the value being planted


def test_protocol4_dotted_name_walks_attributes_of_an_allowed_module(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_dotted_attribute_walk, tmp_path), "PKL001")
    assert "_rebuild_tensor_v2.__globals__" in hit.message


def test_unknown_global_is_high_not_critical(tmp_path: Path) -> None:
    report = _scan(samples.make_unknown_global, tmp_path)
    assert finding(report, "PKL002").severity is Severity.HIGH
    assert report.max_severity is Severity.HIGH
    assert not report.failed("critical")


def test_truncated_pickle_without_globals_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.pkl").write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00a")
    report = scan_path(tmp_path / "m")
    assert finding(report, "PKL007").severity is Severity.HIGH  # never a pass
    assert "PKL006" not in rules_of(report)


def test_real_torch_checkpoints_only_use_safe_globals(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.AdamW(model.parameters())
    d = tmp_path / "ckpt"
    d.mkdir()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    torch.save(model.state_dict(), d / "legacy.bin", _use_new_zipfile_serialization=False)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": 3,
            "dtype": torch.bfloat16,
            "size": torch.Size([2]),
        },
        d / "training_state.pt",
    )
    report = scan_path(d)
    assert rules_of(report, "low") == set(), report.to_text()
    assert {f.rule_id for f in report.findings} == {"FILE009"}
    assert {report.kind_of(n) for n in ("pytorch_model.bin", "training_state.pt")} == {"zip"}
    assert report.kind_of("legacy.bin") == "pytorch-legacy"
    assert all(is_pickle_file(d / n) for n in ("pytorch_model.bin", "legacy.bin"))


def test_numpy_pickles_of_every_protocol_are_safe_listed(tmp_path: Path) -> None:
    import pickle

    import numpy as np

    data = {"a": np.arange(4), "b": [1, 2.5, "x", b"y", (1, 2)], "s": np.float32(1.5)}
    d = tmp_path / "np"
    d.mkdir()
    for proto in range(6):
        (d / f"p{proto}.pkl").write_bytes(pickle.dumps(data, protocol=proto))
    report = scan_path(d)
    assert rules_of(report, "low") == set(), report.to_text()
    assert all(report.kind_of(f"p{p}.pkl") == "pickle" for p in range(6))


def test_plain_text_is_not_taken_for_a_protocol0_pickle(tmp_path: Path) -> None:
    d = tmp_path / "t"
    d.mkdir()
    (d / "vocab.txt").write_text("cat\ndog\nRabbit\n(paren\n" * 50)
    (d / "merges.txt").write_text("#version: 0.2\nĠ t\nĠ a\n")
    report = scan_path(d)
    assert report.findings == () and report.unscanned == ()
    assert report.kind_of("vocab.txt") == "text"
    assert not is_pickle_file(d / "vocab.txt")


def test_parser_handles_every_opcode_of_pickletools() -> None:
    import pickle

    class Node:
        pass

    obj = [frozenset({1}), {2}, bytearray(b"x"), 1 << 70, -3, 2.5, None, True, ("t",) * 3]
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(obj, protocol=proto)
        result = parse_pickle(io.BytesIO(data), len(data), problems=_problems())
        assert result.complete, (proto, result.error)
    assert Node  # a local class is never pickled: nothing here defines __reduce__


def _problems() -> object:
    from onnxguard.scan.pickles import _Problems

    return _Problems()


def test_policy_lists() -> None:
    assert is_safe_global("torch._utils", "_rebuild_tensor_v2")
    assert is_safe_global("collections", "OrderedDict")
    assert not is_safe_global("collections", "OrderedDict.__init__")
    assert is_dangerous_global("os", "system")
    assert is_dangerous_global("subprocess.foo", "bar")
    assert is_dangerous_global("torch", "load")
    assert is_dangerous_global("torch.hub", "load")
    assert is_dangerous_global("builtins", "eval")
    assert not is_dangerous_global("argparse", "Namespace")
