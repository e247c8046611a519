"""``onnxguard scan PATH``: the scanner on the command line.

Exit codes come from the one table (``errors.EXIT_CODES``): 0 clean, 6 (security) when a
finding is at or above ``--fail-on`` or something could not be scanned (never a silent pass;
the report says which), 2 when the path does not exist.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from onnxguard._files import REPORT_MODE, atomic_write
from onnxguard.errors import SecurityError
from onnxguard.scan import Severity
from onnxguard.scan._context import ScanConfig
from onnxguard.scan.report import ScanReport

EXIT_CLEAN = 0
EXIT_SECURITY = SecurityError.exit_code


class OutputFormat(StrEnum):
    text = "text"
    json = "json"
    sarif = "sarif"


def scan_command(
    path: Annotated[Path, typer.Argument(
        metavar="PATH", help="Model directory (scanned recursively) or one file.")],
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", "-f", help="Report format (SARIF 2.1.0 for code scanning).")
    ] = OutputFormat.text,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Machine-readable JSON on stdout (the same as --format json).")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE",
        help="Write the report to this file instead of stdout.")] = None,
    fail_on: Annotated[Severity, typer.Option(
        "--fail-on", envvar="ONNXGUARD_SCAN_FAIL_ON",
        help="Exit 6 when a finding is at or above this severity.")] = Severity.HIGH,
    show_info: Annotated[bool, typer.Option(
        "--show-info", help="List info findings in text.")] = False,
    max_tensor_elements: Annotated[int, typer.Option(
        min=1, help="ONNX: most elements a tensor may hold.")] = ScanConfig.max_tensor_elements,
    max_loop_trip_count: Annotated[int, typer.Option(
        min=1, help="ONNX: most iterations a Loop may declare.")] = ScanConfig.max_loop_trip_count,
    max_nesting_depth: Annotated[int, typer.Option(
        min=1, help="ONNX: deepest subgraph nesting.")] = ScanConfig.max_nesting_depth,
    allow_symlink_root: Annotated[list[Path], typer.Option(
        "--allow-symlink-root", metavar="DIR",
        help="Follow links into this directory (e.g. a Hugging Face cache's blobs/).")
    ] = [],  # noqa: B006 (typer copies the default)
) -> None:
    """Scan a model directory or file for supply-chain attacks; exit 0 clean, 6 not clean.

    Exit 6 also when something could not be scanned (never a silent pass); exit 7 when PATH is
    a bundle and a file does not match its manifest hash.  Checks pickles for
    code execution, safetensors headers that lie, remote code in configs, archives, and ONNX
    graphs for external-data escapes, custom ops, resource exhaustion and backdoor triggers.
    Every file is identified by content; nothing is loaded or run.
    """
    from onnxguard.scan.scanner import scan_path

    config = ScanConfig(
        fail_on=Severity(fail_on.value),
        max_tensor_elements=max_tensor_elements,
        max_loop_trip_count=max_loop_trip_count,
        max_nesting_depth=max_nesting_depth,
        allowed_symlink_roots=tuple(allow_symlink_root),
    )
    report = scan_path(path, config)
    rendered = render(report, OutputFormat.json if as_json else output_format,
                      show_info=show_info)
    if output is None:
        typer.echo(rendered, nl=not rendered.endswith("\n"))
    else:
        atomic_write(output, rendered, mode=REPORT_MODE)
        typer.echo(
            report.to_text(min_severity=Severity.CRITICAL).splitlines()[-1]
            + f" — report written to {output}"
        )
    _check_bundle_hashes(path)
    raise typer.Exit(exit_code(report, fail_on.value))


def _check_bundle_hashes(path: Path) -> None:
    """A bundle is also checked against its manifest: a changed byte is an integrity error
    (exit 7) even where the changed file still scans clean."""
    from onnxguard.bundle import MANIFEST_NAME, verify_bundle_files

    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        verify_bundle_files(path)


def render(report: ScanReport, output_format: OutputFormat, *, show_info: bool = False) -> str:
    if output_format is OutputFormat.json:
        return report.to_json() + "\n"
    if output_format is OutputFormat.sarif:
        return report.to_sarif() + "\n"
    return report.to_text(min_severity=Severity.INFO if show_info else Severity.LOW)


def exit_code(report: ScanReport, fail_on: str) -> int:
    """0 clean; 6 for findings at or above ``fail_on`` or anything left unscanned."""
    if report.at_or_above(fail_on) or report.unscanned:
        return EXIT_SECURITY
    return EXIT_CLEAN


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_command)
