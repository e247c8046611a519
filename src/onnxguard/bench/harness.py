"""The benchmark: every engine, every workload, interleaved rounds, one machine, one run.

How it stays honest on a shared, noisy machine:
- each engine runs in its own worker process (fresh PyTorch model; peak RSS is the engine's own;
  no shared thread pools) and only one engine computes at any moment;
- rounds are interleaved (round r runs every engine on every workload, in an order rotated per
  round) after untimed warm-up, and throughput is the median over rounds;
- the matmul roofline is measured in the same run, before and after the engines (best of both).

Accuracy, F1 and agreement with PyTorch use every labelled sentence; latency rounds use an evenly
spaced sample (``sample``), so a run on SST-2 stays within minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from onnxguard.bench._data import Dataset, Workload, read_dataset, sample_indices, workload_grid
from onnxguard.bench._metrics import LatencySummary, Quality, quality
from onnxguard.bench._prepare import (
    DEFAULT_INT8,
    ORT_INT8_DYNAMIC,
    ORT_OPT,
    PYTORCH,
    EngineSpec,
    PreparedModel,
    prepare,
)
from onnxguard.bench._workers import WorkerClient
from onnxguard.bench.roofline import FP32, INT8, KernelRate, Roofline, merge
from onnxguard.errors import UsageError

CHUNK_SEQUENCES = 16
"""An engine's turn: this many sequences (two batches of 8, sixteen batches of 1)."""
SEED_WORKLOAD = Workload(128, 8)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; CLI flags map 1:1 onto these fields."""

    target: str | None = None
    """Model source (directory, pkg:NAME, Hub id; None: the default model) or a bundle dir."""
    data: Path | None = None
    batches: tuple[int, ...] = (1, 8)
    seqs: tuple[int | None, ...] = (128, None)
    rounds: int = 5
    warmup: int = 1
    sample: int = 96
    threads: int = 2
    calibration: Path | None = None
    int8: tuple[str, ...] = DEFAULT_INT8
    engines: tuple[str, ...] | None = None
    task: str | None = None
    torch_attention: str = "sdpa"
    layernorm: str = "fused"
    """``unfused``: split SkipLayerNormalization in the ONNX graphs (see ``_unfuse``)."""
    profile: bool = False
    accuracy: bool = True
    roofline_seconds: float = 0.3
    """Time per roofline kernel and shape (best-of timing within it)."""
    command: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target or "default model", "data": str(self.data or "built-in"),
                "batches": list(self.batches),
                "seqs": ["dynamic" if s is None else s for s in self.seqs],
                "rounds": self.rounds, "warmup": self.warmup, "sample": self.sample,
                "threads": self.threads, "int8": list(self.int8),
                "calibration": str(self.calibration) if self.calibration else None,
                "torch_attention": self.torch_attention, "layernorm": self.layernorm,
                "profile": self.profile,
                "command": self.command}


@dataclass(frozen=True)
class EngineResult:
    spec: EngineSpec
    load_seconds: float
    import_seconds: float
    threads: int
    os_threads: int
    peak_rss: int
    rss_before_load: int
    providers: tuple[str, ...]
    attention: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.spec.to_dict() | {
            "load_seconds": round(self.load_seconds, 3),
            "import_seconds": round(self.import_seconds, 3),
            "threads": self.threads, "os_threads": self.os_threads,
            "peak_rss_bytes": self.peak_rss, "rss_before_load_bytes": self.rss_before_load,
            "model_rss_bytes": max(0, self.peak_rss - self.rss_before_load),
            "providers": list(self.providers), "attention": self.attention,
        }


@dataclass(frozen=True)
class RunResult:
    engine: str
    workload: Workload
    latency: LatencySummary
    throughput: float
    """Sequences per second: median over rounds."""
    throughput_rounds: tuple[float, ...]
    batch_ms: tuple[float, ...]
    sequences_per_round: int
    tokens_per_batch: float
    """Mean padded batch × sequence positions: the work the engine actually did."""
    tokenize_ms: float
    achieved_gflops: float
    peak_fraction: float | None
    speedup_rounds: tuple[float, ...] = ()
    """Per round: this engine's throughput / PyTorch's in the same round (paired)."""

    @property
    def speedup(self) -> float | None:
        """Median of the paired per-round ratios (robust to load that drifts across rounds)."""
        return statistics.median(self.speedup_rounds) if self.speedup_rounds else None

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "workload": self.workload.to_dict(),
                "latency": self.latency.to_dict(),
                "throughput_seq_per_s": round(self.throughput, 2),
                "speedup_vs_pytorch": None if self.speedup is None else
                round(self.speedup, 3),
                "speedup_rounds": [round(x, 3) for x in self.speedup_rounds],
                "throughput_rounds": [round(t, 2) for t in self.throughput_rounds],
                "sequences_per_round": self.sequences_per_round,
                "mean_padded_tokens_per_batch": round(self.tokens_per_batch, 1),
                "tokenize_ms_per_round": round(self.tokenize_ms, 2),
                "achieved_gflops": float(f"{self.achieved_gflops:.4g}"),
                "peak_fraction": None if self.peak_fraction is None else
                float(f"{self.peak_fraction:.4g}"),
                "batch_ms": [round(x, 3) for x in self.batch_ms]}


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    threshold: float
    unit: str
    met: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": None if self.value is None else round(self.value, 3),
                "threshold": self.threshold, "unit": self.unit, "met": self.met,
                "detail": self.detail}


@dataclass(frozen=True)
class BenchResult:
    config: BenchConfig
    model: PreparedModel
    dataset: dict[str, Any]
    machine: dict[str, Any]
    engines: tuple[EngineResult, ...]
    runs: tuple[RunResult, ...]
    quality: tuple[Quality, ...]
    roofline: Roofline
    targets: tuple[Target, ...]
    profiles: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def run(self, engine: str, workload: Workload) -> RunResult | None:
        return next((r for r in self.runs if r.engine == engine and r.workload == workload),
                    None)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "onnxguard-bench/1", "config": self.config.to_dict(),
                "model": self.model.to_dict(), "dataset": self.dataset,
                "machine": self.machine, "engines": [e.to_dict() for e in self.engines],
                "workloads": [w.to_dict() for w in _workloads_of(self.runs)],
                "runs": [r.to_dict() for r in self.runs],
                "quality": [q.to_dict() for q in self.quality],
                "roofline": self.roofline.to_dict(),
                "targets": [t.to_dict() for t in self.targets],
                "profiles": self.profiles, "seconds": round(self.seconds, 1)}


Progress = Callable[[str, int, int], None]
"""``progress(message, completed, total)``."""


def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Prepare the graphs, start one worker per engine, measure, and collect every figure."""
    _check(config)
    started = time.perf_counter()
    machine = machine_info(config.threads)
    tracker = _Tracker(progress)
    with tempfile.TemporaryDirectory(prefix="onnxguard-bench-") as work_str:
        work = Path(work_str)
        calibration = _calibration(config)
        model = prepare(config.target, work, task=config.task, int8=config.int8,
                        calibration=calibration, step=tracker.note, layernorm=config.layernorm)
        dataset = _dataset(config, model)
        specs = _select(model.engines, config.engines)
        sample = sample_indices(len(dataset.texts), config.sample)
        (work / "texts.json").write_text(json.dumps({"texts": list(dataset.texts),
                                                     "sample": sample}), encoding="utf-8")
        workloads = workload_grid(config.seqs, config.batches)
        _check_lengths(workloads, model)
        modes = list(dict.fromkeys(w.seq for w in workloads)) if config.accuracy else []
        tracker.total = (2 + len(specs) + (config.warmup + config.rounds) * len(workloads)
                         + len(modes) * len(specs)
                         + (sum(s.kind == "onnxruntime" for s in specs) if config.profile
                            else 0))
        with _workers(specs, config, work) as workers:
            roofline_first = _roofline(workers["roofline"], config, model, tracker)
            engines = [_load(workers[s.id], s, config, model, work, tracker) for s in specs]
            for spec in specs:
                workers[spec.id].call({"cmd": "prepare",
                                       "workloads": [_wire(w) for w in workloads]})
            samples = _rounds(workers, specs, workloads, config, tracker)
            qualities = _accuracy(workers, specs, modes, config, model, dataset, work, tracker)
            profiles = _profiles(workers, specs, workloads, config, work, tracker)
            roofline_last = _roofline(workers["roofline"], config, model, tracker)
            engines = [_with_memory(e, workers[e.spec.id].call({"cmd": "stats"}))
                       for e in engines]
        dataset_info = {"source": dataset.source, "texts": len(dataset.texts),
                        "labelled": dataset.labelled, "latency_sample": len(sample),
                        "mean_tokens": _mean_tokens(model, dataset)}
    roofline = merge(config.threads, roofline_first, roofline_last)
    runs = _with_speedups(tuple(_run_result(spec, wl, samples[(spec.id, wl)], model, roofline)
                                for wl in workloads for spec in specs))
    machine["load_average_end"] = _loadavg()
    return BenchResult(
        config=config, model=model, dataset=dataset_info, machine=machine,
        engines=tuple(engines), runs=runs, quality=tuple(qualities), roofline=roofline,
        targets=tuple(evaluate_targets(runs, qualities)), profiles=profiles,
        seconds=time.perf_counter() - started,
    )


# --- steps ---------------------------------------------------------------------------------------
class _Tracker:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.done = 0
        self.total = 0

    def note(self, message: str) -> None:
        if self.progress:
            self.progress(message, self.done, self.total)

    def step(self, message: str) -> None:
        self.done += 1
        self.note(message)


def _check(config: BenchConfig) -> None:
    if config.rounds < 1 or config.warmup < 0:
        raise UsageError("--rounds must be at least 1 and --warmup at least 0",
                         hint="e.g. --rounds 5 --warmup 1")
    if config.threads < 1:
        raise UsageError("--threads must be at least 1", hint="e.g. --threads 2")
    if config.torch_attention not in ("sdpa", "eager"):
        raise UsageError(f"--torch-attention {config.torch_attention!r}",
                         hint="choose sdpa (transformers' default) or eager")


def _calibration(config: BenchConfig) -> list[str]:
    if config.calibration is None:
        return []
    from onnxguard.convert.validate import read_text_lines

    return read_text_lines(config.calibration, "calibration")


def _dataset(config: BenchConfig, model: PreparedModel) -> Dataset:
    if config.data is not None:
        return read_dataset(config.data, model.labels)
    from onnxguard.convert.validate import builtin_sentences

    return Dataset(tuple(builtin_sentences()), None, "built-in validation sentences")


def _select(engines: tuple[EngineSpec, ...], wanted: tuple[str, ...] | None
            ) -> list[EngineSpec]:
    if not wanted:
        return list(engines)
    known = {e.id: e for e in engines}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(f"unknown engine(s) {', '.join(unknown)} for this model",
                         hint=f"available: {', '.join(known)}")
    return [known[w] for w in dict.fromkeys(wanted)]


def _check_lengths(workloads: tuple[Workload, ...], model: PreparedModel) -> None:
    too_long = [w.seq for w in workloads if w.seq is not None and w.seq > model.max_length]
    if too_long:
        raise UsageError(
            f"--seq {max(s for s in too_long if s is not None)} exceeds the model's maximum "
            f"length {model.max_length}",
            hint=f"use --seq {model.max_length} or less, or --seq dynamic",
        )


@contextlib.contextmanager
def _workers(specs: list[EngineSpec], config: BenchConfig, work: Path
             ) -> Iterator[dict[str, WorkerClient]]:
    logs = work / "logs"
    logs.mkdir()
    workers: dict[str, WorkerClient] = {}
    try:
        workers["roofline"] = WorkerClient("roofline", config.threads, logs)
        workers["roofline"].call({"cmd": "init", "kind": "roofline",
                                  "texts_file": str(work / "texts.json")})
        for spec in specs:
            workers[spec.id] = WorkerClient(spec.id, config.threads, logs)
        yield workers
    finally:
        for worker in workers.values():
            worker.close()


def _wire(wl: Workload, subset: str = "sample") -> dict[str, Any]:
    return {"id": wl.id, "seq": wl.seq, "batch": wl.batch, "subset": subset}


def _load(worker: WorkerClient, spec: EngineSpec, config: BenchConfig, model: PreparedModel,
          work: Path, tracker: _Tracker) -> EngineResult:
    tracker.step(f"loading {spec.label}")
    reply = worker.call({
        "cmd": "init", "kind": spec.kind, "id": spec.id, "path": str(spec.path),
        "model_dir": str(spec.path), "task": model.task.value,
        "input_names": list(model.input_names), "max_length": model.max_length,
        "pooling": model.pooling.to_dict() if model.pooling else None,
        "tokenizer": str(model.tokenizer_path), "texts_file": str(work / "texts.json"),
        "threads": config.threads, "attention": config.torch_attention,
        "disabled_optimizers": list(spec.disabled_optimizers),
    })
    return EngineResult(
        spec=spec, load_seconds=float(reply["load_seconds"]),
        import_seconds=float(reply["import_seconds"]), threads=int(reply["threads"]),
        os_threads=int(reply.get("os_threads", 0)), peak_rss=int(reply.get("peak_rss", 0)),
        rss_before_load=int(reply.get("rss_before_load", 0)),
        providers=tuple(reply.get("providers", ())), attention=reply.get("attention"),
    )


def _with_memory(engine: EngineResult, stats: dict[str, Any]) -> EngineResult:
    from dataclasses import replace

    return replace(engine, peak_rss=int(stats.get("peak_rss", engine.peak_rss)),
                   os_threads=int(stats.get("os_threads", engine.os_threads)))


def _rounds(workers: dict[str, WorkerClient], specs: list[EngineSpec],
            workloads: tuple[Workload, ...], config: BenchConfig, tracker: _Tracker
            ) -> dict[tuple[str, Workload], list[dict[str, Any]]]:
    """Round r: every workload; engines take turns batch by batch (order rotated by r).

    Turn-taking at batch granularity means a burst of load from another process hits every
    engine alike, so ratios measured in one round stay fair even when absolute speed drifts.
    """
    samples: dict[tuple[str, Workload], list[dict[str, Any]]] = {
        (s.id, w): [] for s in specs for w in workloads}
    total = config.warmup + config.rounds
    for r in range(total):
        label = f"warm-up {r + 1}" if r < config.warmup else f"round {r - config.warmup + 1}"
        for index, wl in enumerate(workloads):
            tracker.step(f"{label}/{config.rounds} · {wl.id}")
            shift = (r + index) % len(specs)
            order = specs[shift:] + specs[:shift]
            batches = {}
            for spec in order:
                batches[spec.id] = int(workers[spec.id].call(
                    {"cmd": "begin", "workload": _wire(wl)})["batches"])
                workers[spec.id].wait_idle()
            chunk = max(1, CHUNK_SEQUENCES // wl.batch)
            replies: dict[str, dict[str, Any]] = {}
            for _ in range(0, max(batches.values()), chunk):
                for spec in order:
                    if spec.id in replies:
                        continue
                    reply = workers[spec.id].call({"cmd": "step", "count": chunk})
                    if reply["done"]:
                        replies[spec.id] = reply
                    workers[spec.id].wait_idle()
            if r >= config.warmup:
                for spec in specs:
                    samples[(spec.id, wl)].append(replies[spec.id])
    return samples


def _accuracy(workers: dict[str, WorkerClient], specs: list[EngineSpec],
              modes: list[int | None], config: BenchConfig, model: PreparedModel,
              dataset: Dataset, work: Path, tracker: _Tracker) -> list[Quality]:
    """One full pass per engine and input mode at the largest batch; PyTorch first."""
    results: list[Quality] = []
    ordered = sorted(specs, key=lambda s: s.id != PYTORCH)
    for seq in modes:
        wl = Workload(seq, max(config.batches))
        reference: np.ndarray | None = None
        for spec in ordered:
            tracker.step(f"accuracy · {wl.mode} · {spec.label}")
            out = work / f"out-{spec.id}-{wl.mode}.npy"
            reply = workers[spec.id].call({"cmd": "predict", "workload": _wire(wl, "full"),
                                           "subset": "full", "out": str(out)})
            workers[spec.id].wait_idle()
            outputs = np.load(out, allow_pickle=False)
            if spec.id == PYTORCH:
                reference = outputs
            results.append(quality(spec.id, wl.mode, model.task.value, outputs,
                                   dataset.labels, reference,
                                   float(reply["total_ms"]) / 1e3))
    return results


def _profiles(workers: dict[str, WorkerClient], specs: list[EngineSpec],
              workloads: tuple[Workload, ...], config: BenchConfig, work: Path,
              tracker: _Tracker) -> dict[str, Any]:
    if not config.profile:
        return {}
    from onnxguard.bench._profile import summarize_trace

    wl = seed_workload(workloads)
    directory = work / "profile"
    directory.mkdir(exist_ok=True)
    profiles: dict[str, Any] = {}
    for spec in (s for s in specs if s.kind == "onnxruntime"):
        tracker.step(f"profiling {spec.label}")
        reply = workers[spec.id].call({"cmd": "profile", "workload": _wire(wl),
                                       "dir": str(directory)})
        profiles[spec.id] = {"workload": wl.id} | summarize_trace(
            Path(reply["trace"]), Path(reply["session_graph"]))
    return profiles


def _roofline(worker: WorkerClient, config: BenchConfig, model: PreparedModel,
              tracker: _Tracker) -> list[KernelRate]:
    tracker.step("measuring the matmul roofline")
    rows = max(config.batches) * next((s for s in config.seqs if s), 128)
    shapes = [(rows, k, n) for k, n in model.flops.common_shapes(3)] or [(rows, 384, 384)]
    reply = worker.call({"cmd": "roofline", "threads": config.threads,
                         "shapes": [list(s) for s in shapes],
                         "min_seconds": config.roofline_seconds})
    return [KernelRate.from_dict(k) for k in reply["kernels"]]


def seed_workload(workloads: tuple[Workload, ...]) -> Workload:
    """Batch 8 × 128 when measured; else the largest padded batch; else the first workload."""
    if SEED_WORKLOAD in workloads:
        return SEED_WORKLOAD
    padded = [w for w in workloads if w.seq is not None]
    return max(padded, key=lambda w: (w.batch, w.seq or 0)) if padded else workloads[0]


# --- results -------------------------------------------------------------------------------------
def _run_result(spec: EngineSpec, wl: Workload, replies: list[dict[str, Any]],
                model: PreparedModel, roofline: Roofline) -> RunResult:
    batch_ms = [ms for reply in replies for ms in reply["batch_ms"]]
    per_round = []
    for reply in replies:
        seconds = (float(reply["tokenize_ms"]) + sum(reply["batch_ms"])) / 1e3
        per_round.append(reply["sequences"] / seconds if seconds > 0 else 0.0)
    shapes = [s for reply in replies for s in reply["shapes"]]
    rates = []  # per round: graph FLOPs over model time (the median, like throughput)
    for reply in replies:
        seconds = sum(reply["batch_ms"]) / 1e3
        if seconds > 0:
            rates.append(sum(model.flops.flops(b, s) for b, s in reply["shapes"]) / seconds / 1e9)
    achieved = statistics.median(rates) if rates else 0.0
    peak = roofline.peak(INT8 if spec.precision == "int8" else FP32)
    return RunResult(
        engine=spec.id, workload=wl, latency=LatencySummary.of(batch_ms),
        throughput=statistics.median(per_round) if per_round else 0.0,
        throughput_rounds=tuple(per_round), batch_ms=tuple(batch_ms),
        sequences_per_round=int(replies[0]["sequences"]) if replies else 0,
        tokens_per_batch=float(np.mean([b * s for b, s in shapes])) if shapes else 0.0,
        tokenize_ms=statistics.median(float(r["tokenize_ms"]) for r in replies)
        if replies else 0.0,
        achieved_gflops=achieved, peak_fraction=achieved / peak if peak else None,
    )


def paired_ratios(run: RunResult, base: RunResult) -> tuple[float, ...]:
    """Per-round throughput ratios of two runs measured in the same rounds."""
    return tuple(a / b for a, b in zip(run.throughput_rounds, base.throughput_rounds,
                                       strict=False) if b > 0)


def _with_speedups(runs: tuple[RunResult, ...]) -> tuple[RunResult, ...]:
    from dataclasses import replace

    base = {r.workload: r for r in runs if r.engine == PYTORCH}
    return tuple(replace(r, speedup_rounds=paired_ratios(r, base[r.workload]))
                 if r.workload in base else r for r in runs)


def evaluate_targets(runs: tuple[RunResult, ...], qualities: list[Quality]) -> list[Target]:
    """The issue's targets, as paired per-round ratios from this one run (None: not measured)."""
    def find(engine: str | None, wl: Workload) -> RunResult | None:
        return next((r for r in runs if r.engine == engine and r.workload == wl), None)

    int8 = next((r.engine for r in runs if r.engine == ORT_INT8_DYNAMIC),
                next((r.engine for r in runs if r.engine.startswith("ort-int8")), None))
    seed = find(PYTORCH, SEED_WORKLOAD)
    targets: list[Target] = []

    def ratio(name: str, engine: str | None, wl: Workload, threshold: float, what: str) -> None:
        run = find(engine, wl)
        ratios = paired_ratios(run, seed) if run and seed else ()
        if not ratios or run is None or seed is None:
            targets.append(Target(name, None, threshold, "×", None, "not measured in this run"))
            return
        value = statistics.median(ratios)
        targets.append(Target(
            name, value, threshold, "×", value >= threshold,
            f"{what}: median of per-round ratios {', '.join(f'{x:.2f}' for x in ratios)} "
            f"({run.throughput:.1f} vs PyTorch {seed.throughput:.1f} sequences/s, medians)"))

    ratio("ORT optimized fp32 vs PyTorch (batch 8 × 128)", ORT_OPT, SEED_WORKLOAD, 1.5,
          "ORT fp32 optimized")
    ratio("int8 vs PyTorch (batch 8 × 128)", int8, SEED_WORKLOAD, 3.0, f"{int8}")
    dynamic = [r.workload for r in runs if r.workload.seq is None and r.engine == int8]
    real = Workload(None, 8) if Workload(None, 8) in dynamic else (
        max(dynamic, key=lambda w: w.batch) if dynamic else Workload(None, 8))
    ratio(f"real text int8 ({real.id}) vs PyTorch padded to 128 (batch 8 × 128)",
          int8, real, 10.0, f"{int8} on real text")
    by = {(q.engine, q.mode): q for q in qualities}
    mode = next((m for m in ("pad128", "dynamic") if (PYTORCH, m) in by), None)
    ref = by.get((PYTORCH, mode)) if mode else None
    mine = by.get((int8, mode)) if int8 and mode else None
    name = "int8 accuracy within 0.5 points of PyTorch"
    if ref and mine and ref.accuracy is not None and mine.accuracy is not None:
        delta = (mine.accuracy - ref.accuracy) * 100
        agreement = f", agreement {mine.agreement:.2%}" if mine.agreement is not None else ""
        targets.append(Target(name, delta, -0.5, "pt", delta >= -0.5,
                              f"{mode}: {mine.accuracy:.2%} vs {ref.accuracy:.2%}{agreement}"))
    else:
        targets.append(Target(name, None, -0.5, "pt", None, "needs labelled --data"))
    return targets


def _workloads_of(runs: tuple[RunResult, ...]) -> list[Workload]:
    return list(dict.fromkeys(r.workload for r in runs))


def _mean_tokens(model: PreparedModel, dataset: Dataset) -> float:
    from onnxguard._tokenize import load_tokenizer

    tokenizer = load_tokenizer(model.tokenizer_path.read_text(encoding="utf-8"),
                               model.max_length)
    lengths = [len(e.ids) for e in tokenizer.encode_batch(list(dataset.texts))]
    return round(float(np.mean(lengths)), 1) if lengths else 0.0


def machine_info(threads: int) -> dict[str, Any]:
    """What a reader needs to compare figures: CPU, cores, threads used, versions, date."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    ident: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                cpu = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key in ("cpu family", "model", "cache size") and key not in ident:
                ident[key] = value.strip()
    if ident:
        cpu += " (" + ", ".join(f"{k} {v}" for k, v in ident.items()) + ")"
    memory = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    versions = {}
    for package in ("onnxguard", "onnxruntime", "torch", "transformers", "onnx", "numpy",
                    "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count() or 0, "available_cpus": available,
        "threads_used": threads, "memory_bytes": memory,
        "simd": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
                 if f in flags],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "versions": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_start": _loadavg(),
    }


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
