"""``onnxguard bench``: your model on your machine (the graph a bundle ships), where time goes.

``--json`` prints every figure as JSON on stdout (like every other command); ``--report FILE``
writes a report whose format follows the file's suffix (.json, .md, .html; repeatable).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from onnxguard.bench._prepare import ORT_INT8_DYNAMIC, ORT_INT8_STATIC, ORT_OPT, ORT_PLAIN, PYTORCH
from onnxguard.bench.harness import BenchConfig
from onnxguard.cli._options import Calibration, Json, Threads, must_exist
from onnxguard.cli._output import console
from onnxguard.convert.quantize import DYNAMIC_CANDIDATES, STATIC_CANDIDATES
from onnxguard.errors import UsageError
from onnxguard.tasks import Task

CANDIDATES = tuple(c.name for c in (*DYNAMIC_CANDIDATES, *STATIC_CANDIDATES))
ENGINES = (PYTORCH, ORT_PLAIN, ORT_OPT, ORT_INT8_DYNAMIC, ORT_INT8_STATIC)
REPORT_SUFFIXES = (".json", ".md", ".html")


class TorchAttention(StrEnum):
    sdpa = "sdpa"
    eager = "eager"


class LayerNorm(StrEnum):
    fused = "fused"
    unfused = "unfused"


def _names(option: str, known: tuple[str, ...]) -> Any:
    """A callback that checks a comma-separated list against ``known`` while parsing."""
    def check(value: str | None) -> str | None:
        parts = [p.strip() for p in (value or "").split(",") if p.strip()]
        if value is not None and not parts:
            raise UsageError(f"{option} is empty", hint=f"choose from {', '.join(known)}")
        if unknown := [p for p in parts if p not in known]:
            raise UsageError(f"unknown {option} value(s): {', '.join(unknown)}",
                             hint=f"choose from {', '.join(known)} (comma-separated)")
        return value
    return check


def _reports(values: list[Path]) -> list[Path]:
    for path in values:
        if path.suffix not in REPORT_SUFFIXES:
            raise UsageError(f"--report {path}: unknown report type {path.suffix or '(none)'}",
                             hint=f"name the file with one of {', '.join(REPORT_SUFFIXES)}")
    return values


def bench_command(
    target: Annotated[str | None, typer.Argument(
        metavar="SOURCE_OR_BUNDLE",
        help="Model directory, pkg:PACKAGE or Hub id (exported, fused and quantized here with "
        "the build's own stages), or a bundle directory (its model.onnx / model.fp32.onnx, "
        "with PyTorch from the manifest's source when it is on this machine). Default: the "
        "embedded sentence-transformers/all-MiniLM-L6-v2.")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", callback=must_exist, metavar="FILE",
        help="label<TAB>text TSV (accuracy, F1, agreement) or "
        "one text per line (latency and agreement only). Default: the built-in validation "
        "sentences.")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1,8",
    seq: Annotated[str, typer.Option(
        "--seq", help="Input modes: a token count (every batch padded to it, the seed's "
        "setting) and/or 'dynamic' (real text: dynamic padding, length-sorted batches)."
    )] = "128,dynamic",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Measured rounds.")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed warm-up rounds.")] = 1,
    sample: Annotated[int, typer.Option(
        "--sample", min=0, help="Texts per latency round, evenly spaced over the data (0: all). "
        "Accuracy always uses every text.")] = 96,
    threads: Threads = None,
    calibration: Calibration = None,
    int8: Annotated[str, typer.Option(
        "--int8", callback=_names("--int8", CANDIDATES),
        help=f"int8 candidates to build from a SOURCE, comma-separated: {', '.join(CANDIDATES)} "
        "(the default is the fastest; a bundle brings the one its build chose)."
    )] = "dynamic-int8",
    engines: Annotated[str | None, typer.Option(
        "--engines", callback=_names("--engines", ENGINES),
        help=f"Only these engines, comma-separated: {', '.join(ENGINES)}.")] = None,
    task: Annotated[Task | None, typer.Option("--task", help="Override the detected task.")
                    ] = None,
    torch_attention: Annotated[TorchAttention, typer.Option(
        "--torch-attention", help="PyTorch baseline attention: sdpa (transformers' default) or "
        "eager.")] = TorchAttention.sdpa,
    layernorm: Annotated[LayerNorm, typer.Option(
        "--layernorm", help="fused: the graphs as the build makes them. unfused: split "
        "SkipLayerNormalization into Add + LayerNormalization and keep ONNX Runtime from "
        "re-fusing it (its CPU kernel is scalar; measures the proposed fix).")
    ] = LayerNorm.fused,
    profile: Annotated[bool, typer.Option(
        "--profile", help="Also run ONNX Runtime's profiler: time per operator type.")] = False,
    no_accuracy: Annotated[bool, typer.Option(
        "--no-accuracy", help="Skip the full-data accuracy passes.")] = False,
    as_json: Json = False,
    report_out: Annotated[list[Path], typer.Option(
        "--report", callback=_reports, metavar="FILE.json|FILE.md|FILE.html",
        help="Write a report; the suffix picks JSON, Markdown or a self-contained HTML page "
        "with charts (repeatable).")] = [],  # noqa: B006 (typer copies the default)
) -> None:
    """Benchmark PyTorch vs ONNX Runtime fp32 / optimized / int8 in one interleaved run."""
    from onnxguard.bench import report
    from onnxguard.bench._data import parse_batches, parse_seqs
    from onnxguard.runtime import available_cores

    config = BenchConfig(
        target=target, data=data, batches=parse_batches(batch), seqs=parse_seqs(seq),
        rounds=rounds, warmup=warmup, sample=sample, threads=threads or available_cores(),
        calibration=calibration, int8=tuple(p.strip() for p in int8.split(",") if p.strip()),
        engines=tuple(p.strip() for p in engines.split(",") if p.strip()) if engines else None,
        task=task.value if task else None, torch_attention=torch_attention.value,
        layernorm=layernorm.value, profile=profile, accuracy=not no_accuracy,
    )
    config = replace(config, command=command_line(config))
    data_dict = _run(config)
    if as_json:
        typer.echo(json.dumps(data_dict, indent=2, ensure_ascii=False))
    else:
        report.print_report(data_dict, console())
    writers = {".json": report.write_json, ".md": report.write_markdown,
               ".html": report.write_html}
    err = console(stderr=True)
    for path in report_out:
        writers[path.suffix](data_dict, path)
        err.print(f"wrote {path}", markup=False)


def _run(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark with a progress bar on a terminal, one line per step on a pipe."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from onnxguard.bench.harness import run_bench

    err = console(stderr=True)
    if not err.is_terminal:
        return run_bench(config, progress=_line_progress()).to_dict()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        bar = progress.add_task("preparing", total=None)

        def show(message: str, completed: int, total: int) -> None:
            progress.update(bar, description=message, completed=completed,
                            total=total or None)

        return run_bench(config, progress=show).to_dict()


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
