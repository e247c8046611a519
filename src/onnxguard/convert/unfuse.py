"""Split SkipLayerNormalization back into standard ops for int8 graphs (it is their bottleneck).

Why: onnxruntime 1.32's CPU SkipLayerNormalization kernel is a scalar loop (a float reduction
and a division per element); on [8, 128, 384] it takes ~2.0 ms where Add + LayerNormalization
take ~0.4 ms.  In an fp32 graph that hardly shows, but once the MatMuls run int8 it is ~19% of
the time at batch 8 × 128.  Every SkipLayerNormalization(input, skip, gamma, beta, bias) becomes
Add(input, bias) → Sum(·, skip) → LayerNormalization: the same maths up to float rounding.

The residual is a ``Sum``, not an ``Add``, on purpose: ONNX Runtime's load-time
``SkipLayerNormFusion`` matches Add → LayerNormalization and would fuse the pattern straight back
in every session that loads the bundle; it does not match Sum, so the shipped graph runs as
shipped under any session options (the serving runtime needs no special flag).
"""

from __future__ import annotations

from pathlib import Path

LAYERNORM_OPSET = 17
"""LayerNormalization entered the default domain in opset 17; older graphs stay fused."""


def unfuse_skip_layernorm(src: Path, dst: Path) -> int:
    """Rewrite ``src`` into ``dst``; returns how many nodes were split (0: dst is a copy)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src), load_external_data=False)
    opset = max((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")),
                default=0)
    graph = model.graph
    if opset < LAYERNORM_OPSET:
        onnx.save(model, str(dst))
        return 0
    consumed = {name for node in graph.node for name in node.input} | {
        o.name for o in graph.output}
    nodes = []
    count = 0
    for node in graph.node:
        if node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        inputs = list(node.input) + [""] * (5 - len(node.input))
        x, skip, gamma, beta, bias = inputs[:5]
        base = node.name or f"skiplayernorm_{count}"
        current = x
        if bias:
            current_out = f"{base}/bias_add"
            nodes.append(helper.make_node("Add", [current, bias], [current_out],
                                          name=f"{base}/BiasAdd"))
            current = current_out
        outputs = list(node.output) + [""] * (4 - len(node.output))
        sum_name = outputs[3] if outputs[3] and outputs[3] in consumed else f"{base}/sum"
        nodes.append(helper.make_node("Sum", [current, skip], [sum_name], name=f"{base}/Residual"))
        ln_inputs = [sum_name, gamma] + ([beta] if beta else [])
        nodes.append(helper.make_node("LayerNormalization", ln_inputs, [outputs[0]],
                                      name=f"{base}/LayerNorm", axis=-1, epsilon=epsilon))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return count
