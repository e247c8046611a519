"""Smoke test of scripts/bench_serve.py: a second per mode on tiny bundles, every row printed.

Speed is not asserted (tiny random models on a shared machine); that each route is driven
without errors and reported next to the raw Engine is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_serve.py"
TEXTS = ["a good movie", "the worst film ever", "slow and boring plot", "great acting",
         "the plot is thin", "a fine film"]


def _bench(bundle: Path, tmp_path: Path, *extra: str) -> str:
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    src = str(SCRIPT.parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(bundle), "--data", str(data), "--rounds", "1",
         "--time-limit", "1", "--max-requests", "6", "--concurrency", "2", "--threads", "1",
         *extra], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize(("task", "modes", "extra"), [
    ("feature-extraction", ["raw Engine", "/v1/embed", "/v1/embeddings",
                            "/v1/embeddings openai", "/embed (TEI)"], ()),
    ("reranking", ["raw Engine rerank", "/rerank (TEI)", "/v1/rerank (Cohere)"],
     ("--texts-per-request", "3")),
])
def test_bench_serve_prints_every_mode(tiny_bundle_factory: Callable[..., Path], tmp_path: Path,
                                       task: str, modes: list[str], extra: tuple[str, ...],
                                       ) -> None:
    bundle = tiny_bundle_factory("bert", task, "none")
    summary = json.loads(_bench(bundle, tmp_path, "--json", *extra))
    unit = "pairs" if task == "reranking" else "texts"
    assert [row["mode"] for row in summary["modes"]] == modes
    for row in summary["modes"]:
        assert row["errors"] == 0 and row[f"{unit}_per_s_median"] > 0
        assert (row["p50_ms"] is None) == row["mode"].startswith("raw Engine")
    assert summary["load_average"]["before"]
    table = _bench(bundle, tmp_path, *extra)
    assert "load average" in table
    for mode in modes:
        assert any(line.startswith(mode + " ") for line in table.splitlines()), table
