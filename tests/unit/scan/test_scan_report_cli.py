"""Reports and the command line: JSON, SARIF 2.1.0, text, exit codes, enforce(), summary()."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onnxguard.errors import ScanFindingsError, ScanIncompleteError
from onnxguard.scan import RULES, ScanReport, Severity, enforce, scan_path
from unit.scan import attack_samples as samples

SARIF_LEVELS = {"none", "note", "warning", "error"}


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A directory with a critical pickle, a medium finding, a clean file and an unknown blob."""
    d = tmp_path / "mixed"
    samples.make_reduce_os_system(d)
    samples.make_onnx_external_unknown_key(d)
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "blob.dat").write_bytes(b"\x01\x02\x03" * 40)
    return d


def test_report_orders_findings_and_summarizes(mixed: Path) -> None:
    report = scan_path(mixed)
    assert [f.severity for f in report.findings] == sorted(
        (f.severity for f in report.findings), key=lambda s: -s.rank
    )
    assert report.max_severity is Severity.CRITICAL
    summary = report.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["findings"]["critical"] == 1 and summary["findings"]["medium"] == 1
    assert summary["unscanned"] == 1 and summary["files_scanned"] == 4
    assert summary["rules"] == ["ONNX007", "PKL001"]
    assert report.failed("critical") and report.failed("info")


def test_clean_report_does_not_fail(tmp_path: Path) -> None:
    d = tmp_path / "clean"
    d.mkdir()
    (d / "config.json").write_text("{}")
    report = scan_path(d)
    assert not report.failed("info") and report.max_severity is None
    enforce(report, Severity.INFO)  # no exception


def test_enforce_raises_findings_error_with_top_findings_and_hint(mixed: Path) -> None:
    with pytest.raises(ScanFindingsError) as info:
        enforce(scan_path(mixed), Severity.HIGH)
    err = info.value
    assert "PKL001" in err.message and "os.system" in err.message
    assert "1 file(s) could not be scanned" in err.message
    assert err.hint and "onnxguard scan" in err.hint
    assert err.exit_code == 6 and err.to_dict()["summary"]["findings"]["critical"] == 1


def test_enforce_raises_incomplete_when_only_unscanned(tmp_path: Path) -> None:
    samples.make_unknown_binary(tmp_path / "m")
    with pytest.raises(ScanIncompleteError) as info:
        enforce(scan_path(tmp_path / "m"), Severity.CRITICAL)
    assert "weights.dat" in info.value.message and info.value.hint


def test_enforce_threshold_lets_lower_findings_through(tmp_path: Path) -> None:
    samples.make_onnx_external_unknown_key(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    enforce(report, Severity.HIGH)
    with pytest.raises(ScanFindingsError):
        enforce(report, Severity.MEDIUM)


def test_json_report_round_trips(mixed: Path) -> None:
    data = json.loads(scan_path(mixed).to_json())
    assert data["tool"] == "onnxguard-scan"
    assert {f["rule_id"] for f in data["findings"]} >= {"PKL001", "ONNX007"}
    first = data["findings"][0]
    assert set(first) == {"rule_id", "rule", "severity", "file", "location", "message", "hint"}
    assert data["unscanned"] == [{"file": "blob.dat", "reason": data["unscanned"][0]["reason"]}]


def test_sarif_2_1_0_structure(mixed: Path) -> None:
    report = scan_path(mixed)
    sarif = json.loads(report.to_sarif())
    assert sarif["version"] == "2.1.0" and sarif["$schema"].endswith("sarif-2.1.0.json")
    (run,) = sarif["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    for rule in rules:
        assert rule["defaultConfiguration"]["level"] in SARIF_LEVELS
        assert float(rule["properties"]["security-severity"]) >= 0
        assert rule["shortDescription"]["text"] and rule["help"]["text"]
    assert len(run["results"]) == len(report.findings)
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in SARIF_LEVELS and result["message"]["text"]
        location = result["locations"][0]["physicalLocation"]["artifactLocation"]
        assert location["uriBaseId"] == "SCANROOT" and not location["uri"].startswith("/")
    assert run["originalUriBaseIds"]["SCANROOT"]["uri"].startswith("file:///")
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is False
    notes = invocation["toolExecutionNotifications"]
    assert notes[0]["level"] == "error" and "blob.dat" in json.dumps(notes[0]["locations"])


def test_text_report_hides_info_unless_asked(tmp_path: Path) -> None:
    d = tmp_path / "t"
    samples._write(d, "model.pkl", samples._state_dict_pickle())
    report = scan_path(d)
    assert "FILE009" not in report.to_text()
    assert "FILE009" in report.to_text(min_severity="info")
    assert "1 info" in report.to_text()


def test_findings_per_rule_are_capped_and_the_count_is_the_listed_problems(
    tmp_path: Path,
) -> None:
    body = b"".join(samples.glob(f"pkg{i}", "Thing") + b"0" for i in range(80))
    d = tmp_path / "m"
    samples._write(d, "model.pkl", b"\x80\x02" + body + b"N.")
    report = scan_path(d)
    pkl002 = [f for f in report.findings if f.rule_id == "PKL002"]
    assert len(pkl002) == 50
    assert sum("30 more finding(s)" in f.message for f in pkl002) == 1
    assert report.summary()["findings"]["high"] == 50  # no extra "N more" finding counted


def test_truncated_safetensors_is_one_finding_per_cause(tmp_path: Path) -> None:
    header = {
        f"t{i:02d}": {"dtype": "F32", "shape": [2], "data_offsets": [8 * i, 8 * i + 8]}
        for i in range(60)
    }
    d = tmp_path / "m"
    samples._write(d, "model.safetensors", samples.safetensors_bytes(header, b"\x00" * 100))
    report = scan_path(d)
    assert [f.rule_id for f in report.findings] == ["SFT006"]
    (only,) = report.findings
    assert only.message.startswith("48 tensors: ") and "t13" in only.message
    assert "and 44 more" in only.message


# --- CLI -----------------------------------------------------------------------------------------
def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxguard", "scan", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_exit_codes_in_a_real_process(tmp_path: Path, mixed: Path) -> None:
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "config.json").write_text("{}")
    only_unscanned = tmp_path / "unscanned"
    samples.make_unknown_binary(only_unscanned)
    assert _run(str(clean)).returncode == 0
    findings = _run(str(mixed))
    assert findings.returncode == 6 and "PKL001" in findings.stdout  # 6: security (1 = a bug)
    assert _run(str(only_unscanned)).returncode == 6
    missing = _run(str(tmp_path / "does-not-exist"))
    assert missing.returncode == 2
    assert "does-not-exist" in missing.stderr and "hint:" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_cli_fail_on_threshold(tmp_path: Path) -> None:
    from onnxguard.cli import app

    samples.make_onnx_external_unknown_key(tmp_path / "m")
    runner = CliRunner()
    assert runner.invoke(app, ["scan", str(tmp_path / "m")]).exit_code == 0
    assert runner.invoke(app, ["scan", str(tmp_path / "m"), "--fail-on", "medium"]).exit_code == 6
    bad = runner.invoke(app, ["scan", str(tmp_path / "m"), "--fail-on", "severe"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("fmt", ["json", "sarif", "text"])
def test_cli_formats_and_output_file(mixed: Path, tmp_path: Path, fmt: str) -> None:
    from onnxguard.cli import app

    out = tmp_path / "reports" / f"scan.{fmt}"
    result = CliRunner().invoke(app, ["scan", str(mixed), "--format", fmt, "--output", str(out)])
    assert result.exit_code == 6, result.output
    assert f"report written to {out}" in result.output
    text = out.read_text()
    if fmt == "text":
        assert "CRITICAL PKL001" in text
    else:
        data = json.loads(text)
        assert ("runs" in data) == (fmt == "sarif")
    stdout = CliRunner().invoke(app, ["scan", str(mixed), "-f", fmt]).output
    assert ("PKL001" in stdout) and (fmt != "json" or json.loads(stdout)["findings"])


def test_cli_scans_a_single_file(tmp_path: Path) -> None:
    from onnxguard.cli import app

    path = samples.make_reduce_os_system(tmp_path / "m")
    result = CliRunner().invoke(app, ["scan", str(path), "-f", "json"])
    data = json.loads(result.output)
    assert result.exit_code == 6 and data["findings"][0]["file"] == "pytorch_model.bin"
    assert data["summary"]["files_scanned"] == 1


def test_cli_json_flag_is_the_json_report(mixed: Path) -> None:
    from onnxguard.cli import app

    result = CliRunner().invoke(app, ["scan", str(mixed), "--json"])
    assert result.exit_code == 6 and json.loads(result.output)["findings"]


def test_scan_report_is_immutable(mixed: Path) -> None:
    import dataclasses

    report = scan_path(mixed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.root = "x"  # type: ignore[misc]
    assert isinstance(report, ScanReport) and isinstance(report.findings, tuple)
