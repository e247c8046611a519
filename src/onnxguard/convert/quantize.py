"""int8 quantization candidates; the accuracy gate and the cost model pick the one we ship.

Plain dynamic quantization sits at the edge of an accuracy budget on BERT-size models, so a
build does not take one shot: it produces several candidates (all MatMuls and the fused
Attention int8; per-tensor weights; feed-forward outputs or edge layers kept fp32; the few
projections a sensitivity search finds most harmful kept fp32; smoothed per-token MatMuls with
GPTQ-rounded weights, for rankings that plain int8 breaks (``smoothquant``); static QDQ when
calibration text is given), the gate validates each on the selection split, and the cheapest
by the cost model among those within budget ships.  int8 graphs run with
SkipLayerNormalization split into Add + Sum + LayerNormalization (``unfuse``), whose fused
kernel is int8's bottleneck.  If no candidate meets the budget, the fp32 graph ships and the
manifest says why.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from onnxguard.errors import QuantizationError


class QuantizeMode(StrEnum):
    DYNAMIC = "dynamic"
    STATIC = "static"
    NONE = "none"


# Node-name fragments (TorchScript export names) per architecture family.
FFN_OUT = ("/output/dense/", "/ffn/lin2/", "/ffn_output/")
FFN_IN = ("/intermediate/dense/", "/ffn/lin1/", "/ffn/MatMul")
_LAYER = re.compile(r"/(?:layer|layers|albert_layers)\.(\d+)/")


@dataclass(frozen=True)
class Candidate:
    """One way to quantize: a name for the manifest and the quantizer's options."""

    name: str
    description: str
    kind: QuantizeMode
    op_types: tuple[str, ...]
    keep_fp32: tuple[str, ...] = ()
    """Node-name fragments kept fp32 (attention projections are never matched)."""
    keep_edge_layers: bool = False
    """Keep the first and last encoder layers fp32 (they see the rawest / final features)."""
    keep_nodes: tuple[str, ...] = ()
    """Exact node names kept fp32 (the sensitivity search's picks)."""
    per_channel: bool = True
    unfuse_layernorm: bool = True
    """Split SkipLayerNormalization (opset >= 17) so the int8 graph avoids its slow kernel."""
    smooth_per_token: bool = False
    """Smoothed, per-token, GPTQ-rounded MatMuls (``smoothquant``); needs calibration feeds."""

    def nodes_to_exclude(self, model_path: Path) -> list[str]:
        if not self.keep_fp32 and not self.keep_edge_layers:
            return list(self.keep_nodes)
        import onnx

        graph = onnx.load(str(model_path), load_external_data=False).graph
        nodes = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
        layers = {int(m.group(1)) for n in nodes if (m := _LAYER.search(n.name))}
        edges = {min(layers), max(layers)} if layers and self.keep_edge_layers else set()
        excluded = []
        for node in nodes:
            name = node.name
            match = _LAYER.search(name)
            in_edge = match is not None and int(match.group(1)) in edges
            ffn = "attention" not in name and any(p in name for p in self.keep_fp32)
            if in_edge or ffn or name in self.keep_nodes:
                excluded.append(name)
        return excluded


_MATMULS = ("MatMul", "Attention")
_QATT = (*_MATMULS, "EmbedLayerNormalization")
"""The fused embedding's tables too (QEmbedLayerNormalization): a lookup, so no speed cost, and
the word-embedding table is most of an int8 MiniLM's file (56 MB → 22 MB)."""
FULL_INT8 = Candidate(
    "dynamic-int8",
    "dynamic int8 (u8 activations, s8 per-channel weights): every MatMul, the fused Attention "
    "and the embedding tables quantized; LayerNorm unfused",
    QuantizeMode.DYNAMIC, _QATT,
)
SMOOTH_PER_TOKEN = Candidate(
    "dynamic-int8-smooth-per-token",
    "dynamic int8 MatMuls with SmoothQuant channel scales (alpha 0.5), per-token asymmetric "
    "activations and GPTQ-rounded s8 per-channel weights, calibrated on the selection texts; "
    "fused Attention and embedding tables fp32; LayerNorm unfused",
    QuantizeMode.DYNAMIC, ("MatMul",), smooth_per_token=True,
)
"""For rankings: plain int8 loses MiniLM's nearest neighbours (recall@10 0.85 on unseen text);
this keeps 0.96 at 3.1x PyTorch (see ``smoothquant``)."""
DYNAMIC_CANDIDATES = (
    FULL_INT8,
    Candidate(
        "dynamic-int8-fp32-embeddings",
        "dynamic int8 as dynamic-int8, embedding tables kept fp32; LayerNorm unfused",
        QuantizeMode.DYNAMIC, _MATMULS,
    ),
    Candidate(
        "dynamic-int8-per-tensor",
        "dynamic int8 with one scale per weight tensor (s8); LayerNorm unfused",
        QuantizeMode.DYNAMIC, _QATT, per_channel=False,
    ),
    Candidate(
        "dynamic-int8-ffn-out-fp32",
        "dynamic int8; feed-forward output projections kept fp32 (their post-GELU inputs "
        "have the widest range)",
        QuantizeMode.DYNAMIC, _QATT, keep_fp32=FFN_OUT,
    ),
    Candidate(
        "dynamic-int8-edges-fp32",
        "dynamic int8; feed-forward outputs and the first and last layers kept fp32",
        QuantizeMode.DYNAMIC, _QATT, keep_fp32=FFN_OUT, keep_edge_layers=True,
    ),
    Candidate(
        "dynamic-int8-attention-only",
        "dynamic int8 on attention (QKV and output projections); feed-forward kept fp32",
        QuantizeMode.DYNAMIC, _QATT, keep_fp32=FFN_OUT + FFN_IN,
    ),
    SMOOTH_PER_TOKEN,
)
STATIC_CANDIDATES = (
    Candidate(
        "static-int8-qdq",
        "static int8 (QDQ, u8 activations / s8 per-channel weights), calibrated MinMax",
        QuantizeMode.STATIC,
        ("MatMul",),
    ),
)


@dataclass(frozen=True)
class QuantizedGraph:
    candidate: Candidate
    path: Path
    seconds: float


def candidates_for(mode: QuantizeMode) -> tuple[Candidate, ...]:
    if mode is QuantizeMode.DYNAMIC:
        return DYNAMIC_CANDIDATES
    if mode is QuantizeMode.STATIC:
        return STATIC_CANDIDATES + DYNAMIC_CANDIDATES
    return ()


def keep_fp32_candidate(nodes: Sequence[str]) -> Candidate:
    """Full int8 except ``nodes`` (the most sensitive projections), which stay fp32."""
    return Candidate(
        f"dynamic-int8-keep-{len(nodes)}-fp32",
        f"dynamic int8; the {len(nodes)} most sensitive projection(s) kept fp32 "
        f"({', '.join(nodes)}); LayerNorm unfused",
        QuantizeMode.DYNAMIC, _QATT, keep_nodes=tuple(nodes),
    )


def quantize_candidates(
    fp32_path: Path,
    work_dir: Path,
    candidates: Iterable[Candidate],
    calibration_feeds: Sequence[dict[str, np.ndarray]] = (),
) -> Iterator[QuantizedGraph]:
    """Yield one quantized graph per candidate, in the given order."""
    from onnxguard.convert.unfuse import unfuse_skip_layernorm

    logging.getLogger("root").setLevel(logging.ERROR)
    unfused = work_dir / "model.fp32.unfused-ln.onnx"
    for candidate in candidates:
        out = work_dir / f"model.{candidate.name}.onnx"
        start = time.perf_counter()
        try:
            src = fp32_path
            if candidate.unfuse_layernorm:
                if not unfused.exists():
                    unfuse_skip_layernorm(fp32_path, unfused)
                src = unfused
            if candidate.smooth_per_token:
                from onnxguard.convert.smoothquant import quantize_smooth_per_token

                quantize_smooth_per_token(src, out, calibration_feeds, work_dir)
            elif candidate.kind is QuantizeMode.STATIC:
                _quantize_static(src, out, candidate, calibration_feeds)
            else:
                _quantize_dynamic(src, out, candidate)
        except QuantizationError:
            raise
        except Exception as exc:  # ORT's quantizer raises bare RuntimeError/ValueError
            raise QuantizationError(
                f"quantization {candidate.name} failed: {type(exc).__name__}: {exc}",
                hint="pass --quantize none to ship the fp32 graph",
            ) from exc
        yield QuantizedGraph(candidate, out, time.perf_counter() - start)


def measure_speedup(
    baseline: Path, candidate: Path, feeds: Sequence[dict[str, np.ndarray]], rounds: int = 7
) -> float:
    """Throughput ratio candidate/baseline on the same feeds, interleaved rounds, median.

    Interleaving keeps the ratio honest on a noisy machine; an int8 graph that is not faster
    (tiny models) is not worth its accuracy cost.  This only vetoes int8 against fp32; the
    choice between int8 candidates is the cost model's, which does not flip with the load.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for p in (baseline, candidate)]
    for session in sessions:  # warm-up
        session.run(None, feeds[0])
    ratios = []
    for _ in range(rounds):
        times = []
        for session in sessions:
            start = time.perf_counter()
            for feed in feeds:
                session.run(None, feed)
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / max(times[1], 1e-9))
    return float(np.median(ratios))


def _quantize_dynamic(src: Path, dst: Path, candidate: Candidate) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=candidate.per_channel,
        op_types_to_quantize=list(candidate.op_types),
        nodes_to_exclude=candidate.nodes_to_exclude(src),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _quantize_static(
    src: Path, dst: Path, candidate: Candidate, feeds: Sequence[dict[str, np.ndarray]]
) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not feeds:
        raise QuantizationError(
            "static quantization needs calibration data",
            hint="pass --calibration FILE with one representative text per line",
        )

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    quantize_static(
        str(src),
        str(dst),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(candidate.op_types),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
