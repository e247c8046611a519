"""ONNX attacks: every sample is a graph built with onnx.helper (or a real tiny export with a
backdoor spliced in) and is only parsed, never run."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from onnxguard.scan import ScanConfig, ScanReport, Severity, scan_path
from unit.scan import onnx_samples as samples
from unit.scan._helpers import finding, rules_of


def _scan(make: object, tmp_path: Path, config: ScanConfig | None = None) -> ScanReport:
    make(tmp_path / "model")  # type: ignore[operator]
    report = scan_path(tmp_path / "model", config)
    assert report.kind_of("model.onnx") == "onnx", report.to_text()
    return report


def test_cve_2022_25882_external_data_path_traversal(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_external_traversal, tmp_path), "ONNX002")
    assert hit.severity is Severity.CRITICAL
    assert "initializer 'w'" in hit.location and "../../../../etc/passwd" in hit.message


def test_external_data_absolute_location(tmp_path: Path) -> None:
    report = _scan(samples.make_onnx_external_absolute, tmp_path)
    assert "'/etc/passwd' is absolute" in finding(report, "ONNX001").message
    assert "ONNX032" not in rules_of(report)  # the checker is not run on escaping locations


def test_cve_2024_27318_external_data_through_a_symlink(tmp_path: Path) -> None:
    report = _scan(samples.make_onnx_external_symlink, tmp_path)
    assert "/etc/passwd" in finding(report, "ONNX003").message
    assert "FILE001" in rules_of(report)  # and the link itself is reported, not followed


def test_external_data_hardlink_to_a_file_outside(tmp_path: Path) -> None:
    report = _scan(samples.make_onnx_external_hardlink, tmp_path)
    assert "2 hard links" in finding(report, "ONNX004").message


def test_external_data_offset_beyond_the_file(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_external_out_of_range, tmp_path), "ONNX006")
    assert "which has 16" in hit.message


def test_external_data_unknown_key(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_external_unknown_key, tmp_path), "ONNX007")
    assert "basepath" in hit.message and hit.severity is Severity.MEDIUM


def test_ort_memory_address_tag_in_external_data(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_ort_mem_addr, tmp_path), "ONNX008")
    assert hit.severity is Severity.CRITICAL and "2147418112" in hit.message


def test_custom_op_domain_needs_native_code(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_custom_op_domain, tmp_path), "ONNX010")
    assert "ai.evil.customops::Exec" in hit.message and "node 'evil'" in hit.location


def test_ep_context_node_is_flagged(tmp_path: Path) -> None:
    assert "EPContext" in finding(_scan(samples.make_onnx_ep_context, tmp_path), "ONNX013").message


def test_aten_fallback_runs_host_code(tmp_path: Path) -> None:
    assert "ATen" in finding(_scan(samples.make_onnx_aten_fallback, tmp_path), "ONNX014").message


def test_tensor_with_two_data_fields_reads_differently(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_tensor_two_fields, tmp_path), "ONNX020")
    assert "float_data, raw_data" in hit.message


def test_tensor_dims_disagree_with_data(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_tensor_dims_mismatch, tmp_path), "ONNX021")
    assert "need 16 bytes, raw_data holds 8" in hit.message


def test_constant_of_shape_memory_bomb(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_constant_of_shape_bomb, tmp_path), "ONNX024")
    assert "node 'bomb'" in hit.location and "10,000,000,000,000" in hit.message


def test_expand_bomb_through_shape_data_propagation(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_expand_bomb, tmp_path), "ONNX024")
    assert "node 'bomb'" in hit.location


def test_range_and_tile_bombs(tmp_path: Path) -> None:
    report = _scan(samples.make_onnx_range_tile_bomb, tmp_path)
    flagged = {f.location for f in report.findings if f.rule_id == "ONNX024"}
    assert any("range_bomb" in loc for loc in flagged), report.to_text()
    assert any("tile_bomb" in loc for loc in flagged), report.to_text()


def test_loop_trip_count_cpu_bomb(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_loop_trip_count, tmp_path), "ONNX025")
    assert "1,000,000,000,000" in hit.message


def test_loop_that_never_terminates(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_infinite_loop, tmp_path), "ONNX025")
    assert "never terminates" in hit.message


def test_subgraph_nesting_depth(tmp_path: Path) -> None:
    report = _scan(samples.make_onnx_nesting_depth, tmp_path, ScanConfig(max_nesting_depth=8))
    assert "deeper than the limit of 8" in finding(report, "ONNX027").message
    relaxed = scan_path(tmp_path / "model", ScanConfig(max_nesting_depth=16))
    assert "ONNX027" not in rules_of(relaxed)


def test_recursive_model_local_functions(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_recursive_functions, tmp_path), "ONNX028")
    assert "local::f -> local::g -> local::f" in hit.message


def test_ort_config_metadata_changes_runtime_behaviour(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_onnx_ort_config_metadata, tmp_path), "ONNX030")
    assert "enable_profiling" in hit.message


def test_invalid_graph_fails_the_onnx_checker(tmp_path: Path) -> None:
    assert "ONNX032" in rules_of(_scan(samples.make_onnx_invalid_graph, tmp_path))


def test_shadowlogic_where_backdoor_on_a_small_classifier(tmp_path: Path) -> None:
    hit = finding(_scan(samples.make_shadowlogic_where, tmp_path), "ONNX031")
    assert hit.severity is Severity.MEDIUM
    assert "'input_ids'" in hit.message and "trigger_compare" in hit.message
    assert "'trigger_id' = [77]" in hit.message
    assert "backdoor_select" in hit.location


@pytest.mark.parametrize("branch", ["Where", "If"])
def test_shadowlogic_backdoor_spliced_into_a_real_bert_export(
    tmp_path: Path, onnx_artifacts: Callable[[str], Path], branch: str
) -> None:
    import onnx

    base = onnx_artifacts("bert") / "model.fp32.onnx"
    clean = scan_path(base)
    assert "ONNX031" not in rules_of(clean, "info")
    model = onnx.load(str(base))
    samples.add_shadowlogic_backdoor(model, branch=branch, trigger=42)
    d = tmp_path / "m"
    d.mkdir()
    onnx.save(model, str(d / "model.onnx"))
    report = scan_path(d)
    hits = [f for f in report.findings if f.rule_id == "ONNX031"]
    assert len(hits) == 1, report.to_text()  # the attention-mask Where is not flagged
    assert f"({branch})" in hits[0].location


def test_over_limit_tensor_and_node_counts(tmp_path: Path) -> None:
    samples.make_onnx_tensor_two_fields(tmp_path / "m")  # any small model
    config = ScanConfig(max_tensor_elements=2, max_nodes=0, max_total_bytes=8)
    report = scan_path(tmp_path / "m", config)
    assert {"ONNX022", "ONNX029"} <= rules_of(report)


def test_unparseable_onnx_is_unscanned(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"\x08\x07\x12\xff\xff\xff\xff\x0f" + b"\x00" * 32)
    report = scan_path(d)
    assert [u.file for u in report.unscanned] == ["model.onnx"]


def test_onnx_file_scanned_alone_resolves_external_data_next_to_it(
    dynamo_artifacts: Callable[[str], Path], tmp_path: Path
) -> None:
    src = dynamo_artifacts("bert")
    shutil.copytree(src, tmp_path / "m")
    assert (tmp_path / "m" / "model.onnx.data").exists()
    report = scan_path(tmp_path / "m" / "model.onnx")
    assert rules_of(report, "medium") == set(), report.to_text()
    (tmp_path / "m" / "model.onnx.data").unlink()
    assert "ONNX005" in rules_of(scan_path(tmp_path / "m" / "model.onnx"))


@pytest.mark.parametrize("prefix", [b"\x08\x07\x12\x01", b"\x80\x02\x8a\x01", b"\x1a\x00\x00\x00"])
def test_external_weights_that_happen_to_look_like_protobuf_or_pickle_are_data(
    tmp_path: Path, prefix: bytes
) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "weights.bin").write_bytes(prefix + b"\x00" * 12)  # 4 float32 weights
    samples._save(d, samples._onnx_model(initializers=[samples._external("weights.bin")]))
    report = scan_path(d)
    assert report.findings == () and report.unscanned == (), report.to_text()
    assert report.kind_of("weights.bin") == "onnx-external-data"


def test_external_data_file_that_is_a_real_pickle_is_still_scanned(tmp_path: Path) -> None:
    from unit.scan.attack_samples import payload_pickle

    d = tmp_path / "m"
    d.mkdir()
    data = payload_pickle()
    (d / "pytorch_model.bin").write_bytes(data)
    tensor = samples._external("pytorch_model.bin", length=len(data) - len(data) % 4)
    tensor.dims[:] = [(len(data) - len(data) % 4) // 4]
    samples._save(d, samples._onnx_model(initializers=[tensor]))
    assert "PKL001" in rules_of(scan_path(d))  # referencing a pickle does not hide it
