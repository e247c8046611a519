"""The shipped graph as ONNX Runtime runs it: its operators after load-time fusion, and where the
kernel time goes at batch 8.  Written to the manifest so a user sees, without running a bench,
whether attention fused, what stayed fp32, and which op dominates."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROFILE_RUNS = 3


def session_profile(model: Path, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Op counts of the session graph and per-op kernel time over a few runs of ``feeds``."""
    import onnxruntime as ort

    from onnxguard.bench._profile import summarize_trace

    with tempfile.TemporaryDirectory(prefix="onnxguard-profile-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "trace")
        options.optimized_model_filepath = str(Path(tmp) / "session.onnx")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        for _ in range(PROFILE_RUNS):
            for feed in feeds:
                session.run(None, feed)
        trace = Path(session.end_profiling())
        summary = summarize_trace(trace, Path(tmp) / "session.onnx")
    shape = [list(next(iter(f.values())).shape) for f in feeds]
    return summary | {"feeds": shape}
