"""Assertion helpers shared by the scanner tests."""

from __future__ import annotations


def rules_of(report: object, minimum: str = "low") -> set[str]:
    """Rule ids at or above ``minimum`` in a ScanReport."""
    from onnxguard.scan import ScanReport

    assert isinstance(report, ScanReport)
    return {f.rule_id for f in report.at_or_above(minimum)}


def finding(report: object, rule_id: str) -> object:
    """The first finding of ``rule_id`` (fails the test when there is none)."""
    from onnxguard.scan import ScanReport

    assert isinstance(report, ScanReport)
    matches = [f for f in report.findings if f.rule_id == rule_id]
    assert matches, f"no {rule_id} in {[f.to_dict() for f in report.findings]}"
    return matches[0]
