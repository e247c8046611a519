"""Smoothed, per-token int8 MatMuls with error-compensated weights (for rankings that break).

Why: plain dynamic int8 quantizes each activation tensor with *one* u8 range for the whole
batch.  On all-MiniLM-L6-v2 that costs retrieval: full int8 keeps recall@10 of PyTorch's
neighbours 0.85 on SST-2 dev (never seen by a build), and its error is the activations' (weights
alone keep 0.97): feed-forward inputs carry channels 14x their median (MiniLM's channels 99 and
63), and one range for a batch of tokens wastes most of the 256 levels on them.  This candidate
fixes the three parts in turn, on every MatMul with a 2-D weight (the fused Attention, whose
score products amplify input error, stays fp32):

1. SmoothQuant (Xiao et al. 2023): per input channel ``s = max|X|^a / max|W_row|^(1-a)``
   (a = 0.5) from calibration tokens; the graph multiplies X by 1/s (one ``Mul``) and the weight
   rows by s, so the product is unchanged and the channel outliers move into the weights.
2. Per-token asymmetric activations: each row of X is mapped to [0, 1] by its own min and range
   (ReduceMin/ReduceMax, Sub, Div) before ONNX Runtime's dynamic quantization, and the output
   is ``range * (Xn @ Wq) + min * colsum(Wq)``.  The column sums are those of the *dequantized*
   weights: with fp32 sums the weight error is multiplied by all-positive ``X - min`` and adds
   up coherently (recall 0.87 instead of 0.96 on SST-2).
3. GPTQ rounding (Frantar et al. 2023) of the smoothed weights: per-output-channel s8 scales as
   ONNX Runtime's, but rows are rounded in order with the error fed forward through the inverse
   of the calibration Gram matrix ``X^T X``, which cuts the weight part of the error.

Calibration statistics (channel maxima and the Gram matrix) come from one pass over the
selection split's texts, never the report split.  Measured on the default model (2 threads,
8 x 128): recall@10 0.978 selection / 0.979 report / 0.964 SST-2 dev, 3.1x PyTorch;
``scripts/emb_int8_experiments.py`` reproduces the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxguard.errors import QuantizationError

SMOOTH_ALPHA = 0.5
"""Migration strength; 0.3-0.85 measured on the built-in selection split, 0.5-0.7 best."""
GPTQ_DAMP = 0.01
"""Dampening of the Gram matrix (share of its mean diagonal), as in the GPTQ paper."""
SCALE_CLIP = (1e-3, 1e3)
TINY_RANGE = "smoothquant/tiny_range"
GRAM_CHUNK_ROWS = 4096
"""Tokens per Gram-matrix product (per-batch rank-160 updates took 10 s of a 20 s build)."""


@dataclass(frozen=True)
class InputStats:
    """Per MatMul input: the channel maxima of |X| and the Gram matrix X^T X (real tokens)."""

    channel_max: np.ndarray
    gram: np.ndarray


def weight_matmuls(model: Any) -> list[Any]:
    """MatMul nodes whose second input is a 2-D initializer used by no other node.

    A weight shared between layers (ALBERT) cannot take one layer's smoothing scales; such
    MatMuls stay fp32 in this candidate.
    """
    from collections import Counter

    dims = {i.name: tuple(i.dims) for i in model.graph.initializer}
    uses = Counter(name for n in model.graph.node for name in n.input)
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.domain in ("", "ai.onnx")
            and len(dims.get(n.input[1], ())) == 2 and uses[n.input[1]] == 1]


def collect_stats(
    src: Path, feeds: Sequence[dict[str, np.ndarray]], work: Path
) -> dict[str, InputStats]:
    """One pass over ``feeds``: statistics of each projection's input, keyed by node name."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if not feeds:
        raise QuantizationError("per-token smoothing needs calibration texts",
                                hint="this candidate calibrates on the validation texts")
    model = onnx.load(str(src), load_external_data=False)
    inputs = {n.name: n.input[0] for n in weight_matmuls(model)}
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                              for t in sorted(set(inputs.values()) - existing))
    tmp = work / "smoothquant.stats.onnx"
    onnx.save(model, str(tmp))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    names = sorted(set(inputs.values()))
    maxima: dict[str, np.ndarray] = {}
    grams: dict[str, np.ndarray] = {}
    pending: dict[str, list[np.ndarray]] = {name: [] for name in names}

    def flush(name: str) -> None:  # one large float32 product, summed in float64
        rows = np.concatenate(pending[name])
        pending[name] = []
        grams[name] = grams.get(name, 0.0) + (rows.T @ rows).astype(np.float64)

    for feed in feeds:
        mask = feed.get("attention_mask")
        for name, value in zip(names, session.run(names, feed), strict=True):
            rows = np.asarray(value, dtype=np.float32)
            if mask is not None and rows.shape[:-1] == mask.shape:
                rows = rows[mask.astype(bool)]  # padding positions are not real tokens
            rows = rows.reshape(-1, rows.shape[-1])
            maxima[name] = np.maximum(maxima.get(name, 0.0), np.abs(rows).max(axis=0))
            pending[name].append(rows)
            if sum(len(r) for r in pending[name]) >= GRAM_CHUNK_ROWS:
                flush(name)
    for name in names:
        if pending[name]:
            flush(name)
    tmp.unlink()
    return {node: InputStats(maxima[x], grams[x]) for node, x in inputs.items()}


def quantize_smooth_per_token(
    src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]], work: Path,
    alpha: float = SMOOTH_ALPHA,
) -> None:
    """Write the smoothed, per-token, GPTQ-rounded int8 graph of ``src`` to ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    stats = collect_stats(src, feeds, work)
    model = onnx.load(str(src), load_external_data=False)
    others = [n.name for n in model.graph.node
              if n.op_type == "MatMul" and n.name not in stats]  # shared weights: fp32
    weights, grams = _smooth(model, stats, alpha)
    _per_token(model, list(weights))
    rewritten = work / "smoothquant.fp32.onnx"
    onnx.save(model, str(rewritten))
    quantize_dynamic(
        str(rewritten), str(dst), weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul"], nodes_to_exclude=others,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    rewritten.unlink()
    _patch_weights(dst, weights, grams)


def _smooth(
    model: Any, stats: dict[str, InputStats], alpha: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Insert X * (1/s) before each projection, scale its weight rows by s (in place).

    Returns the smoothed fp32 weights and the Gram matrices of the smoothed inputs, keyed by
    weight initializer name.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    weights: dict[str, np.ndarray] = {}
    grams: dict[str, np.ndarray] = {}
    nodes = []
    targets = {n.name for n in weight_matmuls(model)}
    for node in model.graph.node:
        if node.name in targets and node.name in stats:
            st = stats[node.name]
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            act = np.maximum(st.channel_max, 1e-5)
            rows = np.maximum(np.abs(w).max(axis=1), 1e-5)
            s = np.clip(act ** alpha / rows ** (1.0 - alpha), *SCALE_CLIP)
            smoothed = w * s[:, None]
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array(smoothed.astype(np.float32), node.input[1]))
            inverse = f"{node.name}/smooth_inverse"
            model.graph.initializer.append(
                numpy_helper.from_array((1.0 / s).astype(np.float32), inverse))
            out = f"{node.name}/smoothed"
            nodes.append(helper.make_node("Mul", [node.input[0], inverse], [out],
                                          name=f"{node.name}/Smooth"))
            node.input[0] = out
            weights[node.input[1]] = smoothed
            grams[node.input[1]] = st.gram / np.outer(s, s)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return weights, grams


def _per_token(model: Any, weight_names: Sequence[str]) -> None:
    """Y = range * (((X - min) / range) @ W) + min * colsum(W), per row of X (in place).

    ``colsum`` starts as the fp32 column sums; ``_patch_weights`` replaces them with those of
    the int8 weights once ONNX Runtime has quantized them.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    wanted = set(weight_names)
    if TINY_RANGE not in inits:
        model.graph.initializer.append(
            numpy_helper.from_array(np.array(1e-30, dtype=np.float32), TINY_RANGE))
    nodes = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in wanted:
            nodes.append(node)
            continue
        b, x, y = node.name, node.input[0], node.output[0]
        w = numpy_helper.to_array(inits[node.input[1]])
        model.graph.initializer.append(
            numpy_helper.from_array(w.sum(axis=0).astype(np.float32), _colsum(node.input[1])))
        nodes += [
            helper.make_node("ReduceMax", [x], [f"{b}/row_max"], axes=[-1], keepdims=1),
            helper.make_node("ReduceMin", [x], [f"{b}/row_min"], axes=[-1], keepdims=1),
            helper.make_node("Sub", [f"{b}/row_max", f"{b}/row_min"], [f"{b}/row_spread"]),
            # a constant row (range 0) gives 0 / tiny = 0 and then exactly min * colsum
            helper.make_node("Max", [f"{b}/row_spread", TINY_RANGE], [f"{b}/row_range"]),
            helper.make_node("Sub", [x, f"{b}/row_min"], [f"{b}/shifted"]),
            helper.make_node("Div", [f"{b}/shifted", f"{b}/row_range"], [f"{b}/unit"]),
        ]
        node.input[0], node.output[0] = f"{b}/unit", f"{b}/unit_out"
        nodes += [
            node,
            helper.make_node("Mul", [f"{b}/unit_out", f"{b}/row_range"], [f"{b}/scaled"]),
            helper.make_node("Mul", [f"{b}/row_min", _colsum(node.input[1])], [f"{b}/offset"]),
            helper.make_node("Add", [f"{b}/scaled", f"{b}/offset"], [y]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _colsum(weight: str) -> str:
    return f"{weight}/colsum"


def _patch_weights(
    path: Path, weights: dict[str, np.ndarray], grams: dict[str, np.ndarray]
) -> None:
    """GPTQ-round each quantized weight in place and set the column sums to match."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    patched: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        qname = node.input[1]
        name = qname.removesuffix("_quantized")
        scale_name = f"{name}_scale"
        if name not in weights or scale_name not in inits or _colsum(name) not in inits:
            continue
        q, scale = gptq_round(weights[name], grams[name])
        inits[qname].CopyFrom(numpy_helper.from_array(q, qname))
        inits[scale_name].CopyFrom(numpy_helper.from_array(scale, scale_name))
        zero = numpy_helper.to_array(inits[node.input[3]]).astype(np.float32)
        dequantized = (q.astype(np.float32) - zero) * scale
        inits[_colsum(name)].CopyFrom(
            numpy_helper.from_array(dequantized.sum(axis=0).astype(np.float32), _colsum(name)))
        patched.add(name)
    if patched != set(weights):
        raise QuantizationError(
            f"per-token smoothing: {len(patched)} of {len(weights)} weights found after ONNX "
            "Runtime's quantization (its naming changed?)",
            hint="pass --quantize none, or report this with the onnxruntime version")
    onnx.save(model, str(path))


def gptq_round(
    weight: np.ndarray, gram: np.ndarray, damp: float = GPTQ_DAMP
) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` [K, N] -> (int8 [K, N], scale [N]): symmetric per output channel, rows
    rounded in order with the rounding error fed forward through the inverse Gram matrix."""
    w = weight.astype(np.float64).copy()
    k = w.shape[0]
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
    h = gram.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(k)
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros(w.shape, dtype=np.int8)
    for row in range(k):
        rounded = np.clip(np.round(w[row] / scale), -127, 127)
        q[row] = rounded
        error = (w[row] - rounded * scale) / upper[row, row]
        w[row + 1:] -= np.outer(upper[row, row + 1:], error)
    return q, scale.astype(np.float32)
