"""What gets benchmarked: the graphs of a SOURCE (made with the build's own stages) or a BUNDLE.

SOURCE: export once with the build's exporter, fuse with its optimizer, quantize with its
quantizer (the candidates named on the command line) — the same code paths ``onnxguard build``
runs, so the figures describe what a build ships.  BUNDLE: its hash-checked ``model.onnx`` (and
``model.fp32.onnx``), plus the PyTorch baseline from the manifest's source directory when that
is on this machine and its files still match the manifest's sha256.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxguard.bench._flops import FlopModel, count_flops
from onnxguard.bundle import (
    FP32_MODEL_NAME,
    MANIFEST_NAME,
    TOKENIZER_NAME,
    Manifest,
    read_manifest,
    read_verified,
    sha256_file,
)
from onnxguard.errors import UsageError
from onnxguard.tasks import PoolingSpec, Task

PYTORCH = "pytorch"
ORT_PLAIN = "ort-fp32"
ORT_OPT = "ort-fp32-opt"
ORT_INT8_DYNAMIC = "ort-int8-dynamic"
ORT_INT8_STATIC = "ort-int8-static"
DEFAULT_INT8 = ("dynamic-int8",)
STATIC_CANDIDATE = "static-int8-qdq"


@dataclass(frozen=True)
class EngineSpec:
    """One engine to measure: where its model is and how to describe it."""

    id: str
    label: str
    kind: str  # "pytorch" | "onnxruntime"
    precision: str
    path: Path
    """ONNX file, or the model directory for PyTorch."""
    description: str
    file_bytes: int
    graph_ops: dict[str, int] = field(default_factory=dict)
    disabled_optimizers: tuple[str, ...] = ()
    """ONNX Runtime graph transformers switched off for this engine's session."""
    role: str = "baseline"
    """baseline (PyTorch, fp32 graphs) | shipped (the bundle's model.onnx) | candidate (an int8
    graph a SOURCE bench quantized without the build's gate: reported apart, never headlined)."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "kind": self.kind,
                "precision": self.precision, "description": self.description,
                "file_bytes": self.file_bytes, "graph_ops": self.graph_ops,
                "disabled_optimizers": list(self.disabled_optimizers), "role": self.role}


@dataclass(frozen=True)
class PreparedModel:
    """Everything the workers need, and what the report says about the model."""

    name: str
    origin: str  # "source" | "bundle"
    task: Task
    input_names: tuple[str, ...]
    max_length: int
    labels: tuple[str, ...]
    pooling: PoolingSpec | None
    tokenizer_path: Path
    engines: tuple[EngineSpec, ...]
    flops: FlopModel
    fusion: dict[str, int]
    stage_seconds: dict[str, float]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "task": self.task.value,
                "inputs": list(self.input_names), "max_length": self.max_length,
                "labels": list(self.labels),
                "pooling": self.pooling.to_dict() if self.pooling else None,
                "flops": self.flops.to_dict(), "fused_operators": self.fusion,
                "prepare_seconds": {k: round(v, 2) for k, v in self.stage_seconds.items()},
                "notes": list(self.notes)}


Step = Callable[[str], None]


def is_bundle(target: str | None) -> bool:
    return target is not None and (Path(target) / MANIFEST_NAME).is_file()


def prepare(
    target: str | None,
    work: Path,
    *,
    task: str | None = None,
    int8: Sequence[str] = DEFAULT_INT8,
    calibration: Sequence[str] = (),
    step: Step | None = None,
    layernorm: str = "fused",
) -> PreparedModel:
    """Produce (SOURCE) or verify and copy (BUNDLE) every graph into ``work``.

    ``layernorm="unfused"`` then splits SkipLayerNormalization in every ONNX graph (see
    ``_unfuse``); the default measures the graphs exactly as the build makes them.
    """
    if layernorm not in ("fused", "unfused"):
        raise UsageError(f"--layernorm {layernorm!r}", hint="choose fused or unfused")
    if is_bundle(target):
        assert target is not None
        model = _prepare_bundle(Path(target), work, step or (lambda _s: None))
    else:
        model = _prepare_source(target, work, task, int8, calibration,
                                step or (lambda _s: None))
    return _unfused(model, step) if layernorm == "unfused" else model


def _unfused(model: PreparedModel, step: Step | None) -> PreparedModel:
    from dataclasses import replace

    from onnxguard.convert.unfuse import unfuse_skip_layernorm

    if step:
        step("splitting SkipLayerNormalization")
    engines = []
    for engine in model.engines:
        if engine.kind != "onnxruntime":
            engines.append(engine)
            continue
        dst = engine.path.with_name(engine.path.stem + ".unfused-ln.onnx")
        count = unfuse_skip_layernorm(engine.path, dst)
        note = (f"; {count} SkipLayerNormalization split into Add + Sum + LayerNormalization"
                if count else "")
        engines.append(replace(
            engine, path=dst, description=engine.description + note,
            file_bytes=dst.stat().st_size, graph_ops=graph_ops(dst)))
    return replace(model, engines=tuple(engines), notes=(
        *model.notes, "--layernorm unfused: SkipLayerNormalization split into Add + Sum + "
        "LayerNormalization in every ONNX graph (int8 candidates are built that way already)"))


def _prepare_source(
    target: str | None, work: Path, task_name: str | None, int8: Sequence[str],
    calibration: Sequence[str], step: Step,
) -> PreparedModel:
    import time

    from onnxguard.convert.export import export_onnx, load_torch_model
    from onnxguard.convert.optimize import optimize
    from onnxguard.convert.pipeline import _max_length, _tokenizer_json
    from onnxguard.source import resolve_source
    from onnxguard.tasks import architecture_for, detect_pooling, detect_task, parse_task

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    step("resolving source")
    source = resolve_source(target)
    cfg = source.config
    spec = architecture_for(cfg)
    task = parse_task(task_name) if task_name else detect_task(source.path, cfg)
    pooling = detect_pooling(source.path) if task is Task.FEATURE_EXTRACTION else None
    inputs = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if spec.uses_token_type_ids(cfg) else [])
    max_length = _max_length(source, cfg, spec, None)
    tokenizer_path = work / TOKENIZER_NAME
    tokenizer_json = _tokenizer_json(source.path, max_length)
    tokenizer_path.write_text(tokenizer_json, encoding="utf-8")

    step("exporting to ONNX")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = load_torch_model(source.path, task)
    exported = export_onnx(model, task=task, input_names=inputs, pooling=pooling,
                           out_path=work / "model.export.onnx",
                           vocab_size=int(cfg.get("vocab_size", 100)))
    del model
    gc.collect()
    seconds["export"] = time.perf_counter() - started
    step("fusing with the transformer optimizer")
    t0 = time.perf_counter()
    optimized = optimize(exported.path, work / "model.opt.onnx", spec, cfg)
    seconds["optimize"] = time.perf_counter() - t0

    weights = sum(p.stat().st_size for p in source.path.glob("*.safetensors"))
    engines = [
        EngineSpec(PYTORCH, "PyTorch fp32", "pytorch", "fp32", source.path,
                   "transformers eager-mode forward, fresh model, default attention",
                   weights),
        _ort_engine(ORT_PLAIN, "ORT fp32", "fp32", exported.path,
                    f"plain {exported.exporter} export, no transformer fusions"),
        _ort_engine(ORT_OPT, "ORT fp32 optimized", "fp32", optimized.path,
                    "transformer optimizer fusions: " + optimized.to_dict()["summary"]),
    ]
    notes = list(exported.diagnostics) + list(optimized.notes)
    engines += _quantize(optimized.path, work, int8, calibration, tokenizer_json, max_length,
                         inputs, step, seconds)
    flops = count_flops(exported.path, spec.hidden_size(cfg))
    return PreparedModel(
        name=source.id, origin="source", task=task, input_names=tuple(inputs),
        max_length=max_length, labels=_labels(cfg) if task is not Task.FEATURE_EXTRACTION else (),
        pooling=pooling, tokenizer_path=tokenizer_path, engines=tuple(engines), flops=flops,
        fusion={k: v for k, v in optimized.fused.items() if v}, stage_seconds=seconds,
        notes=tuple(notes),
    )


def _quantize(
    fp32: Path, work: Path, names: Sequence[str], calibration: Sequence[str],
    tokenizer_json: str, max_length: int, inputs: list[str], step: Step,
    seconds: dict[str, float],
) -> list[EngineSpec]:
    import time

    from onnxguard.convert.quantize import (
        DYNAMIC_CANDIDATES,
        STATIC_CANDIDATES,
        QuantizeMode,
        quantize_candidates,
    )

    known = {c.name: c for c in (*DYNAMIC_CANDIDATES, *STATIC_CANDIDATES)}
    wanted = list(dict.fromkeys(names))
    if calibration and STATIC_CANDIDATE not in wanted:
        wanted.append(STATIC_CANDIDATE)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UsageError(f"unknown int8 candidate(s): {', '.join(unknown)}",
                         hint=f"choose from {', '.join(known)}")
    engines: list[EngineSpec] = []
    dynamic_seen = static_seen = 0
    for name in wanted:
        candidate = known[name]
        static = candidate.kind is QuantizeMode.STATIC
        if static and not calibration:
            raise UsageError(f"{name} needs calibration data",
                             hint="pass --calibration FILE (one representative text per line)")
        step(f"quantizing ({name})")
        t0 = time.perf_counter()
        feeds: list[Any] = []
        if static or candidate.smooth_per_token:
            from onnxguard._tokenize import load_tokenizer
            from onnxguard.convert.gate import Split, split_of
            from onnxguard.convert.pipeline import _calibration_feeds
            from onnxguard.convert.validate import builtin_sentences

            tokenizer = load_tokenizer(tokenizer_json, max_length)
            # smoothing statistics: --calibration texts, else the built-in selection split,
            # as the build does without --validation-data
            texts = list(calibration) or [t for t in builtin_sentences()
                                          if split_of(t) is Split.SELECTION]
            feeds = _calibration_feeds(tokenizer, inputs, texts)
        with _quiet_root_logger():
            out = next(quantize_candidates(fp32, work, [candidate], feeds)).path
        seconds[f"quantize:{name}"] = time.perf_counter() - t0
        base = ORT_INT8_STATIC if static else ORT_INT8_DYNAMIC
        count = static_seen if static else dynamic_seen
        engine_id = base if count == 0 else f"{base}-{count + 1}"
        if static:
            static_seen += 1
        else:
            dynamic_seen += 1
        label = f"ORT int8 ({name})"
        engines.append(_ort_engine(engine_id, label, "int8", out,
                                   f"{name}: {candidate.description}", role="candidate"))
    return engines


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's quantizer warns on the root logger ("consider pre-processing"); keep the bar clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _prepare_bundle(bundle: Path, work: Path, step: Step) -> PreparedModel:
    """Hash-checked copies of the bundle's graphs (what runs is what the manifest lists)."""
    step("verifying bundle")
    manifest = read_manifest(bundle)
    if manifest.encryption is not None:
        raise UsageError(
            f"bundle {bundle} is encrypted; the benchmark does not write decrypted models to disk",
            hint="benchmark the bundle before `onnxguard encrypt`, or its decrypted copy",
        )
    task = Task(manifest.task)
    tokenizer_path = work / TOKENIZER_NAME
    tokenizer_path.write_bytes(read_verified(bundle, manifest, TOKENIZER_NAME))
    engines: list[EngineSpec] = []
    notes: list[str] = []
    torch_dir = _bundle_source(manifest, notes)
    if torch_dir is not None:
        weights = sum(p.stat().st_size for p in torch_dir.glob("*.safetensors"))
        engines.append(EngineSpec(PYTORCH, "PyTorch fp32", "pytorch", "fp32", torch_dir,
                                  "transformers eager-mode forward, fresh model from the "
                                  "manifest's source (sha256-checked)", weights))
    quant = manifest.stages.get("quantization", {})
    fp32_path: Path | None = None
    if FP32_MODEL_NAME in manifest.files:
        fp32_path = work / FP32_MODEL_NAME
        fp32_path.write_bytes(read_verified(bundle, manifest, FP32_MODEL_NAME))
        engines.append(_ort_engine(ORT_OPT, "ORT fp32 optimized", "fp32", fp32_path,
                                   "bundle model.fp32.onnx (fused fp32)"))
    model_path = work / manifest.model_file
    model_path.write_bytes(read_verified(bundle, manifest, manifest.model_file))
    if manifest.precision == "int8":
        chosen = str(quant.get("chosen", "int8"))
        engine_id = ORT_INT8_STATIC if chosen.startswith("static") else ORT_INT8_DYNAMIC
        engines.append(_ort_engine(engine_id, f"bundle int8 ({chosen})", "int8", model_path,
                                   f"bundle {manifest.model_file}: {quant.get('decision', '')}",
                                   role="shipped"))
    else:
        engines.append(_ort_engine(ORT_OPT, "bundle fp32", "fp32", model_path,
                                   f"bundle {manifest.model_file} (fp32)", role="shipped"))
    config = _source_config(torch_dir)
    hidden = int(config.get("hidden_size", config.get("dim", 0)) or 0) or None
    flops = count_flops(fp32_path or model_path, hidden)
    fusion = manifest.stages.get("optimization", {}).get("fused_operators", {})
    return PreparedModel(
        name=manifest.name, origin="bundle", task=task, input_names=manifest.inputs,
        max_length=manifest.max_length, labels=manifest.labels,
        pooling=manifest.pooling,
        tokenizer_path=tokenizer_path, engines=tuple(engines), flops=flops,
        fusion={str(k): int(v) for k, v in fusion.items()}, stage_seconds={},
        notes=tuple(notes),
    )


def _bundle_source(manifest: Manifest, notes: list[str]) -> Path | None:
    """The manifest's source directory, if it is here and its files match the recorded sha256."""
    raw = manifest.source.get("path")
    if not raw or not (Path(raw) / "config.json").is_file():
        notes.append("PyTorch baseline skipped: the bundle's source directory "
                     f"({raw or 'not recorded'}) is not on this machine")
        return None
    path = Path(raw)
    recorded = manifest.source.get("files") or {}
    checked = [name for name in recorded
               if name.endswith((".safetensors", "config.json")) and "/" not in name]
    for name in checked:
        file = path / name
        if not file.is_file() or sha256_file(file) != recorded[name].get("sha256"):
            notes.append(f"PyTorch baseline skipped: {file} differs from the file the bundle "
                         "was built from (sha256)")
            return None
    if not checked:
        notes.append("PyTorch baseline skipped: the manifest records no source file hashes")
        return None
    return path


def _source_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    from onnxguard.source import read_config

    return read_config(path)


def _ort_engine(engine_id: str, label: str, precision: str, path: Path,
                description: str, role: str = "baseline") -> EngineSpec:
    return EngineSpec(engine_id, label, "onnxruntime", precision, path, description,
                      path.stat().st_size, graph_ops(path), role=role)


def graph_ops(path: Path) -> dict[str, int]:
    """Node count per operator type (what fused and what was quantized)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _labels(cfg: dict[str, Any]) -> tuple[str, ...]:
    from onnxguard.convert.pipeline import _labels as labels_of

    return labels_of(cfg)
