"""The harness end to end on tiny models: structure and sanity of the results, never speed.

One CLI run on a tiny BERT classifier (source mode: export, fuse, quantize; both input modes;
JSON, Markdown and HTML written) and one library run on a tiny embedding bundle are shared by
the tests of this module.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from onnxguard.bench import report
from onnxguard.bench._prepare import prepare
from onnxguard.bench.harness import BenchConfig, run_bench
from onnxguard.cli import app
from onnxguard.errors import UsageError

pytestmark = pytest.mark.slow

ENGINES = ["pytorch", "ort-fp32", "ort-fp32-opt", "ort-int8-dynamic"]
TEXTS = [
    "the movie was good", "bad plot and awful acting", "i love this film",
    "terrible, slow and too long", "a great story", "not good", "the best day",
    "worst food i had", "very very good acting in a long movie", "so bad",
    "it was fine", "the service was slow but the food was great",
]


@pytest.fixture(scope="module")
def source_run(tiny_model_factory: Callable[..., Path],
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model_dir = tiny_model_factory("bert", "text-classification")
    out = tmp_path_factory.mktemp("bench-source")
    data = out / "data.tsv"
    data.write_text("label\tcontent\n" + "".join(
        f"{i % 2}\t{text}\n" for i, text in enumerate(TEXTS)), encoding="utf-8")
    result = CliRunner().invoke(app, [
        "bench", str(model_dir), "--data", str(data), "--batch", "1,4", "--seq", "16,dynamic",
        "--rounds", "2", "--warmup", "1", "--sample", "8", "--threads", "1", "--profile",
        "--report", str(out / "r.json"), "--report", str(out / "r.html"),
        "--report", str(out / "r.md"),
    ])
    assert result.exit_code == 0, result.output
    return {"dir": out, "data": json.loads((out / "r.json").read_text()),
            "output": result.output}


def test_every_engine_and_workload_is_measured(source_run: dict[str, Any]) -> None:
    data = source_run["data"]
    assert [e["id"] for e in data["engines"]] == ENGINES
    assert [w["id"] for w in data["workloads"]] == \
        ["pad16-b1", "pad16-b4", "dynamic-b1", "dynamic-b4"]
    assert len(data["runs"]) == len(ENGINES) * 4
    for run in data["runs"]:
        lat, batch = run["latency"], run["workload"]["batch"]
        assert lat["count"] == 2 * -(-8 // batch)  # rounds × batches per round
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] \
            <= lat["max_ms"]
        assert len(run["throughput_rounds"]) == 2
        assert run["throughput_seq_per_s"] > 0
        assert run["sequences_per_round"] == 8
        assert 0 < run["peak_fraction"] < 5
        if run["workload"]["seq"] == 16:
            assert run["mean_padded_tokens_per_batch"] == 16 * batch
            assert run["tokenize_ms_per_round"] == 0
        else:
            assert run["mean_padded_tokens_per_batch"] < 16 * batch
            assert run["tokenize_ms_per_round"] > 0


def test_engines_report_memory_load_time_threads_and_size(source_run: dict[str, Any]) -> None:
    engines = {e["id"]: e for e in source_run["data"]["engines"]}
    for engine in engines.values():
        assert engine["threads"] == 1
        assert engine["os_threads"] >= 1
        assert engine["load_seconds"] > 0
        assert engine["file_bytes"] > 0
        assert engine["peak_rss_bytes"] >= engine["rss_before_load_bytes"] > 0
    # Each engine runs in its own process: only the PyTorch one pays for importing torch.
    assert engines["pytorch"]["peak_rss_bytes"] > max(
        e["peak_rss_bytes"] for k, e in engines.items() if k != "pytorch")
    assert engines["pytorch"]["attention"] == "sdpa"
    assert engines["ort-int8-dynamic"]["graph_ops"].get("MatMulInteger", 0) > 0
    assert engines["ort-fp32-opt"]["graph_ops"].get("Attention", 0) == 2
    assert "Attention" not in engines["ort-fp32"]["graph_ops"]


def test_quality_covers_every_text_in_both_modes(source_run: dict[str, Any]) -> None:
    quality = source_run["data"]["quality"]
    assert {(q["engine"], q["mode"]) for q in quality} == {
        (e, m) for e in ENGINES for m in ("pad16", "dynamic")}
    for q in quality:
        assert q["sequences"] == len(TEXTS)
        assert 0 <= q["accuracy"] <= 1 and 0 <= q["f1"] <= 1
        if q["engine"] in ("pytorch", "ort-fp32", "ort-fp32-opt"):
            assert q["agreement_with_pytorch"] == 1.0
            assert q["max_abs_diff_vs_pytorch"] < 1e-3
        assert q["mean_cosine_with_pytorch"] > 0.99


def test_roofline_targets_and_profiles(source_run: dict[str, Any]) -> None:
    data = source_run["data"]
    roof = data["roofline"]
    assert roof["fp32_peak_gflops"] > 0 and roof["int8_peak_gops"] > 0
    assert {k["precision"] for k in roof["kernels"]} == {"fp32", "int8"}
    assert data["model"]["flops"]["flops_per_token"] > 0
    targets = {t["name"]: t for t in data["targets"]}
    assert len(targets) == 4
    # Batch 8 × 128 was not measured here: the ratio targets say so instead of guessing.
    assert [t["met"] for t in data["targets"][:3]] == [None, None, None]
    accuracy = data["targets"][3]
    assert accuracy["met"] is (accuracy["value"] >= -0.5)
    assert set(data["profiles"]) == {"ort-fp32", "ort-fp32-opt", "ort-int8-dynamic"}
    for profile in data["profiles"].values():
        assert profile["workload"] == "pad16-b4"
        assert profile["kernel_ms"] > 0
        assert sum(profile["op_share"].values()) == pytest.approx(1.0, abs=0.01)
    assert "QAttention" in data["profiles"]["ort-int8-dynamic"]["op_ms"]
    assert "SkipLayerNormalization" not in data["profiles"]["ort-int8-dynamic"]["op_ms"]
    machine = data["machine"]
    assert machine["threads_used"] == 1 and machine["cpu"] and machine["date"]
    assert data["config"]["command"].startswith("onnxguard bench ")
    assert "--batch 1,4 --seq 16,dynamic --rounds 2" in data["config"]["command"]
    assert "--report" not in data["config"]["command"]


def test_markdown_html_and_terminal_reports(source_run: dict[str, Any]) -> None:
    out = source_run["dir"]
    markdown = (out / "r.md").read_text()
    assert "Your workload on this machine: batch 4 × 16 tokens" in markdown
    headline, candidates = markdown.split("Your workload on this machine", 1)[1].split(
        "Other int8 candidates", 1)
    headline_table = headline.split("\n\n")[1]
    # an ungated candidate is never headlined: it has its own section
    assert "PyTorch fp32" in headline_table and "ORT fp32 optimized" in headline_table
    assert "ORT int8 (dynamic-int8)" not in headline_table
    assert "ORT int8 (dynamic-int8)" in candidates.split("\n\n")[1]
    assert "| Throughput (sequences/s) |" in markdown
    html = (out / "r.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<svg") >= 4  # throughput, latency, accuracy, roofline
    # Self-contained: nothing is fetched (the only URL is the SVG namespace).
    assert not re.search(r"(src|href)\s*=", html)
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert "<script" not in html
    assert "Throughput" in source_run["output"]
    # The JSON renders again to the same Markdown (every format shows the same figures).
    assert report.render_markdown(source_run["data"]) == markdown


def test_embedding_bundle(tiny_bundle_factory: Callable[..., Path], tmp_path: Path) -> None:
    bundle = tiny_bundle_factory("bert", "feature-extraction")
    data_file = tmp_path / "texts.txt"
    data_file.write_text("\n".join(TEXTS), encoding="utf-8")
    result = run_bench(BenchConfig(target=str(bundle), data=data_file, batches=(4,),
                                   seqs=(None,), rounds=1, warmup=0, sample=0, threads=1,
                                   roofline_seconds=0.01))
    data = result.to_dict()
    ids = [e["id"] for e in data["engines"]]
    assert ids[0] == "pytorch"  # the manifest's source is on this machine, hashes match
    assert set(ids[1:]) <= {"ort-fp32-opt", "ort-int8-dynamic"} and len(ids) >= 2
    for q in data["quality"]:
        assert q["accuracy"] is None and q["agreement_with_pytorch"] is None
        assert q["mean_cosine_with_pytorch"] > 0.9
        assert q["sequences"] == len(TEXTS)
    assert data["dataset"]["labelled"] is False
    assert data["model"]["origin"] == "bundle"
    assert data["targets"][3]["met"] is None  # no labels: accuracy not measured
    assert "Mean cosine to PyTorch" in report.render_markdown(data)


def test_bundle_from_elsewhere_skips_pytorch_and_encrypted_is_refused(
    tiny_bundle_factory: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_factory("bert", "text-classification"), bundle)
    manifest_path = bundle / "onnxguard.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["path"] = str(tmp_path / "not-here")
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "work1").mkdir()
    prepared = prepare(str(bundle), tmp_path / "work1")
    assert "pytorch" not in [e.id for e in prepared.engines]
    assert any("PyTorch baseline skipped" in n for n in prepared.notes)

    manifest["encryption"] = {"algorithm": "AES-256-GCM", "key_id": "k"}
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "work2").mkdir()
    with pytest.raises(UsageError, match="encrypted"):
        prepare(str(bundle), tmp_path / "work2")


def test_bad_options_are_usage_errors(tiny_model_factory: Callable[..., Path]) -> None:
    model_dir = str(tiny_model_factory("bert", "text-classification"))
    with pytest.raises(UsageError, match="exceeds the model's maximum length"):
        run_bench(BenchConfig(target=model_dir, seqs=(512,), engines=("ort-fp32",)))
    with pytest.raises(UsageError, match="unknown engine"):
        run_bench(BenchConfig(target=model_dir, engines=("tensorflow",)))
    with pytest.raises(UsageError, match="rounds"):
        run_bench(BenchConfig(target=model_dir, rounds=0))
    result = CliRunner().invoke(app, ["bench", model_dir, "--batch", "zero"])
    assert result.exit_code != 0


def test_missed_target_is_explained_with_roofline_figures(source_run: dict[str, Any]) -> None:
    """Relabel the run's batch-4 × 16 workload as the seed's 8 × 128 and miss the fp32 target."""
    data = copy.deepcopy(source_run["data"])
    for w in data["workloads"]:
        if w["id"] == "pad16-b4":
            w.update(id="pad128-b8", mode="pad128", seq=128, batch=8)
    for r in data["runs"]:
        if r["workload"]["id"] == "pad16-b4":
            r["workload"] = {"id": "pad128-b8", "mode": "pad128", "seq": 128, "batch": 8}
    base = report.run_of(data, "pytorch", "pad128-b8")
    opt = report.run_of(data, "ort-fp32-opt", "pad128-b8")
    assert base is not None and opt is not None
    base.update(throughput_seq_per_s=40.0, achieved_gflops=120.0, peak_fraction=0.55)
    opt.update(throughput_seq_per_s=52.0, achieved_gflops=156.0, peak_fraction=0.72)
    data["roofline"]["fp32_peak_gflops"] = 218.0
    data["targets"][0].update(value=1.3, met=False)
    notes = report.target_notes(data)
    assert len(notes) == 1
    assert "120 GFLOP/s (55% of this machine's fp32 matmul peak)" in notes[0]
    assert "1.5× needs 180 GFLOP/s = 83% of the fp32 peak" in notes[0]
    assert "ORT fp32 optimized reaches 156 (72%)" in notes[0]
    assert "Kernel time by operator: " in notes[0]
    document = report.render_document([data, source_run["data"]], "scripts/regen.sh", "Intro.")
    assert document.startswith("# Benchmarks\n")
    assert "Generated by `scripts/regen.sh`" in document and "Intro." in document
    assert "## Summary" in document and "## How it is measured" in document
    assert document.count("### Your workload on this machine") == 2
    assert "| 40.0 | 1.00× |" in document


def test_busy_machine_is_flagged(source_run: dict[str, Any]) -> None:
    data = copy.deepcopy(source_run["data"])
    data["machine"].update(available_cpus=2, load_average_start=[0.4, 0.3, 0.2],
                           load_average_end=[0.6, 0.4, 0.3])
    assert report.busy_warning(data) is None
    assert "**Note:**" not in report.render_markdown(data)
    data["machine"]["load_average_end"] = [3.5, 2.0, 1.0]
    warning = report.busy_warning(data)
    assert warning is not None and "3.5 on 2 CPUs" in warning
    assert f"> **Note:** {warning}" in report.render_markdown(data)


def test_idle_wait_sees_a_quiet_worker(tmp_path: Path) -> None:
    from onnxguard.bench._workers import IDLE_QUIET_WINDOWS, IDLE_WINDOW_S, WorkerClient

    (tmp_path / "texts.json").write_text(json.dumps({"texts": ["a"], "sample": [0]}))
    worker = WorkerClient("idle", 1, tmp_path)
    try:
        worker.call({"cmd": "init", "kind": "roofline", "texts_file": str(tmp_path / "texts.json")})
        before = worker.cpu_ns()
        waited = worker.wait_idle()
        assert before is not None and before > 0
        assert IDLE_QUIET_WINDOWS * IDLE_WINDOW_S <= waited < 0.3
    finally:
        worker.close()
    assert worker.proc.returncode == 0
