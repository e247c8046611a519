"""Fuse the exported graph with ONNX Runtime's transformer optimizer and count what fused.

The fused graph (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) is both
the fp32 model we ship and the input to quantization.  When attention does not fuse (an export
pattern the optimizer does not know), the build still succeeds but the report says so, because
that costs most of the speed-up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxguard.errors import OptimizationError
from onnxguard.tasks import ArchitectureSpec

ATTENTION_OPS = ("Attention", "MultiHeadAttention")


@dataclass(frozen=True)
class OptimizeResult:
    path: Path
    fused: dict[str, int]
    attention_fused: bool
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fused_operators": {k: v for k, v in self.fused.items() if v},
            "attention_fused": self.attention_fused,
            "seconds": round(self.seconds, 2),
            "notes": list(self.notes),
            "summary": ", ".join(f"{k}×{v}" for k, v in self.fused.items() if v)
            + ("" if self.attention_fused else "  (attention NOT fused)"),
        }


def optimize(
    src: Path, dst: Path, spec: ArchitectureSpec, config: dict[str, Any]
) -> OptimizeResult:
    """Run the transformer optimizer (fusions only; ORT applies its graph passes at load)."""
    from onnxruntime.transformers.optimizer import optimize_model

    start = time.perf_counter()
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        optimized = optimize_model(
            str(src),
            model_type=spec.optimizer_model_type,
            num_heads=spec.num_heads(config),
            hidden_size=spec.hidden_size(config),
            opt_level=0,
        )
        fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items()}
        optimized.save_model_to_file(str(dst))
    except Exception as exc:  # the optimizer raises bare exceptions on unknown patterns
        raise OptimizationError(
            f"ONNX Runtime's transformer optimizer failed: {type(exc).__name__}: {exc}",
            hint="run with --verbose; `--no-optimize` ships the unfused graph",
        ) from exc
    attention = any(fused.get(op, 0) for op in ATTENTION_OPS)
    notes = () if attention else (
        "attention was not fused: the optimizer did not recognise this export's attention "
        "pattern, so int8 and fp32 run unfused attention (slower)",
    )
    return OptimizeResult(dst, fused, attention, time.perf_counter() - start, notes)
