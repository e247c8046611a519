#!/usr/bin/env python3
"""onnxguard's int8 bundle vs Hugging Face Optimum's ``--avx512_vnni`` dynamic int8, side by side.

Optimum is a peer, not a dependency: this script installs it into its own virtual environment
(``.venv-optimum/``, git-ignored; DESIGN.md's set: torch 2.13.0, transformers 4.57.6, optimum
2.1.0, optimum-onnx 0.1.0, onnxruntime 1.32.0) and uses it only to make its model:
``optimum-cli export onnx`` then ``optimum-cli onnxruntime quantize --avx512_vnni``.  The
onnxguard bundle is built with ``--validation-data`` on the labelled file, which the build splits
by a hash of each text into a selection half and a report half.

Then, in one process and one run, PyTorch (fresh model, eager), Optimum's int8 and the bundle's
``model.onnx`` are timed at batch 8 × 128 (fixed padding), 2 intra-op threads each, in
interleaved rounds, and their accuracy is measured on the *report* half only (texts that did
not choose the bundle's candidate).  The load average is printed before and after: the machine
is shared, so read the ratios (paired per round), not the absolute figures.

    /work/main/.venv/bin/python scripts/compare_optimum.py            # about 10 minutes
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPTIMUM_SET = ("torch==2.13.0+cpu", "transformers==4.57.6", "optimum==2.1.0",
               "optimum-onnx==0.1.0", "onnxruntime==1.32.0")
BATCH, SEQ, THREADS = 8, 128, 2


def main() -> int:
    # PyTorch's OpenMP threads spin at barriers; on a shared 2-core machine a preempted spinner
    # stalls every matmul (PyTorch measured 2 sequences/s at load 9).  ONNX Runtime is set not to
    # spin either, so both wait the same way.  Must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT.parent / "shared/models/minilm-sst2")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/sst2/dev.tsv")
    parser.add_argument("--work", type=Path, default=ROOT / "out/compare-optimum")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-optimum")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true",
                        help="build the onnxguard bundle again even if WORK has one")
    parser.add_argument("--batches", type=int, default=6, help="batches of 8 × 128 per round")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    optimum_model = _optimum_int8(args.venv, args.model, args.work)
    bundle = _onnxguard_bundle(args.model, args.data, args.work, args.rebuild)
    _measure(args, optimum_model, bundle)
    return 0


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _run(cmd: list[str], **kwargs: Any) -> None:
    _log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kwargs)


def _optimum_int8(venv: Path, model: Path, work: Path) -> Path:
    """Optimum's standard recipe, in its own venv (installed on first use)."""
    python = venv / "bin/python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(python), "-m", "pip", "install", "--quiet", *OPTIMUM_SET])
    cli = venv / "bin/optimum-cli"
    exported, quantized = work / "optimum-onnx", work / "optimum-int8"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    if not (exported / "model.onnx").exists():
        _run([str(cli), "export", "onnx", "--model", str(model), "--task",
              "text-classification", str(exported)], env=env)
    if not (quantized / "model_quantized.onnx").exists():
        _run([str(cli), "onnxruntime", "quantize", "--avx512_vnni", "--onnx_model",
              str(exported), "-o", str(quantized)], env=env)
    return quantized / "model_quantized.onnx"


def _onnxguard_bundle(model: Path, data: Path, work: Path, rebuild: bool) -> Path:
    bundle = work / "onnxguard-bundle"
    if (bundle / "onnxguard.json").is_file() and not rebuild:
        _log(f"reusing {bundle} (--rebuild to build it again)")
        return bundle
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    _run([sys.executable, "-m", "onnxguard", "build", str(model), "-o", str(bundle), "--force",
          "--validation-data", str(data)], env=env)
    return bundle


def _measure(args: argparse.Namespace, optimum_model: Path, bundle: Path) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification

    from onnxguard._tokenize import load_tokenizer, pad_batch, pad_id_of
    from onnxguard.bundle import read_manifest
    from onnxguard.convert.gate import Split, paired_drop_points, split_of

    manifest = read_manifest(bundle)
    tokenizer = load_tokenizer((bundle / "tokenizer.json").read_text(encoding="utf-8"), SEQ)
    pad = pad_id_of(tokenizer)
    rows = [line.split("\t", 1) for line in args.data.read_text(encoding="utf-8").splitlines()[1:]]
    report = [(int(label), text) for label, text in rows if split_of(text) is Split.REPORT]
    labels = np.array([label for label, _ in report])
    names = list(manifest.inputs)
    eval_feeds = [pad_batch(tokenizer.encode_batch([t for _, t in report[i:i + BATCH]]), names,
                            pad) for i in range(0, len(report), BATCH)]
    texts = [t for _, t in rows]
    speed_feeds = [pad_batch(tokenizer.encode_batch(texts[i * BATCH:(i + 1) * BATCH]), names,
                             pad, SEQ) for i in range(args.batches)]

    def session(path: Path) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    torch.set_num_threads(THREADS)
    torch_model = AutoModelForSequenceClassification.from_pretrained(
        str(args.model), attn_implementation="eager").eval()
    ours, theirs = session(bundle / manifest.model_file), session(optimum_model)
    their_inputs = {i.name for i in theirs.get_inputs()}

    def run_torch(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = torch_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
        return np.asarray(out.numpy())

    engines = {
        "PyTorch fp32": run_torch,
        "Optimum --avx512_vnni int8": lambda f: theirs.run(
            None, {k: v for k, v in f.items() if k in their_inputs})[0],
        f"onnxguard bundle ({manifest.precision}, "
        f"{manifest.stages['quantization'].get('chosen', 'fp32')})": lambda f: ours.run(None, f)[0],
    }
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    predictions = {name: np.concatenate([run(f) for f in eval_feeds]).argmax(-1)
                   for name, run in engines.items()}
    rounds = _interleaved(engines, speed_feeds, args.rounds)
    print(f"load average after:  {Path('/proc/loadavg').read_text().strip()}")
    files = {name: optimum_model if name.startswith("Optimum") else
             bundle / manifest.model_file if name.startswith("onnxguard") else None
             for name in engines}
    _print_table(rounds, predictions, labels, files, paired_drop_points)


def _interleaved(engines: dict[str, Any], feeds: list[Any], count: int) -> dict[str, list[float]]:
    """Sequences/s per engine per round; engines take turns within each round."""
    rounds: dict[str, list[float]] = {name: [] for name in engines}
    for run in engines.values():
        run(feeds[0])
    for _ in range(count):
        for name, run in engines.items():
            start = time.perf_counter()
            for feed in feeds:
                run(feed)
            rounds[name].append(len(feeds) * BATCH / (time.perf_counter() - start))
    return rounds


def _print_table(rounds: dict[str, list[float]], predictions: dict[str, Any], labels: Any,
                 files: dict[str, Path | None], drop: Any) -> None:
    base = "PyTorch fp32"
    n = len(labels)
    print(f"\nbatch {BATCH} × {SEQ} (fixed padding), {THREADS} threads, interleaved rounds; "
          f"accuracy on the {n} report-split texts of the labelled file (not used to choose)\n")
    print(f"{'engine':<50} {'seq/s':>8} {'× PyTorch':>10} {'accuracy':>9} {'drop pt':>8} "
          f"{'agree':>7} {'MB':>6}")
    for name, throughput in rounds.items():
        ratio = statistics.median(a / b for a, b in zip(throughput, rounds[base], strict=True))
        correct = predictions[name] == labels
        points, (lo, hi) = drop(predictions[base] == labels, correct)
        agree = (predictions[name] == predictions[base]).mean()
        path = files[name]
        size = f"{path.stat().st_size / 2**20:6.1f}" if path else f"{'–':>6}"
        print(f"{name:<50} {statistics.median(throughput):8.1f} {ratio:9.2f}× "
              f"{correct.mean():9.2%} {points:+8.2f} {agree:7.2%} {size}   "
              f"(drop 95% CI {lo:+.2f}..{hi:+.2f})")
    ours = next(name for name in rounds if name.startswith("onnxguard"))
    theirs = next(name for name in rounds if name.startswith("Optimum"))
    per_round = [a / b for a, b in zip(rounds[ours], rounds[theirs], strict=True)]
    print(f"\nonnxguard bundle vs Optimum, paired per round: median "
          f"{statistics.median(per_round):.2f}× (rounds: "
          f"{', '.join(f'{r:.2f}' for r in per_round)})")


if __name__ == "__main__":
    raise SystemExit(main())
