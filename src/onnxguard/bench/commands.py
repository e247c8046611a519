"""``onnxguard bench``: your model on your machine (the graph a bundle ships), where time goes."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console

from onnxguard.bench.harness import BenchConfig
from onnxguard.convert.quantize import DYNAMIC_CANDIDATES, STATIC_CANDIDATES

_CANDIDATES = tuple(c.name for c in (*DYNAMIC_CANDIDATES, *STATIC_CANDIDATES))


def bench_command(
    target: str | None = typer.Argument(
        None, metavar="SOURCE_OR_BUNDLE",
        help="Model directory, pkg:PACKAGE or Hub id (exported, fused and quantized here with "
        "the build's own stages), or a bundle directory (its model.onnx / model.fp32.onnx, "
        "with PyTorch from the manifest's source when it is on this machine). Default: the "
        "embedded sentence-transformers/all-MiniLM-L6-v2."),
    data: Path | None = typer.Option(
        None, "--data", help="label<TAB>text TSV (accuracy, F1, agreement) or one text per "
        "line (latency and agreement only). Default: the built-in validation sentences."),
    batch: str = typer.Option("1,8", "--batch", help="Batch sizes, comma-separated."),
    seq: str = typer.Option(
        "128,dynamic", "--seq", help="Input modes: a token count (every batch padded to it, "
        "the seed's setting) and/or 'dynamic' (real text: dynamic padding, length-sorted "
        "batches)."),
    rounds: int = typer.Option(5, "--rounds", help="Measured rounds (interleaved)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed warm-up rounds."),
    sample: int = typer.Option(
        96, "--sample", help="Texts per latency round, evenly spaced over the data "
        "(0: all). Accuracy always uses every text."),
    threads: int | None = typer.Option(
        None, "--threads", help="Intra-op threads for every engine (default: available cores)."),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="Text file (one input per line): adds static int8 (QDQ)."),
    int8: str = typer.Option(
        "dynamic-int8", "--int8", help="int8 candidates to build from a SOURCE, "
        f"comma-separated: {', '.join(_CANDIDATES)} (the default is the fastest; a bundle "
        "brings the one its build chose)."),
    engines: str | None = typer.Option(
        None, "--engines", help="Only these engines, comma-separated (pytorch, ort-fp32, "
        "ort-fp32-opt, ort-int8-dynamic, ort-int8-static)."),
    task: str | None = typer.Option(None, "--task", help="Override the detected task."),
    torch_attention: str = typer.Option(
        "sdpa", "--torch-attention", help="PyTorch baseline attention: sdpa (transformers' "
        "default) or eager."),
    layernorm: str = typer.Option(
        "fused", "--layernorm", help="fused: the graphs as the build makes them. unfused: split "
        "SkipLayerNormalization into Add + LayerNormalization and keep ONNX Runtime from "
        "re-fusing it (its CPU kernel is scalar; measures the proposed fix)."),
    profile: bool = typer.Option(
        False, "--profile", help="Also run ONNX Runtime's profiler: time per operator type."),
    no_accuracy: bool = typer.Option(
        False, "--no-accuracy", help="Skip the full-data accuracy passes."),
    json_out: Path | None = typer.Option(None, "--json", help="Write every figure as JSON."),
    report_out: Path | None = typer.Option(
        None, "--report", help="Write a self-contained HTML page with charts."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write Markdown."),
) -> None:
    """Benchmark PyTorch vs ONNX Runtime fp32 / optimized / int8 in one interleaved run."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from onnxguard.bench import report
    from onnxguard.bench._data import parse_batches, parse_seqs
    from onnxguard.bench.harness import run_bench
    from onnxguard.runtime import available_cores

    config = BenchConfig(
        target=target, data=data, batches=parse_batches(batch), seqs=parse_seqs(seq),
        rounds=rounds, warmup=warmup, sample=sample, threads=threads or available_cores(),
        calibration=calibration, int8=tuple(p.strip() for p in int8.split(",") if p.strip()),
        engines=tuple(p.strip() for p in engines.split(",") if p.strip()) if engines else None,
        task=task, torch_attention=torch_attention, layernorm=layernorm, profile=profile,
        accuracy=not no_accuracy,
    )
    config = replace(config, command=command_line(config))
    err = Console(stderr=True)
    if err.is_terminal:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      console=err, transient=True) as progress:
            bar = progress.add_task("preparing", total=None)

            def show(message: str, completed: int, total: int) -> None:
                progress.update(bar, description=message, completed=completed,
                                total=total or None)

            result = run_bench(config, progress=show)
    else:
        result = run_bench(config, progress=_line_progress())
    data_dict = result.to_dict()
    report.print_report(data_dict, Console())
    if json_out:
        report.write_json(data_dict, json_out)
    if markdown_out:
        report.write_markdown(data_dict, markdown_out)
    if report_out:
        report.write_html(data_dict, report_out)
    for path in (json_out, markdown_out, report_out):
        if path:
            err.print(f"[green]✓[/] wrote {path}", highlight=False)


def _line_progress() -> Callable[[str, int, int], None]:
    """For a pipe or CI log: one plain line per step, with the elapsed time (no bar)."""
    import time

    started = time.perf_counter()

    def show(message: str, completed: int, total: int) -> None:
        done = f" [{completed}/{total}]" if total else ""
        print(f"{time.perf_counter() - started:7.1f}s  {message}{done}", file=sys.stderr,
              flush=True)

    return show


def command_line(config: BenchConfig) -> str:
    """The command that reproduces this run: every measurement option spelled out (where the
    reports are written does not change a figure, so output options are left out)."""
    parts = ["onnxguard", "bench"]
    if config.target:
        parts.append(config.target)
    options: list[tuple[str, object]] = [
        ("--data", config.data),
        ("--batch", ",".join(str(b) for b in config.batches)),
        ("--seq", ",".join("dynamic" if s is None else str(s) for s in config.seqs)),
        ("--rounds", config.rounds), ("--warmup", config.warmup), ("--sample", config.sample),
        ("--threads", config.threads), ("--int8", ",".join(config.int8)),
        ("--calibration", config.calibration),
        ("--engines", ",".join(config.engines) if config.engines else None),
        ("--task", config.task),
    ]
    if config.torch_attention != "sdpa":
        options.append(("--torch-attention", config.torch_attention))
    if config.layernorm != "fused":
        options.append(("--layernorm", config.layernorm))
    for flag, value in options:
        if value is not None:
            parts += [flag, str(value)]
    if config.profile:
        parts.append("--profile")
    if not config.accuracy:
        parts.append("--no-accuracy")
    return " ".join(shlex.quote(p) for p in parts)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
