"""Render a benchmark: terminal tables (rich), JSON, Markdown, and a self-contained HTML page.

Every renderer takes the JSON form (``BenchResult.to_dict()``), so a saved ``--json`` file can be
rendered again later (``render_markdown(json.load(...))``) and the figures in every format are
the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SEED_TABLE = (
    "The seed article (PyTorch 2.2.1 vs ONNX Runtime vs quantized ONNX Runtime, "
    "distilbert-base-uncased-finetuned-sst-2-english, batch 8, 4-core Xeon): average latency "
    "142 / 87 / 52 ms, p99 218 / 124 / 78 ms, size 255 / 255 / 64 MB, 56 / 92 / 153 "
    "inferences/s, F1 0.912 / 0.911 / 0.908."
)
MB = 1024 * 1024


# --- shared helpers ------------------------------------------------------------------------------
def engines_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(data["engines"])


def label_of(data: dict[str, Any], engine_id: str) -> str:
    return next((e["label"] for e in data["engines"] if e["id"] == engine_id), engine_id)


def run_of(data: dict[str, Any], engine: str, workload: str) -> dict[str, Any] | None:
    return next((r for r in data["runs"]
                 if r["engine"] == engine and r["workload"]["id"] == workload), None)


def quality_of(data: dict[str, Any], engine: str, mode: str) -> dict[str, Any] | None:
    return next((q for q in data["quality"] if q["engine"] == engine and q["mode"] == mode),
                None)


def seed_workload(data: dict[str, Any]) -> dict[str, Any] | None:
    """Batch 8 × 128 when measured; else the largest padded batch; else the first workload."""
    workloads = data["workloads"]
    exact = next((w for w in workloads if w["seq"] == 128 and w["batch"] == 8), None)
    padded = [w for w in workloads if w["seq"] is not None]
    return exact or (max(padded, key=lambda w: (w["batch"], w["seq"])) if padded else None) or (
        workloads[0] if workloads else None)


def workload_title(w: dict[str, Any]) -> str:
    if w["seq"] is None:
        return f"batch {w['batch']}, real text (dynamic padding, length-sorted batches)"
    return f"batch {w['batch']} × {w['seq']} tokens (fixed padding)"


def speedup(data: dict[str, Any], engine: str, workload: str) -> float | None:
    """Paired: the median over rounds of this engine's / PyTorch's throughput in that round."""
    mine = run_of(data, engine, workload)
    value = mine.get("speedup_vs_pytorch") if mine else None
    return None if value is None else float(value)


def _get(d: dict[str, Any] | None, *keys: str) -> float | None:
    """A nested number, or None when any level is missing."""
    value: Any = d
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return None if value is None else float(value)


def paired(data: dict[str, Any], engine: str, workload: str, base_engine: str,
           base_workload: str) -> float | None:
    """Median over rounds of the per-round throughput ratio of two runs of the same rounds."""
    mine, base = run_of(data, engine, workload), run_of(data, base_engine, base_workload)
    if not mine or not base:
        return None
    ratios: list[float] = sorted(
        float(a) / float(b) for a, b in zip(mine["throughput_rounds"],
                                            base["throughput_rounds"], strict=False) if b)
    if not ratios:
        return None
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def _f(x: float | None, digits: int = 1, suffix: str = "") -> str:
    return "–" if x is None else f"{x:,.{digits}f}{suffix}"


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def _mb(x: int | None) -> str:
    return "–" if not x else f"{x / MB:,.1f}"


HEADLINE = "Your workload on this machine"
CANDIDATES = ("Other int8 candidates (quantized by the bench, not through the build's gate: "
              "a build may ship another)")


def headline_engines(data: dict[str, Any]) -> list[dict[str, Any]]:
    """PyTorch, the fp32 graphs and the graph a bundle ships; never an ungated candidate."""
    return [e for e in engines_of(data) if e.get("role", "baseline") != "candidate"]


def candidate_engines(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in engines_of(data) if e.get("role") == "candidate"]


def seed_rows(data: dict[str, Any], candidates: bool = False
              ) -> tuple[list[str], list[list[str]]]:
    """The headline table (metric rows × engine columns) at batch 8 × 128, or the candidates'."""
    w = seed_workload(data)
    engines = candidate_engines(data) if candidates else headline_engines(data)
    header = ["", *(e["label"] for e in engines)]
    if w is None:
        return header, []
    mode = "pad128" if w["seq"] == 128 else w["mode"]
    runs = [run_of(data, e["id"], w["id"]) for e in engines]
    quals = [quality_of(data, e["id"], mode) or quality_of(data, e["id"], "dynamic")
             for e in engines]
    rows = [
        ["Average latency per batch (ms)", *(_f(_get(r, "latency", "mean_ms")) for r in runs)],
        ["p50 latency (ms)", *(_f(_get(r, "latency", "p50_ms")) for r in runs)],
        ["p99 latency (ms)", *(_f(_get(r, "latency", "p99_ms")) for r in runs)],
        ["Throughput (sequences/s)", *(_f(_get(r, "throughput_seq_per_s")) for r in runs)],
        ["Speed-up vs PyTorch (paired per round)",
         *(_f(speedup(data, e["id"], w["id"]), 2, "×") for e in engines)],
        ["Model size (MB)", *(_mb(e["file_bytes"]) for e in engines)],
        ["Peak RSS of the engine's process (MB)", *(_mb(e["peak_rss_bytes"]) for e in engines)],
        ["Session/model load (s)", *(_f(e["load_seconds"], 2) for e in engines)],
        ["Share of the matmul roofline", *(_pct(_get(r, "peak_fraction"), 0) for r in runs)],
    ]
    if any(_get(q, "accuracy") is not None for q in quals):
        rows.append(["Accuracy", *(_pct(_get(q, "accuracy")) for q in quals)])
        rows.append(["F1", *(_f(_get(q, "f1"), 3) for q in quals)])
    if any(_get(q, "agreement_with_pytorch") is not None for q in quals):
        rows.append(["Agreement with PyTorch",
                     *(_pct(_get(q, "agreement_with_pytorch")) for q in quals)])
    elif any(_get(q, "mean_cosine_with_pytorch") is not None for q in quals):
        rows.append(["Mean cosine to PyTorch",
                     *(_f(_get(q, "mean_cosine_with_pytorch"), 5) for q in quals)])
        rows.append(["Min cosine to PyTorch",
                     *(_f(_get(q, "min_cosine_with_pytorch"), 5) for q in quals)])
    return header, rows


def workload_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["workload", "engine", "mean ms", "p50 ms", "p95 ms", "p99 ms", "sequences/s",
              "× PyTorch", "GFLOP/s", "% of peak"]
    rows = []
    for w in data["workloads"]:
        for e in engines_of(data):
            r = run_of(data, e["id"], w["id"])
            if r is None:
                continue
            lat = r["latency"]
            rows.append([w["id"], e["label"], _f(lat["mean_ms"], 2), _f(lat["p50_ms"], 2),
                         _f(lat["p95_ms"], 2), _f(lat["p99_ms"], 2),
                         _f(r["throughput_seq_per_s"]), _f(speedup(data, e["id"], w["id"]), 2,
                                                           "×"),
                         _f(r["achieved_gflops"]), _pct(r["peak_fraction"], 0)])
    return header, rows


def quality_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["input mode", "engine", "accuracy", "F1", "agreement with PyTorch",
              "mean cosine", "max |Δ| vs PyTorch", "full pass (s)"]
    rows = [[q["mode"], label_of(data, q["engine"]), _pct(q["accuracy"]), _f(q["f1"], 4),
             _pct(q["agreement_with_pytorch"]), _f(q["mean_cosine_with_pytorch"], 5),
             _f(q["max_abs_diff_vs_pytorch"], 4), _f(q["full_pass_seconds"], 2)]
            for q in data["quality"]]
    return header, rows


def engine_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["engine", "precision", "model size (MB)", "load (s)", "import (s)",
              "peak RSS (MB)", "RSS added by the model (MB)", "intra-op threads",
              "OS threads", "what it is"]
    rows = [[e["label"], e["precision"], _mb(e["file_bytes"]), _f(e["load_seconds"], 2),
             _f(e["import_seconds"], 2), _mb(e["peak_rss_bytes"]), _mb(e["model_rss_bytes"]),
             str(e["threads"]), str(e["os_threads"]),
             e["description"] + (f" (attention: {e['attention']})" if e.get("attention") else "")]
            for e in engines_of(data)]
    return header, rows


def target_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["target", "measured", "needed", "met", "detail"]
    rows = []
    for t in data["targets"]:
        unit = t["unit"]
        value = "–" if t["value"] is None else (
            f"{t['value']:+.2f} {unit}" if unit == "pt" else f"{t['value']:.2f}{unit}")
        need = f"≥ {t['threshold']:+.1f} {unit}" if unit == "pt" else f"≥ {t['threshold']}{unit}"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        rows.append([t["name"], value, need, met, t["detail"]])
    return header, rows


def target_notes(data: dict[str, Any]) -> list[str]:
    """Why a ratio target was missed, from this run's roofline and profiler figures."""
    notes: list[str] = []
    w = next((w for w in data["workloads"] if w["seq"] == 128 and w["batch"] == 8), None)
    base = run_of(data, "pytorch", w["id"]) if w else None
    if w is None or base is None or not base["peak_fraction"]:
        return notes
    engines = {e["id"]: e for e in data["engines"]}
    for t in data["targets"]:
        if t["met"] is not False or t["unit"] != "×" or "real text" in t["name"]:
            continue
        engine = "ort-fp32-opt" if "fp32" in t["name"] else next(
            (e for e in engines if e.startswith("ort-int8")), None)
        run = run_of(data, engine, w["id"]) if engine else None
        if run is None or run["peak_fraction"] is None:
            continue
        precision = engines[str(engine)]["precision"]
        needed_gflops = base["achieved_gflops"] * t["threshold"]
        peak = (data["roofline"]["int8_peak_gops"] if precision == "int8"
                else data["roofline"]["fp32_peak_gflops"])
        text = (f"{t['name']}: PyTorch already runs at {base['achieved_gflops']:.0f} GFLOP/s "
                f"({base['peak_fraction'] * 100:.0f}% of this machine's fp32 matmul peak), so "
                f"{t['threshold']}× needs {needed_gflops:.0f} GFLOP/s"
                + (f" = {needed_gflops / peak * 100:.0f}% of the {precision} peak"
                   if peak else "")
                + f"; {engines[str(engine)]['label']} reaches {run['achieved_gflops']:.0f} "
                f"({run['peak_fraction'] * 100:.0f}%).")
        profile = data["profiles"].get(str(engine))
        if profile:
            top = ", ".join(f"{op} {share * 100:.0f}%" for op, share in
                            list(profile["op_share"].items())[:5])
            text += f" Kernel time by operator: {top}."
        notes.append(text)
    return notes


def busy_warning(data: dict[str, Any]) -> str | None:
    """A warning when other processes kept the CPUs busy during the run (load average)."""
    m = data["machine"]
    cpus = max(1, int(m.get("available_cpus") or 1))
    loads = [x for key in ("load_average_start", "load_average_end")
             for x in (m.get(key) or [])[:1]]
    if not loads or max(loads) <= 0.5 * cpus:
        return None
    return (f"The machine was busy during this run (1-minute load average up to "
            f"{max(loads):.1f} on {cpus} CPUs): other processes took CPU time from every engine. "
            "Absolute figures are lower than on an idle machine and multi-threaded engines "
            "suffer unevenly, so speed-ups carry more noise; rerun when the machine is idle.")


def machine_line(data: dict[str, Any], load: bool = True) -> str:
    m = data["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    text = (f"{m['cpu']} ({m['available_cpus']} CPUs available, {m['threads_used']} threads "
            f"used; SIMD: {', '.join(m['simd']) or 'none detected'}), "
            f"{m['memory_bytes'] / 1024 ** 3:.0f} GiB RAM, {m['os']}, Python {m['python']}; "
            f"{versions}.")
    if load:
        text += (f" Load average at start {m['load_average_start']}, at end "
                 f"{m.get('load_average_end', [])}.")
    return text


def model_title(data: dict[str, Any]) -> str:
    """The model's name (a local directory by its last part), task and non-default variant."""
    name = str(data["model"]["name"])
    if name.startswith("/"):
        name = name.rstrip("/").split("/")[-1]
    title = f"{name} ({data['model']['task']})"
    if data["config"].get("layernorm") == "unfused":
        title += ", --layernorm unfused"
    return title


# --- JSON ----------------------------------------------------------------------------------------
def write_json(data: dict[str, Any], path: Path) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_markdown(data: dict[str, Any], path: Path) -> None:
    write_text(path, render_markdown(data))


def write_html(data: dict[str, Any], path: Path) -> None:
    from onnxguard.bench._html import render_html

    write_text(path, render_html(data))


def write_text(path: Path, text: str) -> None:
    """Write atomically, so a reader never sees half a report (a report, not a secret)."""
    from onnxguard._files import REPORT_MODE, atomic_write

    atomic_write(path, text, mode=REPORT_MODE)


# --- Markdown ------------------------------------------------------------------------------------
def _md_table(header: list[str], rows: Iterable[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: dict[str, Any], heading: int = 2) -> str:
    """A Markdown section: the headline table, targets, every workload, accuracy, roofline."""
    h = "#" * heading
    model, cfg, ds = data["model"], data["config"], data["dataset"]
    w = seed_workload(data)
    out = [f"{h} {model_title(data)}", ""]
    out.append(f"Measured {data['machine']['date']} on {machine_line(data)}")
    if warning := busy_warning(data):
        out += ["", f"> **Note:** {warning}"]
    out += ["", "Command:", "", "```", cfg["command"] or "(library call)", "```", ""]
    out.append(f"Data: {ds['source']} ({ds['texts']} texts, mean {ds['mean_tokens']} tokens; "
               f"latency rounds on an evenly spaced sample of {ds['latency_sample']}; "
               f"accuracy on all of them). {cfg['warmup']} warm-up + {cfg['rounds']} "
               f"rounds in which the engines take turns batch by batch; throughput is the "
               f"median over rounds, speed-ups the median of per-round ratios. Whole run: "
               f"{data['seconds']:.0f} s.")
    if w is not None:
        out += ["", f"{h}# {HEADLINE}: {workload_title(w)}", ""]
        out.append(_md_table(*seed_rows(data)))
        if candidate_engines(data):
            out += ["", f"{h}# {CANDIDATES}", "", _md_table(*seed_rows(data, candidates=True))]
        out += ["", "For comparison, the figures that motivated the project: " + SEED_TABLE]
    out += ["", f"{h}# Targets", "", _md_table(*target_rows(data))]
    notes = target_notes(data)
    if notes:
        out += ["", *(f"- {n}" for n in notes)]
    out += ["", f"{h}# Every workload", "",
            "Latency is per batch (the model call; with dynamic padding also the padding). "
            "Real-text throughput also counts tokenization and the length sort.", "",
            _md_table(*workload_rows(data))]
    if data["quality"]:
        out += ["", f"{h}# Accuracy and agreement (every text, largest batch)", "",
                _md_table(*quality_rows(data))]
    out += ["", f"{h}# Engines", "", _md_table(*engine_rows(data)), "",
            "Peak RSS is the high-water mark (VmHWM) of the engine's own worker process "
            "(interpreter, libraries, model and buffers); the next column subtracts the RSS "
            "measured after imports, before the model was loaded."]
    out += ["", f"{h}# Roofline", "", roofline_text(data)]
    if data["profiles"]:
        out += ["", f"{h}# Where the time goes (ONNX Runtime profiler)", ""]
        out.append(_md_table(*profile_rows(data)))
    if model["fused_operators"]:
        fused = ", ".join(f"{k}×{v}" for k, v in model["fused_operators"].items())
        out += ["", f"Transformer optimizer fusions: {fused}."]
    if model["notes"]:
        out += ["", *(f"- {n}" for n in model["notes"])]
    return "\n".join(out) + "\n"


def roofline_text(data: dict[str, Any]) -> str:
    roof = data["roofline"]
    flops = data["model"]["flops"]
    best: dict[str, dict[str, Any]] = {}
    for k in roof["kernels"]:
        if k["precision"] not in best or k["gflops"] > best[k["precision"]]["gflops"]:
            best[k["precision"]] = k
    parts = [f"Graph: {flops['flops_per_token'] / 1e6:.1f} MFLOP per token "
             f"({flops['gflops_batch8_seq128']} GFLOP per batch of 8 × 128)."]
    for precision, k in best.items():
        unit = "GOP/s" if precision == "int8" else "GFLOP/s"
        parts.append(f"{precision} peak: {k['gflops']:.0f} {unit} ({k['kernel']}, "
                     f"{k['m']}×{k['k']}×{k['n']}, {roof['threads']} threads).")
    parts.append("Each engine's share of the roofline is its graph FLOPs over its model time "
                 "(median over rounds), divided by the peak of its precision (int8 engines "
                 "against the int8 peak).")
    header = ["kernel", "precision", "M×K×N", "best GFLOP/s"]
    rows = [[k["kernel"], k["precision"], f"{k['m']}×{k['k']}×{k['n']}", _f(k["gflops"])]
            for k in roof["kernels"]]
    return " ".join(parts) + "\n\n" + _md_table(header, rows)


def profile_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["engine", "workload", "kernel ms per batch", "top operators (share of kernel time)"]
    rows = []
    for engine, p in data["profiles"].items():
        runs = max(1, int(p.get("runs", 1)))
        shares = ", ".join(f"{op} {share * 100:.0f}%" for op, share in p["op_share"].items()
                           if share >= 0.01)
        rows.append([label_of(data, engine), p["workload"], _f(p["kernel_ms"] / runs, 1),
                     shares])
    return header, rows


# --- terminal ------------------------------------------------------------------------------------
def print_report(data: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for title, (header, rows) in (
        (f"{HEADLINE}: " + (workload_title(w) if (w := seed_workload(data)) else ""),
         seed_rows(data)),
        (CANDIDATES, seed_rows(data, candidates=True) if candidate_engines(data) else ([], [])),
        ("Every workload", workload_rows(data)),
        ("Accuracy and agreement", quality_rows(data)),
        ("Targets", target_rows(data)),
    ):
        if not rows:
            continue
        table = Table(title=title, title_justify="left")
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i < 2 else "right",
                             overflow="fold")
        for row in rows:
            table.add_row(*(c.replace("**", "") for c in row))
        console.print(table)
    roof = data["roofline"]
    console.print(f"roofline: fp32 {roof['fp32_peak_gflops']:.0f} GFLOP/s, int8 "
                  f"{roof['int8_peak_gops']:.0f} GOP/s ({roof['threads']} threads)",
                  highlight=False)
    console.print(f"[dim]{machine_line(data)}[/]", highlight=False)
    if warning := busy_warning(data):
        console.print(f"[bold yellow]note:[/] {warning}", highlight=False)


# --- docs/BENCHMARKS.md ---------------------------------------------------------------------------
def render_document(runs: list[dict[str, Any]], regenerate: str,
                    intro: str = "") -> str:
    """The whole benchmarks page: summary of every run, then each run's own section."""
    first = runs[0] if runs else None
    out = ["# Benchmarks", ""]
    out.append(f"Generated by `{regenerate}`; do not edit by hand.")
    if intro:
        out += ["", intro.strip()]
    if first is not None:
        out += ["", f"Machine: {machine_line(first, load=False)}"]
    out += ["", "## Summary", "", _md_table(*summary_rows(runs)), "", SEED_TABLE, ""]
    out += ["### Targets (ratios measured within each run)", "",
            _md_table(*targets_summary_rows(runs)), ""]
    out += ["## How it is measured", "", *METHOD, ""]
    for data in runs:
        out.append(render_markdown(data, heading=2))
    return "\n".join(out)


METHOD = (
    "- One worker process per engine (a fresh interpreter): the PyTorch baseline is a freshly "
    "loaded transformers model, never the module that was exported; peak RSS is the engine's "
    "own; thread pools never share a core budget.",
    "- Only one engine computes at a time, and engines take turns (16 sequences per turn, order "
    "rotated per round), so a burst of load from another process hits every engine alike. "
    "Before each turn the harness waits until the previous engine's threads have stopped "
    "spin-waiting (ONNX Runtime and OpenMP spin for ~30-40 ms after a run and would steal a "
    "core). After an untimed warm-up round, throughput is the median over rounds; speed-ups "
    "are paired: the median over rounds of the ratio measured within each round. Latency "
    "percentiles cover every measured batch, so a noisy round shows in p95/p99.",
    "- Fixed padding (e.g. batch 8 × 128, the setting of the article the project started "
    "from): inputs are tokenized and padded beforehand and only "
    "the model call is timed. Real text: each pass tokenizes, sorts by length, pads each batch "
    "to its longest text and runs it; throughput counts all of that.",
    "- Accuracy, F1 (positive class) and agreement with PyTorch use every labelled text, at the "
    "largest batch size, in each input mode.",
    "- The roofline is measured in the same run (before and after the engines, best of both): "
    "ONNX Runtime MatMul and numpy SGEMM for fp32, MatMulInteger / DynamicQuantizeMatMul for "
    "int8, at the model's weight shapes. An engine's share is graph FLOPs / model time / peak.",
    "- The machine is shared with other jobs; the load average at start and end of each run is "
    "printed with it. Ratios within one run are the figures to compare.",
)


def targets_summary_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "target", "measured", "needed", "met"]
    rows = []
    for data in runs:
        _, rows_of_run = target_rows(data)
        rows += [[model_title(data), *row[:4]] for row in rows_of_run]
    return header, rows


def summary_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "engine", "batch 8 × 128: seq/s", "× PyTorch", "real text batch 8: seq/s",
              "× PyTorch at 8 × 128", "accuracy", "agreement / cosine"]
    rows = []
    for data in runs:
        padded = next((w for w in data["workloads"] if w["seq"] == 128 and w["batch"] == 8),
                      None)
        real = next((w for w in data["workloads"] if w["seq"] is None and w["batch"] == 8),
                    None)
        seed = run_of(data, "pytorch", padded["id"]) if padded else None
        name = model_title(data)
        for e in data["engines"]:
            p = run_of(data, e["id"], padded["id"]) if padded else None
            r = run_of(data, e["id"], real["id"]) if real else None
            q = quality_of(data, e["id"], "pad128") or quality_of(data, e["id"], "dynamic")
            ratio = (paired(data, e["id"], real["id"], "pytorch", padded["id"])
                     if real and padded and seed else None)
            match = (_pct(q["agreement_with_pytorch"]) if q and
                     q["agreement_with_pytorch"] is not None
                     else _f(_get(q, "mean_cosine_with_pytorch"), 5))
            rows.append([name, e["label"], _f(_get(p, "throughput_seq_per_s")),
                         _f(speedup(data, e["id"], padded["id"]) if padded else None, 2, "×"),
                         _f(_get(r, "throughput_seq_per_s")), _f(ratio, 1, "×"),
                         _pct(_get(q, "accuracy")), match])
    return header, rows
