"""Per-feature drift (PSI, KL) of a text file against a bundle's build-time reference.

    python scripts/drift_check.py BUNDLE --data FILE [--shift long|random-tokens] [--json]

The texts run through the bundle exactly as the server runs them (``Engine``: verified bundle,
length-sorted batches, dynamic padding) into one ``DriftWindow`` as large as the file, so the
figures are what the server's drift metrics would show after that traffic.  ``--shift`` makes
shifted traffic from the same file, deterministically: ``long`` joins each text with the 11
after it (past the model's max length, so truncated), ``random-tokens`` replaces each text by as
many words drawn at random (seed 0) from the tokenizer's vocabulary.  A reranker's texts are
paired each with the next, as the build pairs them.  Exit status 0; the verdict is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from onnxguard.convert.validate import read_text_lines
from onnxguard.drift import MIN_TEXTS, PSI_ALERT, WATCH, DriftWindow
from onnxguard.errors import OnnxGuardError
from onnxguard.runtime import Engine, rows_per_text
from onnxguard.tasks import Task

LONG_JOIN = 12


def shifted(texts: list[str], shift: str, engine: Engine) -> list[str]:
    """The file's texts, or a deterministic shifted version of them (see module docstring)."""
    if shift == "long":
        return [" ".join(texts[(i + k) % len(texts)] for k in range(LONG_JOIN))
                for i in range(len(texts))]
    if shift == "random-tokens":
        vocab = sorted(t for t in engine.tokenizer.get_vocab()
                       if t.isalpha() and not t.startswith(("[", "<", "##")))
        rng = np.random.default_rng(0)
        return [" ".join(rng.choice(vocab, max(1, len(t.split())))) for t in texts]
    return texts


def check(bundle: Path, data: Path, shift: str, public_key: Path | None) -> dict[str, Any]:
    engine = Engine.from_bundle(bundle, public_key=public_key)
    reference = engine.drift_reference
    if reference is None:
        raise SystemExit(f"{bundle} has no drift reference: rebuild it with this onnxguard")
    texts = shifted(read_text_lines(data, "data"), shift, engine)
    items: list[Any] = list(texts)
    if engine.task is Task.RERANKING:
        items = [(t, texts[(i + 1) % len(texts)]) for i, t in enumerate(texts)]
    encodings = engine.encode(items)
    rows = rows_per_text(engine.run_batch, encodings, 32, engine.task)
    window = DriftWindow(reference, window=len(texts), min_texts=1)
    window.observe(encodings, rows)
    scores, kls = window.scores(), window.kl()
    worst = max(scores.values(), default=0.0)
    return {
        "bundle": str(bundle), "data": str(data), "shift": shift, "texts": len(texts),
        "reference_texts": reference.texts, "psi": scores, "kl": kls,
        "max_psi": worst,
        "verdict": "alert" if worst > PSI_ALERT else "watch" if worst > WATCH else "ok",
        "note": (f"fewer than {MIN_TEXTS} texts: sampling noise alone can reach the WATCH level"
                 if len(texts) < MIN_TEXTS else ""),
    }


def render(result: dict[str, Any]) -> str:
    lines = [f"{result['data']} ({result['texts']} texts, shift: {result['shift']}) vs "
             f"{result['bundle']} reference ({result['reference_texts']} texts)",
             f"  {'feature':<18}{'PSI':>8}{'KL':>8}"]
    for name, value in result["psi"].items():
        lines.append(f"  {name:<18}{value:>8.3f}{result['kl'][name]:>8.3f}")
    lines.append(f"  max PSI {result['max_psi']:.3f}: {result['verdict']} "
                 f"(watch > {WATCH}, alert > {PSI_ALERT})")
    if result["note"]:
        lines.append(f"  note: {result['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, required=True,
                        help="one text per line, or label<TAB>text")
    parser.add_argument("--shift", choices=("none", "long", "random-tokens"), default="none")
    parser.add_argument("--public-key", type=Path, help="verify the bundle's signature first")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = check(args.bundle, args.data, args.shift, args.public_key)
    except OnnxGuardError as exc:
        print(f"error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
