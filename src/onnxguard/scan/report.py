"""Scan results and their renderings: text for people, JSON for scripts, SARIF 2.1.0 for CI.

A report is immutable and self-contained: findings, files that could not be scanned (a failure
in its own right, never a silent pass) and what every file was identified as.  ``summary()`` is
the small JSON form that goes into the bundle manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from onnxguard.scan._rules import RULES, Severity

TOOL_NAME = "onnxguard-scan"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub code scanning reads `security-severity` (0.0-10.0) to rank alerts.
_SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


@dataclass(frozen=True)
class Finding:
    """One problem: which rule, how bad, where, what and how to fix it."""

    rule_id: str
    severity: Severity
    file: str
    location: str
    message: str
    hint: str

    @property
    def rule_name(self) -> str:
        return RULES[self.rule_id].name

    def to_dict(self) -> dict[str, str]:
        return {
            "rule_id": self.rule_id,
            "rule": self.rule_name,
            "severity": self.severity.value,
            "file": self.file,
            "location": self.location,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class Unscanned:
    """A file the scanner could not check, and why (this fails the scan)."""

    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class ScannedFile:
    """What a file was identified as, by content."""

    file: str
    kind: str
    size: int


def _sort_key(finding: Finding) -> tuple[int, str, str, str]:
    return (-finding.severity.rank, finding.file, finding.rule_id, finding.location)


@dataclass(frozen=True)
class ScanReport:
    """The outcome of a scan; findings are sorted worst first."""

    root: str
    findings: tuple[Finding, ...] = ()
    unscanned: tuple[Unscanned, ...] = ()
    files: tuple[ScannedFile, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "findings", tuple(sorted(self.findings, key=_sort_key)))

    @property
    def files_scanned(self) -> int:
        return len(self.files)

    @property
    def max_severity(self) -> Severity | None:
        """The worst severity found, or None for no findings at all."""
        return self.findings[0].severity if self.findings else None

    def at_or_above(self, threshold: str | Severity) -> tuple[Finding, ...]:
        level = Severity.parse(threshold)
        return tuple(f for f in self.findings if f.severity.rank >= level.rank)

    def failed(self, fail_on: str | Severity = Severity.HIGH) -> bool:
        """True when anything was unscanned or a finding is at or above ``fail_on``."""
        return bool(self.unscanned) or bool(self.at_or_above(fail_on))

    def kind_of(self, file: str) -> str | None:
        """The content-identified kind of a file (``None`` when it was not seen)."""
        for entry in self.files:
            if entry.file == file:
                return entry.kind
        return None

    # --- renderings ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Small JSON-able summary for the bundle manifest."""
        counts = Counter(f.severity.value for f in self.findings)
        max_severity = self.max_severity
        return {
            "scanner": TOOL_NAME,
            "files_scanned": self.files_scanned,
            "unscanned": len(self.unscanned),
            "findings": {s.value: counts.get(s.value, 0) for s in reversed(Severity)},
            "max_severity": max_severity.value if max_severity else None,
            "rules": sorted({f.rule_id for f in self.findings}),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": TOOL_NAME,
            "root": self.root,
            "summary": self.summary(),
            "findings": [f.to_dict() for f in self.findings],
            "unscanned": [u.to_dict() for u in self.unscanned],
            "files": [{"file": f.file, "kind": f.kind, "size": f.size} for f in self.files],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self, *, min_severity: str | Severity = Severity.LOW) -> str:
        """Human report; info findings are listed only when ``min_severity`` is info."""
        level = Severity.parse(min_severity)
        lines = [f"onnxguard scan: {self.root}"]
        shown = [f for f in self.findings if f.severity.rank >= level.rank]
        for finding in shown:
            lines.append(
                f"  {finding.severity.value.upper():8} {finding.rule_id} {finding.rule_name}  "
                f"{finding.file}" + (f" [{finding.location}]" if finding.location else "")
            )
            lines.append(f"           {finding.message}")
            lines.append(f"           hint: {finding.hint}")
        for entry in self.unscanned:
            lines.append(f"  UNSCANNED {entry.file}: {entry.reason}")
        hidden = len(self.findings) - len(shown)
        counts = self.summary()["findings"]
        tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
        lines.append(
            f"{self.files_scanned} file(s) scanned, {tally}, {len(self.unscanned)} unscanned"
            + (f" ({hidden} below {level.value} not shown)" if hidden else "")
        )
        return "\n".join(lines) + "\n"

    def to_sarif(self) -> str:
        return json.dumps(self.to_sarif_dict(), indent=2)

    def to_sarif_dict(self) -> dict[str, Any]:
        """SARIF 2.1.0: one run, every rule in the catalogue, unscanned files as errors."""
        from onnxguard import __version__

        rule_ids = list(RULES)
        index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
        rules = [
            {
                "id": rule.id,
                "name": rule.name,
                "shortDescription": {"text": rule.title},
                "help": {"text": rule.help},
                "defaultConfiguration": {"level": _SARIF_LEVEL[rule.severity]},
                "properties": {
                    "tags": ["security", "supply-chain"],
                    "security-severity": _SECURITY_SEVERITY[rule.severity],
                },
            }
            for rule in RULES.values()
        ]
        results = [
            {
                "ruleId": f.rule_id,
                "ruleIndex": index[f.rule_id],
                "level": _SARIF_LEVEL[f.severity],
                "message": {"text": f"{f.message} Hint: {f.hint}"},
                "locations": [_sarif_location(f.file, f.location)],
                "properties": {"severity": f.severity.value, "hint": f.hint},
            }
            for f in self.findings
        ]
        notifications = [
            {
                "level": "error",
                "message": {"text": f"not scanned: {u.reason}"},
                "locations": [_sarif_location(u.file, "")],
            }
            for u in self.unscanned
        ]
        root_uri = _file_uri(self.root)
        return {
            "$schema": SARIF_SCHEMA,
            "version": "2.1.0",
            "runs": [
                {
                    "tool": {
                        "driver": {
                            "name": TOOL_NAME,
                            "version": __version__,
                            "informationUri": "https://github.com/onnxguard/onnxguard",
                            "rules": rules,
                        }
                    },
                    "originalUriBaseIds": {"SCANROOT": {"uri": root_uri}},
                    "invocations": [
                        {
                            "executionSuccessful": not self.unscanned,
                            "toolExecutionNotifications": notifications,
                        }
                    ],
                    "results": results,
                }
            ],
        }


def _file_uri(root: str) -> str:
    from pathlib import Path

    uri = Path(root).as_uri() if root.startswith("/") else root
    return uri if uri.endswith("/") else uri + "/"


def _sarif_location(file: str, location: str) -> dict[str, Any]:
    from urllib.parse import quote

    entry: dict[str, Any] = {
        "physicalLocation": {"artifactLocation": {"uri": quote(file), "uriBaseId": "SCANROOT"}}
    }
    if location:
        entry["logicalLocations"] = [{"fullyQualifiedName": location}]
    return entry
