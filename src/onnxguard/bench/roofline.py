"""This machine's matrix-multiply peak, measured in the same run as the engines.

Why measure instead of quoting a datasheet: a shared VM's clock, its AVX-512 width and the other
tenants decide what is reachable.  The kernels are the ones the engines use: ONNX Runtime's fp32
MatMul (MLAS SGEMM), numpy's BLAS SGEMM, ONNX Runtime's MatMulInteger (u8×s8, VNNI where the CPU
has it) and DynamicQuantizeMatMul (int8 including the activation quantization), at the model's
own weight shapes with M = batch × sequence rows.  The best rate per precision is the roofline;
each engine's achieved FLOP/s (graph FLOPs / model time) is reported as a fraction of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FP32 = "fp32"
INT8 = "int8"


@dataclass(frozen=True)
class KernelRate:
    """Best observed rate of one kernel at one shape (GFLOP/s; int8 ops count as FLOPs)."""

    kernel: str
    precision: str
    m: int
    k: int
    n: int
    gflops: float
    seconds_per_call: float

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "precision": self.precision, "m": self.m, "k": self.k,
                "n": self.n, "gflops": round(self.gflops, 2),
                "seconds_per_call": self.seconds_per_call}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelRate:
        return cls(str(data["kernel"]), str(data["precision"]), int(data["m"]), int(data["k"]),
                   int(data["n"]), float(data["gflops"]), float(data["seconds_per_call"]))


@dataclass(frozen=True)
class Roofline:
    threads: int
    kernels: tuple[KernelRate, ...]

    def peak(self, precision: str) -> float:
        return max((k.gflops for k in self.kernels if k.precision == precision), default=0.0)

    def best(self, precision: str) -> KernelRate | None:
        rates = [k for k in self.kernels if k.precision == precision]
        return max(rates, key=lambda k: k.gflops) if rates else None

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "fp32_peak_gflops": round(self.peak(FP32), 2),
                "int8_peak_gops": round(self.peak(INT8), 2),
                "kernels": [k.to_dict() for k in self.kernels]}


def merge(threads: int, *samples: Sequence[KernelRate]) -> Roofline:
    """Keep the best rate per (kernel, shape) over repeated measurements (noise only slows)."""
    best: dict[tuple[str, int, int, int], KernelRate] = {}
    for sample in samples:
        for rate in sample:
            key = (rate.kernel, rate.m, rate.k, rate.n)
            if key not in best or rate.gflops > best[key].gflops:
                best[key] = rate
    return Roofline(threads, tuple(best.values()))


def measure_kernels(
    threads: int, shapes: Sequence[tuple[int, int, int]], min_seconds: float = 0.25
) -> list[KernelRate]:
    """Time every kernel at every (M, K, N); call in a process whose BLAS threads are set."""
    rates: list[KernelRate] = []
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        a8 = rng.integers(0, 255, (m, k), dtype=np.uint8)
        b8 = rng.integers(-127, 127, (k, n), dtype=np.int8)
        flops = 2.0 * m * k * n
        kernels: list[tuple[str, str, Callable[[], Any]]] = [
            ("onnxruntime MatMul", FP32, _ort_call("MatMul", a, b, threads)),
            ("numpy matmul (BLAS)", FP32, _numpy_call(a, b)),
            ("onnxruntime MatMulInteger", INT8, _ort_call("MatMulInteger", a8, b8, threads)),
            ("onnxruntime DynamicQuantizeMatMul", INT8,
             _ort_call("DynamicQuantizeMatMul", a, b8, threads)),
        ]
        for name, precision, call in kernels:
            seconds = _best_time(call, min_seconds)
            rates.append(KernelRate(name, precision, m, k, n, flops / seconds / 1e9, seconds))
    return rates


def _numpy_call(a: np.ndarray, b: np.ndarray) -> Callable[[], Any]:
    return lambda: a @ b


def _best_time(call: Callable[[], Any], min_seconds: float) -> float:
    for _ in range(3):
        call()
    best = float("inf")
    deadline = time.perf_counter() + min_seconds
    calls = 0
    while calls < 5 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


def _ort_call(op: str, a: np.ndarray, b: np.ndarray, threads: int) -> Callable[[], Any]:
    """A one-node ONNX Runtime session with ``b`` as a constant weight (as in a model)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("A", helper.np_dtype_to_tensor_dtype(a.dtype),
                                            list(a.shape))]
    initializers = [numpy_helper.from_array(b, "B")]
    if op == "DynamicQuantizeMatMul":
        initializers.append(numpy_helper.from_array(np.array([0.02], dtype=np.float32), "S"))
        initializers.append(numpy_helper.from_array(np.array([0], dtype=np.int8), "Z"))
        node = helper.make_node(op, ["A", "B", "S", "Z"], ["Y"], domain="com.microsoft")
        out_type = TensorProto.FLOAT
    elif op == "MatMulInteger":
        node = helper.make_node(op, ["A", "B"], ["Y"])
        out_type = TensorProto.INT32
    else:
        node = helper.make_node(op, ["A", "B"], ["Y"])
        out_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], op, inputs,
        [helper.make_tensor_value_info("Y", out_type, [a.shape[0], b.shape[1]])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"A": a}
    return lambda: session.run(None, feed)
