"""Retrieval quality and speed of int8 graphs of the default embedding model vs PyTorch.

Target (issue 11): recall@10 of PyTorch's ten nearest neighbours >= 0.95 on sentences the build
never saw (SST-2 dev, 872 sentences), at >= 2.5x PyTorch at batch 8 x 128 on 2 threads.  Graphs
are judged on the built-in report split (what the build sees; batches of 8, length-sorted, as
the gate) and on SST-2 dev (batches of 32 in file order, as tests/integration/test_real_models.py).

    PYTHONPATH=src python -m onnxguard build -o /tmp/fp32 --quantize none
    PYTHONPATH=src python -m onnxguard build -o /tmp/int8
    PYTHONPATH=src python scripts/emb_int8_experiments.py --bundle /tmp/fp32 \
        eval /tmp/int8/model.onnx
    PYTHONPATH=src python scripts/emb_int8_experiments.py --bundle /tmp/fp32 --rounds 7 \
        speed /tmp/fp32/model.onnx /tmp/int8/model.onnx

``--bundle`` gives the tokenizer (any bundle of the default model).  ``eval`` prints recall@10,
min and mean cosine per set as JSON lines; ``speed`` times PyTorch (fresh AutoModel, eager
attention, mean pooling) and each graph interleaved at 8 x 128, 2 threads, with the load average.
PyTorch references are cached in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared/data/sst2/dev.tsv"
THREADS, BATCH, SEQ = 2, 8, 128


# ---------------------------------------------------------------- data and references
def text_sets() -> dict[str, list[str]]:
    from onnxguard.convert.gate import Split, split_of
    from onnxguard.convert.validate import builtin_sentences

    builtin = builtin_sentences()
    rows = [line.split("\t", 1) for line in SST2.read_text().splitlines()[1:] if line]
    return {"selection": [t for t in builtin if split_of(t) is Split.SELECTION],
            "report": [t for t in builtin if split_of(t) is Split.REPORT],
            "sst2": [t for _, t in rows]}


def batches(name: str, texts: list[str]) -> list[list[int]]:
    """Index batches: the gate's way (8, length-sorted) for built-in; the test's for SST-2."""
    if name == "sst2":  # tests/integration/test_real_models.py: 32 per batch, input order
        return [list(range(i, min(i + 32, len(texts)))) for i in range(0, len(texts), 32)]
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i].split()), i))
    return [order[i:i + BATCH] for i in range(0, len(order), BATCH)]


def tokenizer(bundle: Path) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def feeds(bundle: Path, texts: list[str], idx: list[list[int]]) -> list[dict[str, np.ndarray]]:
    tok = tokenizer(bundle)
    out = []
    for batch in idx:
        enc = tok.encode_batch([texts[i] for i in batch])
        out.append({"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)})
    return out


def torch_model() -> Any:
    from transformers import AutoModel

    from onnxguard.source import resolve_source

    return AutoModel.from_pretrained(resolve_source(None).path, attn_implementation="eager").eval()


def torch_embed(model: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        batch = {k: torch.from_numpy(v) for k, v in feed.items()}
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return np.asarray(torch.nn.functional.normalize(pooled, dim=1).numpy())


def references(bundle: Path, work: Path) -> dict[str, tuple[list[Any], np.ndarray]]:
    """Per set: (feeds, PyTorch embeddings in text order), cached."""
    sets = text_sets()
    out = {}
    model = None
    for name, texts in sets.items():
        idx = batches(name, texts)
        fs = feeds(bundle, texts, idx)
        cache = work / f"ref-{name}.npy"
        if not cache.exists():
            model = model or torch_model()
            emb = np.zeros((len(texts), 384), dtype=np.float32)
            for f, b in zip(fs, idx, strict=True):
                emb[b] = torch_embed(model, f)
            np.save(cache, emb)
        out[name] = (fs, np.load(cache))
    return out


def session(path: Path, threads: int = THREADS) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def evaluate(path: Path, refs: dict[str, Any], sets: Sequence[str] = ("report", "sst2")
             ) -> dict[str, Any]:
    from onnxguard.convert.gate import recall_at_k, row_cosine

    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    result: dict[str, Any] = {}
    for name in sets:
        fs, ref = refs[name]
        idx = batches(name, text_sets()[name])
        emb = np.zeros_like(ref)
        for f, b in zip(fs, idx, strict=True):
            emb[b] = sess.run(None, {n: f[n] for n in names})[0]
        cos = row_cosine(ref, emb)
        result[name] = {"recall10": round(recall_at_k(ref, emb, 10), 4),
                        "min_cos": round(float(cos.min()), 5),
                        "mean_cos": round(float(cos.mean()), 6)}
    return result


# ---------------------------------------------------------------- speed
def speed(paths: dict[str, Path], bundle: Path, rounds: int, nbatches: int = 4) -> None:
    import torch

    texts = text_sets()["sst2"]
    tok = tokenizer(bundle)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=SEQ)
    tok.enable_truncation(SEQ)
    fs = []
    for i in range(nbatches):
        enc = tok.encode_batch(texts[i * BATCH:(i + 1) * BATCH])
        fs.append({"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                   "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                   "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)})
    torch.set_num_threads(THREADS)
    model = torch_model()
    engines: dict[str, Callable[[dict[str, np.ndarray]], Any]] = {
        "pytorch": lambda f: torch_embed(model, f)}
    for name, path in paths.items():
        s = session(path)
        engines[name] = lambda f, s=s: s.run(None, f)
    for run in engines.values():
        run(fs[0])
    per: dict[str, list[float]] = {n: [] for n in engines}
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    for _ in range(rounds):
        for name, run in engines.items():
            start = time.perf_counter()
            for f in fs:
                run(f)
            per[name].append(len(fs) * BATCH / (time.perf_counter() - start))
    print(f"load after:  {Path('/proc/loadavg').read_text().strip()}")
    base = np.array(per["pytorch"])
    for name, vals in per.items():
        ratio = np.array(vals) / base
        print(f"{name:40s} {np.median(vals):7.1f} seq/s  x{np.median(ratio):.2f} "
              f"(paired {ratio.min():.2f}-{ratio.max():.2f})", flush=True)


# ---------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="fp32 bundle directory")
    parser.add_argument("--work", type=Path, default=ROOT / "out/emb-int8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("action", choices=("eval", "speed"))
    parser.add_argument("graphs", nargs="+", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.action == "eval":
        refs = references(args.bundle, args.work)
        for g in args.graphs:
            label = f"{g.parent.name}/{g.name}"
            print(json.dumps({"graph": label, **evaluate(g, refs)}), flush=True)
    else:
        speed({f"{g.parent.name}/{g.name}": g for g in args.graphs}, args.bundle, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
