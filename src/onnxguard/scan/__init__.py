"""Supply-chain scanner for model checkpoints and ONNX files; fail-closed.

``scan_path`` identifies every file by content and checks it: pickles by opcode simulation
against an allowlist (nothing is unpickled; a stream the walk cannot finish is high), safetensors
headers byte for byte, configs for remote code, chat templates (JSON, YAML, ``.jinja``, GGUF) with
Jinja2's own parser against an allowlist, Keras v3 configs, TensorFlow SavedModel graphs,
archives member by member (ZIP, 7z, tar, compressed streams; links and encryption reported),
ONNX graphs for external-data escapes, custom ops, lying tensors, resource exhaustion and
backdoor triggers.  Anything it cannot check is *unscanned*, which fails the scan like a finding
does.

    report = scan_path(Path("model_dir"))
    enforce(report, Severity.HIGH)   # raises ScanFindingsError / ScanIncompleteError
    manifest["scan"] = report.summary()
"""

from __future__ import annotations

from onnxguard.scan._context import ScanConfig
from onnxguard.scan._filetype import Kind, is_pickle_file, sniff_path
from onnxguard.scan._rules import RULES, Rule, Severity
from onnxguard.scan.report import Finding, ScannedFile, ScanReport, Unscanned
from onnxguard.scan.scanner import enforce, scan_path

__all__ = [
    "RULES",
    "Finding",
    "Kind",
    "Rule",
    "ScanConfig",
    "ScanReport",
    "ScannedFile",
    "Severity",
    "Unscanned",
    "enforce",
    "is_pickle_file",
    "scan_path",
    "sniff_path",
]
