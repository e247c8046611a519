"""Export a PyTorch transformer to ONNX in a form ONNX Runtime's optimizer can fuse.

Why this shape: the model is loaded with eager attention (transformers 5's default SDPA exports a
pattern that ORT does not fuse), wrapped so the graph has named keyword inputs and the task's
output (``logits`` or an in-graph pooled ``sentence_embedding``), and exported with dynamic batch
and sequence axes.  The TorchScript exporter gives the classic pattern that fuses into Attention /
SkipLayerNorm / BiasGelu / EmbedLayerNorm; when it fails we fall back to the torch.export-based
exporter and record why.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onnxguard.errors import ExportError, SourceError, UnsafeFormatError
from onnxguard.tasks import Pooling, PoolingSpec, Task

OPSET = 17
TRACE_BATCH = 2
TRACE_SEQUENCE = 16


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str
    opset: int
    seconds: float
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    diagnostics: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "exporter": self.exporter,
            "opset": self.opset,
            "seconds": round(self.seconds, 2),
            "inputs": list(self.input_names),
            "outputs": list(self.output_names),
            "diagnostics": list(self.diagnostics),
        }


def auto_class(task: Task) -> Any:
    """The transformers Auto class of a task's model (the export and the bench's baseline)."""
    import transformers

    return {
        Task.TEXT_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
        Task.TOKEN_CLASSIFICATION: transformers.AutoModelForTokenClassification,
        Task.FEATURE_EXTRACTION: transformers.AutoModel,
        Task.RERANKING: transformers.AutoModelForSequenceClassification,
        Task.QUESTION_ANSWERING: transformers.AutoModelForQuestionAnswering,
    }[task]


def load_torch_model(model_dir: Path, task: Task, *, allow_pickle: bool = False) -> torch.nn.Module:
    """A fresh eval-mode model with eager attention, from safetensors only (unless allowed).

    Never ``trust_remote_code``.  With ``allow_pickle`` (after a clean scan), transformers loads
    ``pytorch_model.bin`` through ``torch.load(weights_only=True)``.
    """
    has_safetensors = any(model_dir.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        raise UnsafeFormatError(
            f"{model_dir} has no safetensors weights"
            + (f", only pickle checkpoints ({', '.join(pickles)})" if pickles else ""),
            hint="convert the checkpoint to safetensors on a trusted machine, or pass "
            "--allow-pickle to load it after the scanner finds it clean",
        )
    for weights in sorted(model_dir.glob("*.safetensors")):
        check_safetensors(weights)
    try:
        model = auto_class(task).from_pretrained(
            str(model_dir),
            attn_implementation="eager",
            trust_remote_code=False,
            use_safetensors=has_safetensors,
            local_files_only=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _translate_load_error(model_dir, exc) from exc
    model.eval()
    loaded: torch.nn.Module = model
    return loaded


def check_safetensors(path: Path) -> None:
    """Parse the header and check the data spans cover the file (cheap; no tensor is read)."""
    from safetensors import safe_open

    from onnxguard.errors import CorruptWeightsError

    try:
        with safe_open(str(path), framework="pt") as handle:
            list(handle.keys())
    except Exception as exc:  # SafetensorError is not an OSError; any failure means corrupt
        raise CorruptWeightsError(
            f"weights {path.name} are corrupt or truncated: {exc}",
            hint="download the model again and compare the file's sha256 with the source",
            file=str(path),
        ) from exc


def _translate_load_error(model_dir: Path, exc: Exception) -> SourceError:
    from onnxguard.errors import CorruptWeightsError

    text = str(exc)
    lowered = text.lower()
    if any(s in lowered for s in ("header", "safetensor", "incomplete", "truncat", "deserializ")):
        return CorruptWeightsError(
            f"weights in {model_dir} are corrupt or truncated: {text.splitlines()[0][:300]}",
            hint="download the model again and compare the file's sha256 with the source",
        )
    return SourceError(
        f"transformers could not load the model in {model_dir}: {text.splitlines()[0][:300]}",
        hint="check that config.json matches the weights and that the files are complete",
    )


class _TaskWrapper(torch.nn.Module):
    """Named inputs in, the task's outputs out (pooling and normalisation in-graph); question
    answering returns (start_logits, end_logits)."""

    def __init__(
        self, model: torch.nn.Module, task: Task, pooling: PoolingSpec | None, inputs: list[str]
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.pooling = pooling
        self.inputs = inputs

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        kwargs = dict(zip(self.inputs, args, strict=True))
        out = self.model(**kwargs)
        if self.task is Task.QUESTION_ANSWERING:
            return out.start_logits, out.end_logits
        if self.task is not Task.FEATURE_EXTRACTION:
            return out.logits  # type: ignore[no-any-return]
        assert self.pooling is not None
        return pool(out.last_hidden_state, kwargs["attention_mask"], self.pooling)


def pool(hidden: torch.Tensor, mask: torch.Tensor, spec: PoolingSpec) -> torch.Tensor:
    """Sentence-transformers pooling, written with ops every exporter supports."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if spec.mode is Pooling.MEAN:
        summed = (hidden * m).sum(dim=1)
        pooled = summed / m.sum(dim=1).clamp(min=1e-9)
    elif spec.mode is Pooling.CLS:
        pooled = hidden[:, 0]
    else:
        pooled = (hidden + (1.0 - m) * -1e9).max(dim=1).values
    if spec.normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
    return pooled


def export_onnx(
    model: torch.nn.Module,
    *,
    task: Task,
    input_names: list[str],
    pooling: PoolingSpec | None,
    out_path: Path,
    opset: int = OPSET,
    vocab_size: int = 100,
) -> ExportResult:
    """Export with dynamic batch/sequence axes; TorchScript exporter first, then dynamo."""
    wrapper = _TaskWrapper(model, task, pooling, input_names).eval()
    sample = _sample_inputs(input_names, vocab_size)
    output_names = list(task.output_names)
    diagnostics: list[str] = []
    start = time.perf_counter()
    for exporter in ("torchscript", "dynamo"):
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                _run_exporter(exporter, wrapper, sample, input_names, output_names, task,
                              out_path, opset)
            return ExportResult(
                path=out_path,
                exporter=exporter,
                opset=opset,
                seconds=time.perf_counter() - start,
                input_names=tuple(input_names),
                output_names=tuple(output_names),
                diagnostics=tuple(diagnostics),
            )
        except Exception as exc:  # each exporter fails in its own way; we report all of them
            diagnostics.append(f"{exporter} exporter failed: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:300] if str(exc) else ''}")
            out_path.unlink(missing_ok=True)
    raise ExportError(
        "torch.onnx export failed with every exporter: " + "; ".join(diagnostics),
        hint="run with --verbose for the traceback; if the architecture is registered this is "
        "a bug worth reporting with the model's config.json",
        diagnostics=diagnostics,
    )


def _sample_inputs(input_names: list[str], vocab_size: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, max(4, min(vocab_size, 1000)), (TRACE_BATCH, TRACE_SEQUENCE),
                        generator=gen)
    mask = torch.ones_like(ids)
    mask[1, TRACE_SEQUENCE // 2:] = 0  # a padded row, so masking is traced too
    by_name = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(by_name[n] for n in input_names)


def _run_exporter(
    exporter: str,
    wrapper: torch.nn.Module,
    sample: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    task: Task,
    out_path: Path,
    opset: int,
) -> None:
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    for output_name in output_names:
        axes[output_name] = {0: "batch", 1: "sequence"} if task.per_token else {0: "batch"}
    if exporter == "torchscript":
        torch.onnx.export(
            wrapper,
            sample,
            str(out_path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        return
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=2, max=8192)
    shapes = tuple({0: batch, 1: seq} for _ in input_names)
    program = torch.onnx.export(
        wrapper,
        sample,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=shapes,
        opset_version=max(opset, 18),
        dynamo=True,
        external_data=False,
    )
    assert program is not None
    program.save(str(out_path))
