"""The PyTorch baseline: a fresh transformers model, as a PyTorch user would run it.

Loaded in its own worker process, from safetensors only, never with remote code.  Attention is
transformers' default (SDPA) unless asked otherwise: the strongest plain-PyTorch baseline, not
the eager attention the exporter needs.  Output is the task's (logits, or the pooled embedding
computed exactly as the exported graph does), so agreement is measured like for like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxguard.errors import UnsafeFormatError
from onnxguard.tasks import Pooling, PoolingSpec, Task


def load_baseline(spec: dict[str, Any]) -> tuple[Any, str]:
    """(task wrapper module in eval mode, attention implementation actually used)."""
    from transformers.utils import logging as hf_logging

    from onnxguard.convert.export import _TaskWrapper, _translate_load_error, auto_class

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    model_dir = Path(spec["model_dir"])
    task = Task(spec["task"])
    if not any(model_dir.glob("*.safetensors")):
        raise UnsafeFormatError(
            f"{model_dir} has no safetensors weights; the PyTorch baseline loads only those",
            hint="convert the checkpoint to safetensors, or benchmark without PyTorch "
            "(--engines)",
        )
    attention = str(spec.get("attention") or "sdpa")
    try:
        model = auto_class(task).from_pretrained(
            str(model_dir), attn_implementation=attention, trust_remote_code=False,
            use_safetensors=True, local_files_only=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _translate_load_error(model_dir, exc) from exc
    model.eval()
    used = str(getattr(model.config, "_attn_implementation", attention))
    pooling = spec.get("pooling")
    pooling_spec = (
        PoolingSpec(Pooling(pooling["mode"]), bool(pooling["normalize"]), str(pooling["source"]))
        if pooling else None
    )
    wrapper = _TaskWrapper(model, task, pooling_spec, list(spec["input_names"])).eval()
    return wrapper, used
