"""Bulk inference on a real local two-node Ray cluster (head + one worker node, 1 CPU each).

Every actor verifies and loads the bundle itself; the results equal the in-process run's, in
input order, and the actor pool spans both nodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from onnxguard.bulk import BulkConfig, run_bulk
from tiny_models import tampered_copy

pytestmark = pytest.mark.slow


def _wait_for_free_cpus(count: float) -> None:
    """Actors of an earlier test (e.g. Serve replicas) may still be releasing their CPUs."""
    import time

    import ray

    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < count:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.5)


def test_bulk_over_two_nodes_equals_in_process(
    ray_cluster: Any, tiny_bundle_factory: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = tiny_bundle_factory("bert", "text-classification", "none")
    texts = [f"review number {i}: " + "good " * (i % 13) + "bad " * (i % 5)
             for i in range(10_000)]
    texts[7] = ""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    run_bulk(BulkConfig(bundle=bundle, input=source, output=local, part_size=2048),
             progress=lambda _: None)
    _wait_for_free_cpus(2)
    lines: list[str] = []
    result = run_bulk(BulkConfig(bundle=bundle, input=source, output=remote, part_size=2048,
                                 use_ray=True, actors=2, threads=1), progress=lines.append)
    assert result.runner == "ray" and result.parts == 5 and result.errors == 1
    got = [json.loads(x) for x in remote.read_text().splitlines()]
    want = [json.loads(x) for x in local.read_text().splitlines()]
    assert [r["id"] for r in got] == list(range(10_000))
    assert len(got) == len(want)
    for mine, theirs in zip(got, want, strict=True):  # row for row
        assert mine.keys() == theirs.keys()
        assert mine.get("label") == theirs.get("label")
        assert mine.get("score", 0.0) == pytest.approx(theirs.get("score", 0.0), abs=1e-5)
    assert sum("pending parts done" in line for line in lines) == 5
    assert result.notes == ["ray actors ran on 2 node(s)"], "the pool should span both nodes"


def test_tampered_bundle_fails_on_the_actors(
    ray_cluster: Any, tiny_bundle_factory: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = tampered_copy(tiny_bundle_factory("bert", "text-classification", "none"),
                           tmp_path / "b")
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(Exception, match=r"sha256|hash"):
        run_bulk(BulkConfig(bundle=bundle, input=source, output=tmp_path / "o.jsonl",
                            use_ray=True, actors=1), progress=lambda _: None)
    assert not (tmp_path / "o.jsonl").exists()
