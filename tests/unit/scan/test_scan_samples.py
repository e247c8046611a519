"""Every generated attack sample is reported with its rules, every clean control passes.

The sample registry is what ``scripts/compare_scanners.py`` runs the peers on, so this keeps the
comparison table honest: a sample whose rule we stopped reporting fails here first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxguard.scan import RULES, scan_path
from unit.scan._helpers import rules_of
from unit.scan.attack_samples import CLEAN, SAMPLES, Clean, Sample

_SLOW = {"torchscript-archive"}


@pytest.mark.parametrize(
    "sample",
    [
        pytest.param(s, id=s.name, marks=[pytest.mark.slow] if s.name in _SLOW else [])
        for s in SAMPLES
    ],
)
def test_sample_is_reported(sample: Sample, tmp_path: Path) -> None:
    sample.make(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    bar = min((RULES[r].severity for r in sample.rules), key=lambda s: s.rank, default="high")
    assert report.failed(bar), report.to_text()  # medium only for heuristics (ShadowLogic)
    if sample.rules:
        assert set(sample.rules) <= rules_of(report, "info"), report.to_text()
    else:
        assert report.unscanned, report.to_text()


@pytest.mark.parametrize("clean", CLEAN, ids=[c.name for c in CLEAN])
def test_clean_control_passes(clean: Clean, tmp_path: Path) -> None:
    clean.make(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert rules_of(report, "low") == set(), report.to_text()
    if clean.name == "clean-encrypted-zip":  # honest: its content cannot be checked
        assert [u.reason.split(" (")[0] for u in report.unscanned] == ["encrypted ZIP"]
    else:
        assert report.unscanned == (), report.to_text()
