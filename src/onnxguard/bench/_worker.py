"""One engine per process: ``python -m onnxguard.bench._worker``, driven over stdin/stdout.

Why a process per engine: peak RSS is then the engine's own (an ORT engine does not pay for the
torch import the PyTorch baseline needs), thread pools cannot interfere, and the PyTorch baseline
is a freshly loaded model in a fresh interpreter (after ``torch.onnx.export`` the exported module
runs slower and predicts differently).  The parent still interleaves rounds across engines: it
asks one worker at a time to run, so only one engine computes at any moment.

Protocol: one JSON object per line each way (no pickle anywhere); outputs for accuracy go through
``.npy`` files that the parent reads with ``allow_pickle=False``.  Anything a library prints to
stdout is redirected to stderr so it cannot corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

Feed = dict[str, np.ndarray]
Runner = Callable[[Feed], np.ndarray]
WARMUP_BATCHES = 2


def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM (bytes) and OS thread count of this process, from /proc when there."""
    fields = {"VmRSS": "rss", "VmHWM": "peak_rss", "Threads": "os_threads"}
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in fields:
                    number = int(value.split()[0])
                    out[fields[key]] = number * 1024 if key != "Threads" else number
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss"] = peak if sys.platform == "darwin" else peak * 1024
        out["rss"] = out["peak_rss"]
    return out


@dataclass
class _Pass:
    """One pass over a subset in progress: what is left to run and what was measured."""

    wl: dict[str, Any]
    count: int
    order: list[int]
    feeds: list[Feed | None]
    encodings: list[Any]
    tokenize_ms: float
    next: int = 0
    batch_ms: list[float] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows = [None] * self.count

    def timings(self) -> dict[str, Any]:
        return {"batch_ms": self.batch_ms, "shapes": self.shapes,
                "tokenize_ms": self.tokenize_ms, "sequences": sum(s[0] for s in self.shapes)}

    def outputs(self, task: str) -> np.ndarray:
        done = [r for r in self.rows if r is not None]
        if not done:
            return np.zeros((0,), dtype=np.float32)
        return np.concatenate(done) if task == "token-classification" else np.stack(done)


class _Worker:
    def __init__(self) -> None:
        self.runner: Runner | None = None
        self.session: Any = None
        self.spec: dict[str, Any] = {}
        self.tokenizer: Any = None
        self.texts: list[str] = []
        self.sample: list[int] = []
        self.padded: dict[str, list[Feed]] = {}
        self.current: _Pass | None = None
        self.import_seconds = 0.0

    # --- commands -------------------------------------------------------------------------------
    def init(self, req: dict[str, Any]) -> dict[str, Any]:
        """Read the texts and tokenizer, then load the engine (timed) and report memory."""
        self.spec = req
        data = json.loads(Path(req["texts_file"]).read_text(encoding="utf-8"))
        self.texts = list(data["texts"])
        self.sample = list(data["sample"])
        if req["kind"] == "roofline":
            return {"ok": True} | proc_status()
        from onnxguard._tokenize import load_tokenizer, pad_id_of

        self.tokenizer = load_tokenizer(Path(req["tokenizer"]).read_text(encoding="utf-8"),
                                        int(req["max_length"]))
        self.pad_id = pad_id_of(self.tokenizer)
        start = time.perf_counter()
        if req["kind"] == "pytorch":
            import torch
            import transformers  # noqa: F401  (import cost is reported apart from load time)

            torch.set_num_threads(int(req["threads"]))
        else:
            import onnxruntime  # noqa: F401
        self.import_seconds = time.perf_counter() - start
        before = proc_status()
        start = time.perf_counter()
        details = self._load_pytorch() if req["kind"] == "pytorch" else self._load_ort()
        load_seconds = time.perf_counter() - start
        return {"ok": True, "load_seconds": load_seconds, "import_seconds": self.import_seconds,
                "rss_before_load": before.get("rss", 0)} | details | proc_status()

    def prepare(self, req: dict[str, Any]) -> dict[str, Any]:
        """Pre-tokenize the fixed-padding workloads and warm every workload up (untimed)."""
        for wl in req["workloads"]:
            self._pass(wl, "sample", limit=WARMUP_BATCHES)
        return {"ok": True}

    def begin(self, req: dict[str, Any]) -> dict[str, Any]:
        """Start a timed pass over the latency sample; the parent then calls ``step``."""
        self.current = self._begin(req["workload"], req.get("subset", "sample"))
        return {"ok": True, "batches": len(self.current.feeds),
                "tokenize_ms": self.current.tokenize_ms}

    def step(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run the current pass's next ``count`` batches; the last step returns the timings."""
        if self.current is None:
            return {"ok": False, "error": "step without begin"}
        self._step(self.current, int(req["count"]))
        done = self.current.next >= len(self.current.feeds)
        reply: dict[str, Any] = {"ok": True, "done": done}
        if done:
            reply |= self.current.timings()
            self.current = None
        return reply

    def predict(self, req: dict[str, Any]) -> dict[str, Any]:
        """One pass over a subset; outputs saved in input order to ``req['out']`` (.npy)."""
        result = self._pass(req["workload"], req.get("subset", "full"))
        outputs = result.pop("outputs")
        np.save(req["out"], np.asarray(outputs, dtype=np.float32), allow_pickle=False)
        return {"ok": True} | result

    def profile(self, req: dict[str, Any]) -> dict[str, Any]:
        """ONNX Runtime's profiler over one pass: time per operator type and fused op counts."""
        if self.spec["kind"] != "onnxruntime":
            return {"ok": False, "error": "profiling is for ONNX Runtime engines"}
        directory = Path(req["dir"])
        session = self._ort_session(profile_prefix=str(directory / self.spec["id"]),
                                    optimized_path=directory / f"{self.spec['id']}.session.onnx")
        saved = self.session, self.runner
        self.session = session
        self.runner = self._ort_runner(session)
        try:
            self._pass(req["workload"], "sample", limit=WARMUP_BATCHES)
            self._pass(req["workload"], "sample")
        finally:
            trace = session.end_profiling()
            self.session, self.runner = saved
        return {"ok": True, "trace": trace,
                "session_graph": str(directory / f"{self.spec['id']}.session.onnx")}

    def roofline(self, req: dict[str, Any]) -> dict[str, Any]:
        from onnxguard.bench.roofline import measure_kernels

        kernels = measure_kernels(int(req["threads"]), [tuple(s) for s in req["shapes"]],
                                  float(req["min_seconds"]))
        return {"ok": True, "kernels": [k.to_dict() for k in kernels]}

    def stats(self, _req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True} | proc_status()

    # --- engines --------------------------------------------------------------------------------
    def _load_pytorch(self) -> dict[str, Any]:
        import torch

        from onnxguard.bench._torch import load_baseline

        wrapper, attention = load_baseline(self.spec)
        names = list(self.spec["input_names"])

        def run(feed: Feed) -> np.ndarray:
            with torch.inference_mode():
                out = wrapper(*(torch.from_numpy(feed[n]) for n in names))
            result: np.ndarray = out.float().numpy()
            return result

        self.runner = run
        return {"threads": torch.get_num_threads(), "attention": attention,
                "providers": ["torch-cpu"]}

    def _load_ort(self) -> dict[str, Any]:
        self.session = self._ort_session()
        self.runner = self._ort_runner(self.session)
        return {"threads": int(self.spec["threads"]), "providers": self.session.get_providers()}

    def _ort_session(self, profile_prefix: str | None = None,
                     optimized_path: Path | None = None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.spec["threads"])
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        if optimized_path is not None:
            options.optimized_model_filepath = str(optimized_path)
        disabled = list(self.spec.get("disabled_optimizers") or ())
        extra = {"disabled_optimizers": disabled} if disabled else {}
        return ort.InferenceSession(self.spec["path"], options,
                                    providers=["CPUExecutionProvider"], **extra)

    def _ort_runner(self, session: Any) -> Runner:
        output = session.get_outputs()[0].name

        def run(feed: Feed) -> np.ndarray:
            result: np.ndarray = session.run([output], feed)[0]
            return result

        return run

    # --- passes ---------------------------------------------------------------------------------
    def _subset(self, name: str) -> list[int]:
        return self.sample if name == "sample" else list(range(len(self.texts)))

    def _encode(self, indices: list[int], truncate: int) -> list[Any]:
        self.tokenizer.enable_truncation(max_length=truncate)
        return list(self.tokenizer.encode_batch([self.texts[i] for i in indices]))

    def _padded_feeds(self, indices: list[int], wl: dict[str, Any]) -> list[Feed]:
        from onnxguard._tokenize import pad_batch

        seq, batch = int(wl["seq"]), int(wl["batch"])
        encodings = self._encode(indices, min(seq, int(self.spec["max_length"])))
        names = list(self.spec["input_names"])
        return [pad_batch(encodings[i:i + batch], names, self.pad_id, seq)
                for i in range(0, len(encodings), batch)]

    def _begin(self, wl: dict[str, Any], subset: str) -> _Pass:
        """Start a pass: fixed padding uses feeds padded beforehand (untimed, like the seed);
        dynamic padding times tokenization and the length sort, as a server would pay them."""
        indices = self._subset(subset)
        size = int(wl["batch"])
        if wl["seq"] is not None:
            key = f"{wl['id']}:{subset}"
            if key not in self.padded:
                self.padded[key] = self._padded_feeds(indices, wl)
            feeds: list[Feed | None] = list(self.padded[key])
            return _Pass(wl, len(indices), list(range(len(indices))), feeds, [], 0.0)
        start = time.perf_counter()
        encodings = self._encode(indices, int(self.spec["max_length"]))
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        tokenize_ms = (time.perf_counter() - start) * 1e3
        return _Pass(wl, len(indices), order, [None] * ((len(order) + size - 1) // size),
                     encodings, tokenize_ms)

    def _step(self, current: _Pass, count: int | None = None) -> None:
        """Run the pass's next ``count`` batches (all when None), timing each one."""
        from onnxguard._tokenize import pad_batch

        assert self.runner is not None
        run, task, size = self.runner, self.spec["task"], int(current.wl["batch"])
        names = list(self.spec["input_names"])
        stop = len(current.feeds) if count is None else min(len(current.feeds),
                                                             current.next + count)
        for number in range(current.next, stop):
            group = current.order[number * size:(number + 1) * size]
            feed = current.feeds[number]
            t0 = time.perf_counter()
            if feed is None:
                feed = pad_batch([current.encodings[i] for i in group], names, self.pad_id)
            out = run(feed)
            current.batch_ms.append((time.perf_counter() - t0) * 1e3)
            current.shapes.append(list(feed["input_ids"].shape))
            self._collect(current.rows, group, out, feed, task)
        current.next = stop

    def _pass(self, wl: dict[str, Any], subset: str, limit: int | None = None) -> dict[str, Any]:
        """A whole pass in one call (warm-up, accuracy, profiling); outputs in input order."""
        start = time.perf_counter()
        current = self._begin(wl, subset)
        self._step(current, limit)
        total_ms = (time.perf_counter() - start) * 1e3
        return current.timings() | {"total_ms": total_ms, "outputs": current.outputs(
            self.spec["task"])}

    @staticmethod
    def _collect(rows: list[Any], group: list[int], out: np.ndarray, feed: Feed,
                 task: str) -> None:
        for row, position in enumerate(group):
            if task == "token-classification":
                keep = feed["attention_mask"][row].astype(bool)
                rows[position] = out[row][keep]
            else:
                rows[position] = out[row]


def serve(stdin: TextIO, proto: TextIO) -> None:
    worker = _Worker()
    commands: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "init": worker.init, "prepare": worker.prepare, "begin": worker.begin,
        "step": worker.step,
        "predict": worker.predict, "profile": worker.profile, "roofline": worker.roofline,
        "stats": worker.stats,
    }
    for line in stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        command = request.get("cmd")
        if command == "quit":
            break
        try:
            reply = commands[command](request)
        except Exception as exc:  # reported to the parent, which raises BenchmarkError
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc()[-4000:]}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin, proto)


if __name__ == "__main__":
    main()
