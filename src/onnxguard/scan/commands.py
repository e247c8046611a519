"""``onnxguard scan PATH``: the scanner on the command line.

Exit codes (the convention of scanners in CI, not the build's error codes): 0 clean, 1 findings
at or above ``--fail-on``, 2 something could not be scanned or the path is unusable.  Findings
win over unscanned files: a known-bad model exits 1 even when another file was unreadable.
"""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from pathlib import Path

import typer

from onnxguard.scan._context import ScanConfig
from onnxguard.scan._rules import Severity
from onnxguard.scan.report import ScanReport
from onnxguard.scan.scanner import scan_path

EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNSCANNED = 0, 1, 2


class OutputFormat(StrEnum):
    text = "text"
    json = "json"
    sarif = "sarif"


class FailOn(StrEnum):
    critical = "critical"
    high = "high"
    medium = "medium"
    low = "low"
    info = "info"


def scan_command(
    path: Path = typer.Argument(..., help="Model directory (scanned recursively) or one file."),
    output_format: OutputFormat = typer.Option(
        OutputFormat.text, "--format", "-f", help="Report format: text, json or sarif (2.1.0)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write the report to this file instead of stdout."
    ),
    fail_on: FailOn = typer.Option(
        FailOn.high,
        "--fail-on",
        envvar="ONNXGUARD_SCAN_FAIL_ON",
        help="Exit 1 when a finding is at or above this severity.",
    ),
    show_info: bool = typer.Option(False, "--show-info", help="List info findings in text."),
    max_tensor_elements: int = typer.Option(
        ScanConfig.max_tensor_elements, min=1, help="ONNX: most elements a tensor may hold."
    ),
    max_loop_trip_count: int = typer.Option(
        ScanConfig.max_loop_trip_count, min=1, help="ONNX: most iterations a Loop may declare."
    ),
    max_nesting_depth: int = typer.Option(
        ScanConfig.max_nesting_depth, min=1, help="ONNX: deepest subgraph nesting."
    ),
    allow_symlink_root: list[Path] = typer.Option(
        [],
        "--allow-symlink-root",
        help="Follow links into this directory (e.g. a Hugging Face cache's blobs/).",
    ),
) -> None:
    """Scan a model directory or file for supply-chain attacks; exit 0 clean, 1 findings.

    Exit 2 when something could not be scanned (never a silent pass).  Checks pickles for
    code execution, safetensors headers that lie, remote code in configs, archives, and ONNX
    graphs for external-data escapes, custom ops, resource exhaustion and backdoor triggers.
    Every file is identified by content; nothing is loaded or run.
    """
    config = ScanConfig(
        fail_on=Severity(fail_on.value),
        max_tensor_elements=max_tensor_elements,
        max_loop_trip_count=max_loop_trip_count,
        max_nesting_depth=max_nesting_depth,
        allowed_symlink_roots=tuple(allow_symlink_root),
    )
    report = scan_path(path, config)
    rendered = render(report, output_format, show_info=show_info)
    if output is None:
        typer.echo(rendered, nl=not rendered.endswith("\n"))
    else:
        _write_atomic(output, rendered)
        typer.echo(
            report.to_text(min_severity=Severity.CRITICAL).splitlines()[-1]
            + f" — report written to {output}"
        )
    raise typer.Exit(exit_code(report, fail_on.value))


def render(report: ScanReport, output_format: OutputFormat, *, show_info: bool = False) -> str:
    if output_format is OutputFormat.json:
        return report.to_json() + "\n"
    if output_format is OutputFormat.sarif:
        return report.to_sarif() + "\n"
    return report.to_text(min_severity=Severity.INFO if show_info else Severity.LOW)


def exit_code(report: ScanReport, fail_on: str) -> int:
    if report.at_or_above(fail_on):
        return EXIT_FINDINGS
    if report.unscanned:
        return EXIT_UNSCANNED
    return EXIT_CLEAN


def _write_atomic(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_command)
