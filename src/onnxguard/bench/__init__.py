"""Benchmark harness: PyTorch vs ONNX Runtime fp32 / optimized / int8, one interleaved run.

``run_bench(BenchConfig(...))`` measures; ``report`` renders the result (``to_dict()``) as a
terminal table, JSON, Markdown or a self-contained HTML page.  ``onnxguard bench`` is the CLI.
"""

from __future__ import annotations

from onnxguard.bench.harness import BenchConfig, BenchResult, run_bench

__all__ = ["BenchConfig", "BenchResult", "run_bench"]
