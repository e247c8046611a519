"""The build pipeline: source → scan → export → validate → optimize → quantize → scan → bundle.

Each stage is a function in its own module; this one orders them, times them, reports progress,
and writes the bundle atomically (a staging directory beside the output, renamed into place only
when every check passed).  Whatever fails, nothing half-written is left behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from onnxguard import __version__
from onnxguard.bundle import (
    FP32_MODEL_NAME,
    MODEL_NAME,
    TOKENIZER_NAME,
    Manifest,
    file_entries,
    prepare_output,
    publish,
    staging_dir,
    write_manifest,
)
from onnxguard.convert.export import OPSET, export_onnx, load_torch_model
from onnxguard.convert.optimize import optimize
from onnxguard.convert.profile import session_profile
from onnxguard.convert.quantize import QuantizeMode
from onnxguard.convert.select import Decision, choose, speed_feeds
from onnxguard.convert.validate import (
    Reference,
    Tolerance,
    ValidationData,
    ValidationResult,
    builtin_data,
    compare,
    compute_reference,
    make_cases,
    read_text_lines,
    read_validation_data,
    run_onnx,
)
from onnxguard.drift import Reference as DriftReference
from onnxguard.errors import MissingTokenizerError, UsageError, ValidationFailedError
from onnxguard.scan._rules import Severity
from onnxguard.source import ResolvedSource, resolve_source
from onnxguard.tasks import (
    ArchitectureSpec,
    PoolingSpec,
    PromptSpec,
    Task,
    architecture_for,
    detect_pooling,
    detect_prompts,
    resolve_task,
)

TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")
SLOW_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                        "sentencepiece.bpe.model", "spm.model")


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs; safe defaults (CLI flags map 1:1 onto these fields)."""

    out: Path
    source: str | None = None
    revision: str | None = None
    task: str | None = None
    quantize: QuantizeMode = QuantizeMode.DYNAMIC
    calibration: Path | None = None
    validation_data: Path | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    max_length: int | None = None
    opset: int = OPSET
    force: bool = False
    keep_fp32: bool = False
    """Also ship the optimized fp32 graph as model.fp32.onnx when int8 ships."""
    allow_pickle: bool = False
    sign_key: Path | None = None
    name: str | None = None
    scan_fail_on: Severity = Severity.HIGH


@dataclass(frozen=True)
class StageEvent:
    stage: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class BuildResult:
    bundle: Path
    manifest: Manifest
    stage_seconds: dict[str, float]
    total_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "task": self.manifest.task,
            "precision": self.manifest.precision,
            "stage_seconds": {k: round(v, 2) for k, v in self.stage_seconds.items()},
            "total_seconds": round(self.total_seconds, 2),
            "manifest": self.manifest.to_dict(),
        }


Progress = Callable[[StageEvent], None]


@dataclass
class _Timer:
    progress: Progress | None
    seconds: dict[str, float] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    def done(self, stage: str, detail: str = "") -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self._start
        self._start = now
        if self.progress:
            self.progress(StageEvent(stage, self.seconds[stage], detail))


@dataclass(frozen=True)
class _Model:
    """What the source stage learns about the model (before anything is exported)."""

    source: ResolvedSource
    scan: Any
    config: dict[str, Any]
    spec: ArchitectureSpec
    task: Task
    pooling: PoolingSpec | None
    prompts: PromptSpec | None
    input_names: list[str]
    max_length: int
    tokenizer_json: str
    tokenizer: Any


@dataclass(frozen=True)
class _Graphs:
    """The fp32 graphs, their checks, and the PyTorch reference every graph is judged against."""

    exported: Any
    optimized: Any
    reference: Reference
    export_check: ValidationResult
    fp32_check: ValidationResult


def build_bundle(config: BuildConfig, progress: Progress | None = None) -> BuildResult:
    """Build, validate and write a bundle; raises an OnnxGuardError subclass on any failure."""
    started = time.perf_counter()
    timer = _Timer(progress)
    out = Path(config.out)
    prepare_output(out, force=config.force)
    if config.validation_data:  # unreadable data fails before the slow stages
        read_text_lines(config.validation_data, "validation")
    calibration = read_text_lines(config.calibration, "calibration") if config.calibration else []
    if config.quantize is QuantizeMode.STATIC and not calibration:
        raise UsageError(
            "--quantize static needs --calibration FILE",
            hint="pass a text file with one representative input per line (100-500 lines)",
        )
    model = _source_stage(config, timer)
    data = (read_validation_data(config.validation_data, _labels(model.config))
            if config.validation_data else builtin_data())
    config = _with_builtin_recall_margin(config, model.task)
    with tempfile.TemporaryDirectory(prefix="onnxguard-build-") as work_str, \
            staging_dir(out) as staged:
        work = Path(work_str)
        graphs = _fp32_stages(config, model, data, work, timer)
        decision = _quantize_stage(config, model, graphs, work, calibration, timer)
        manifest = _bundle_stage(config, model, graphs, decision, data, staged, timer)
        if config.sign_key is not None:
            from onnxguard.integrity.signing import sign_bundle

            sign_bundle(staged, config.sign_key)
            timer.done("sign", f"model.sig with {config.sign_key.name}")
        publish(staged, out, force=config.force)
    return BuildResult(out, manifest, timer.seconds, time.perf_counter() - started)


def _source_stage(config: BuildConfig, timer: _Timer) -> _Model:
    """Resolve and scan the source, then work out task, inputs, length and tokenizer."""
    from onnxguard._tokenize import load_tokenizer

    source = resolve_source(config.source, revision=config.revision,
                            allow_pickle=config.allow_pickle)
    timer.done("resolve", f"{source.kind} {source.id}")
    source_scan = _scan(source.path, config, source.kind == "hub")
    timer.done("scan", f"source: {_scan_line(source_scan)}")
    model_config = source.config
    spec = architecture_for(model_config)
    task = resolve_task(source.path, model_config, config.task)
    pooling = detect_pooling(source.path) if task is Task.FEATURE_EXTRACTION else None
    prompts = detect_prompts(source.path) if task is Task.FEATURE_EXTRACTION else None
    input_names = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if spec.uses_token_type_ids(model_config) else []
    )
    max_length = _max_length(source, model_config, spec, config.max_length)
    tokenizer_json = _tokenizer_json(source.path, max_length)
    return _Model(source, source_scan, model_config, spec, task, pooling, prompts, input_names,
                  max_length, tokenizer_json, load_tokenizer(tokenizer_json, max_length))


def _fp32_stages(
    config: BuildConfig, model: _Model, data: ValidationData, work: Path, timer: _Timer
) -> _Graphs:
    """Export, check against PyTorch, fuse, check again: an fp32 mismatch fails the build."""
    export_model = load_torch_model(model.source.path, model.task,
                                    allow_pickle=config.allow_pickle)
    exported = export_onnx(
        export_model, task=model.task, input_names=model.input_names, pooling=model.pooling,
        out_path=work / "model.export.onnx", opset=config.opset,
        vocab_size=int(model.config.get("vocab_size", 100)),
    )
    del export_model
    timer.done("export", f"{exported.exporter} exporter, opset {exported.opset}")
    reference = _reference(model, data, config.allow_pickle)
    export_check = _validate(exported.path, "export-fp32", model.task, reference, config, False)
    timer.done("validate", _metrics_line(export_check))
    optimized = optimize(exported.path, work / FP32_MODEL_NAME, model.spec, model.config)
    fp32_check = _validate(optimized.path, "optimized-fp32", model.task, reference, config,
                           False)
    timer.done("optimize", optimized.to_dict()["summary"])
    return _Graphs(exported, optimized, reference, export_check, fp32_check)


BUILTIN_EMBEDDING_MIN_RECALL = 0.975
"""Without the user's texts, int8 embeddings must keep recall@10 >= 0.975 on the built-in set.

The built-in texts span many domains, which flatters neighbour rankings: a graph loses about
1.5-2x as many of PyTorch's ten nearest neighbours on SST-2 dev (one domain, never seen by the
build) as on the built-in selection split.  Measured on the default model (selection -> SST-2):
``dynamic-int8`` 0.910 -> 0.846, ``dynamic-int8-attention-only`` 0.960 -> 0.922, per-token
variants 0.966 -> 0.950, 0.969 -> 0.949, 0.973 -> 0.952 (0.957), and every variant at >= 0.974
kept >= 0.960 (``dynamic-int8-smooth-per-token``: 0.978 -> 0.964).  Because that constant was
set looking at SST-2, it was checked on texts that chose nothing: 1,246 first sentences of Python
standard-library docstrings (another domain) keep recall@10 0.980 with the shipped candidate.
So 0.975 on the built-in set stands for the 0.95 budget on unseen text; ``--validation-data``
with texts like the user's decides with the plain budget.  A ``--min-recall`` other than the
default is taken as given."""


def _with_builtin_recall_margin(config: BuildConfig, task: Task) -> BuildConfig:
    tolerance = config.tolerance
    if (task is not Task.FEATURE_EXTRACTION or config.validation_data is not None
            or tolerance.min_recall != Tolerance().min_recall):
        return config
    return replace(config, tolerance=replace(tolerance, min_recall=BUILTIN_EMBEDDING_MIN_RECALL))


def _quantize_stage(
    config: BuildConfig, model: _Model, graphs: _Graphs, work: Path, calibration: list[str],
    timer: _Timer,
) -> Decision:
    """Every candidate through the gate; the cheapest within budget ships (see select)."""
    def validate(path: Path, name: str) -> ValidationResult:
        return _validate(path, name, model.task, graphs.reference, config, True)

    decision = choose(
        graphs.optimized.path, work, model.task, graphs.reference, config.tolerance,
        config.quantize, validate,
        _calibration_feeds(model.tokenizer, model.input_names, calibration, model.task),
    )
    profile = session_profile(decision.path, speed_feeds(graphs.reference))
    decision.record["shipped_graph"] = profile
    top = ", ".join(f"{op} {share:.0%}" for op, share in list(profile["op_share"].items())[:4])
    decision.record["summary"] = f"{decision.record['decision']}; kernel time at batch 8: {top}"
    timer.done("quantize", decision.record["decision"])
    return decision


def _bundle_stage(
    config: BuildConfig, model: _Model, graphs: _Graphs, decision: Decision,
    data: ValidationData, staged: Path, timer: _Timer,
) -> Manifest:
    """Copy the shipped files, scan them, and write the manifest (still in staging)."""
    shutil.copyfile(decision.path, staged / MODEL_NAME)
    if config.keep_fp32 and decision.path != graphs.optimized.path:
        shutil.copyfile(graphs.optimized.path, staged / FP32_MODEL_NAME)
    (staged / TOKENIZER_NAME).write_text(model.tokenizer_json, encoding="utf-8")
    for extra in TOKENIZER_EXTRAS:
        if (model.source.path / extra).is_file():
            shutil.copyfile(model.source.path / extra, staged / extra)
    stages = {
        "export": graphs.exported.to_dict(),
        "validation": _validation_record(config, graphs, data),
        "optimization": graphs.optimized.to_dict(),
        "quantization": decision.record,
    }
    manifest = Manifest(
        name=config.name or _bundle_name(model.source),
        task=model.task,
        inputs=tuple(model.input_names),
        outputs=graphs.exported.output_names,
        max_length=model.max_length,
        labels=(_labels(model.config)
                if model.task not in (Task.FEATURE_EXTRACTION, Task.QUESTION_ANSWERING) else ()),
        pooling=model.pooling,
        prompts=model.prompts,
        precision=decision.precision,
        source=model.source.to_dict() | {"model_type": model.spec.model_type},
        tools=_tool_versions(),
        stages=stages,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    manifest = replace(manifest, drift_reference=_drift_reference(model, decision.path, data))
    timer.done("drift", f"reference statistics of {len(data.texts)} texts through the shipped "
               "graph")
    manifest = replace(manifest, files=file_entries(
        staged, [p.name for p in staged.iterdir() if p.is_file()]
    ))
    bundle_scan = _scan(staged, config, False)
    manifest = replace(manifest, stages=manifest.stages | {"scan": {
        "source": model.scan.summary(), "bundle": bundle_scan.summary(),
        "fail_on": config.scan_fail_on,
        "summary": f"source {_scan_line(model.scan)}; bundle {_scan_line(bundle_scan)}",
    }})
    write_manifest(staged, manifest)
    timer.done("bundle", f"{len(manifest.files)} files; scan: {_scan_line(bundle_scan)}")
    return manifest


def _validation_record(
    config: BuildConfig, graphs: _Graphs, data: ValidationData
) -> dict[str, Any]:
    shape_cases = sum(len(c.texts) for c in graphs.reference.cases if c.split is None)
    return {
        "export_fp32": graphs.export_check.to_dict(),
        "optimized_fp32": graphs.fp32_check.to_dict(),
        "tolerance": vars(config.tolerance),
        **data.describe(),
        "sequences": graphs.fp32_check.sequences,
        "summary": f"{len(data.texts)} texts ({data.source}"
                   f"{', labelled' if data.labels is not None else ''}) + {shape_cases} "
                   f"shape-case sequences = {graphs.fp32_check.sequences} sequences per graph",
        "reference_seconds": round(graphs.reference.seconds, 2),
    }


def _drift_reference(model: _Model, shipped: Path, data: ValidationData) -> DriftReference:
    """Drift statistics of the validation texts through the shipped graph, tokenized and run
    as the server does (``runtime.rows_per_text``), so live windows compare like with like.
    A reranker sees each text paired with the next, as in validation; question answering, a
    question about each text with the text as its context."""
    import numpy as np
    import onnxruntime as ort

    from onnxguard._tokenize import pad_batch, pad_id_of, unk_id_of
    from onnxguard.convert.validate import qa_pairs
    from onnxguard.drift import reference_from
    from onnxguard.runtime import rows_per_text

    texts = list(data.texts)
    items: list[Any] = texts
    if model.task is Task.RERANKING:
        items = [(t, texts[(i + 1) % len(texts)]) for i, t in enumerate(texts)]
    elif model.task is Task.QUESTION_ANSWERING:
        items = qa_pairs(texts)
    encodings = model.tokenizer.encode_batch(items)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(shipped), opts, providers=["CPUExecutionProvider"])
    pad, outputs = pad_id_of(model.tokenizer), [o.name for o in session.get_outputs()]

    def run(batch: Any) -> Any:  # as Engine.run_batch: several outputs stacked on a last axis
        out = session.run(outputs, pad_batch(batch, model.input_names, pad))
        return out[0] if len(out) == 1 else np.stack(out, axis=-1)

    rows = rows_per_text(run, encodings, 32, model.task)
    return reference_from(encodings, rows, model.task, unk_id_of(model.tokenizer))


def _scan(path: Path, config: BuildConfig, hub_cache: bool) -> Any:
    """Scan before anything is loaded (source) or published (bundle); fail closed."""
    from onnxguard.scan import ScanConfig, enforce, scan_path

    # A Hugging Face cache snapshot is a tree of symlinks into its own blobs/ directory.
    roots = (path.parent.parent / "blobs",) if hub_cache else ()
    report = scan_path(path, ScanConfig(fail_on=config.scan_fail_on,
                                        allowed_symlink_roots=roots))
    enforce(report, config.scan_fail_on)
    return report


def _scan_line(report: Any) -> str:
    summary = report.summary()
    found = ", ".join(f"{k} {v}" for k, v in summary["findings"].items() if v) or "no findings"
    return f"{summary.get('files_scanned', '?')} files, {found}"


def _reference(model: _Model, data: ValidationData, allow_pickle: bool) -> Reference:
    """PyTorch outputs from a freshly loaded model (an exported module can drift)."""
    from onnxguard.convert.export import _TaskWrapper

    fresh = load_torch_model(model.source.path, model.task, allow_pickle=allow_pickle)
    wrapper = _TaskWrapper(fresh, model.task, model.pooling, model.input_names).eval()
    cases = make_cases(data, model.max_length, pairs=model.task is Task.RERANKING,
                       questions=model.task is Task.QUESTION_ANSWERING)
    return compute_reference(wrapper, model.tokenizer, model.input_names, cases, data.labels)


def _validate(
    path: Path, graph: str, task: Task, reference: Reference, config: BuildConfig,
    quantized: bool,
) -> ValidationResult:
    result = compare(graph, task, reference, run_onnx(path, reference), quantized=quantized,
                     tolerance=config.tolerance)
    if not quantized and not result.passed:
        raise ValidationFailedError(
            f"{graph} graph does not match PyTorch: {result.reason}",
            hint="this is an exporter/optimizer problem for this model; run with --verbose and "
            "report it with the model's config.json",
            validation=result.to_dict(),
        )
    return result


def _calibration_feeds(
    tokenizer: Any, input_names: list[str], texts: list[str], task: Task | None = None
) -> list[Any]:
    """Batches of 8 calibration texts; a reranker sees each text paired with the next, a
    question-answering model each text as the context of a question about it."""
    from onnxguard._tokenize import pad_batch, pad_id_of
    from onnxguard.convert.validate import qa_pairs

    pad = pad_id_of(tokenizer)
    items: list[Any] = list(texts)
    if task is Task.RERANKING and texts:
        items = [(t, texts[(i + 1) % len(texts)]) for i, t in enumerate(texts)]
    elif task is Task.QUESTION_ANSWERING:
        items = qa_pairs(texts)
    return [
        pad_batch(tokenizer.encode_batch(items[i:i + 8]), input_names, pad)
        for i in range(0, len(items), 8)
    ]


def _metrics_line(r: ValidationResult) -> str:
    parts = [f"max|Δ|={r.max_abs_diff:.2g}", f"min cos={r.min_cosine:.5f}"]
    if r.agreement is not None:
        parts.append(f"top-1 agreement={r.agreement:.2%}")
    return ", ".join(parts) + f" on {r.sequences} sequences (texts + shape cases)"


def _max_length(
    source: ResolvedSource, cfg: dict[str, Any], spec: ArchitectureSpec, override: int | None
) -> int:
    """The model's own limit: sentence-transformers > tokenizer > position embeddings."""
    limit = int(cfg.get("max_position_embeddings", 512)) - spec.position_offset
    if override:
        if override > limit:
            raise UsageError(f"--max-length {override} exceeds the model's limit {limit}",
                             hint=f"use at most {limit}")
        return override
    for file_name, keys in (
        ("sentence_bert_config.json", ("max_seq_length",)),
        (TOKENIZER_NAME, ("truncation", "max_length")),
        ("tokenizer_config.json", ("model_max_length",)),
    ):
        value = _json_field(source.path / file_name, *keys)
        if isinstance(value, int) and 0 < value < 100_000:
            return min(limit, value)
    return limit


def _json_field(path: Path, *keys: str) -> Any:
    """A nested field of a JSON file, or None when the file or field is missing."""
    import json

    try:
        value: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _tokenizer_json(model_dir: Path, max_length: int) -> str:
    """tokenizer.json with padding off and truncation at max_length (made if only slow files)."""
    from tokenizers import Tokenizer

    path = model_dir / TOKENIZER_NAME
    if path.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # Rust-side parse errors
            raise MissingTokenizerError(
                f"{path} cannot be parsed: {exc}",
                hint="restore tokenizer.json from the model's source",
            ) from exc
    else:
        tokenizer = _convert_slow_tokenizer(model_dir)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    text: str = tokenizer.to_str(pretty=False)
    return text


def _convert_slow_tokenizer(model_dir: Path) -> Any:
    """Make a fast tokenizer from vocab files with transformers (no remote code)."""
    vocab_files = [p.name for p in model_dir.iterdir()
                   if p.name in SLOW_TOKENIZER_FILES or p.suffix == ".model"]
    if not vocab_files:
        raise MissingTokenizerError(
            f"{model_dir} has no tokenizer: neither tokenizer.json nor vocabulary files "
            f"({', '.join(SLOW_TOKENIZER_FILES)}, *.model)",
            hint="copy the model's tokenizer files (tokenizer.json, or vocab.txt / "
            "tokenizer.model with tokenizer_config.json) into the directory",
        )
    try:
        from transformers import AutoTokenizer

        slow = AutoTokenizer.from_pretrained(
            str(model_dir), use_fast=True, trust_remote_code=False, local_files_only=True
        )
        backend = getattr(slow, "backend_tokenizer", None) or getattr(slow, "_tokenizer", None)
    except Exception as exc:  # transformers raises OSError/ValueError/TypeError here
        raise MissingTokenizerError(
            f"{model_dir} has no tokenizer.json and no tokenizer files to make one from "
            f"({type(exc).__name__})",
            hint="add the model's tokenizer.json (or vocab.txt / tokenizer.model) to the "
            "directory",
        ) from exc
    if backend is None or backend.get_vocab_size() <= 10:
        raise MissingTokenizerError(
            f"the tokenizer in {model_dir} has no fast (Rust) version",
            hint="add a tokenizer.json made with `tokenizer.save_pretrained` on a fast tokenizer",
        )
    return backend


def _labels(cfg: dict[str, Any]) -> tuple[str, ...]:
    id2label = cfg.get("id2label") or {}
    try:
        return tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    except (ValueError, TypeError):
        return tuple(str(v) for v in id2label.values())


def _bundle_name(source: ResolvedSource) -> str:
    raw = source.id.rstrip("/").split("/")[-1]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw).strip("-.") or "model"


def _tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    return {
        "onnxguard": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
    }
