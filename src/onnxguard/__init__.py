"""onnxguard: verified, optimized, signed ONNX bundles from unvetted Hugging Face models.

The public API is what this module exports; everything else may change.  Build-side names are
imported lazily so that serving a bundle never imports torch or transformers.
"""

from __future__ import annotations

import os
from typing import Any

# onnxruntime >= 1.2x records sessions in a local telemetry store unless told not to; a model
# server should not write model metadata anywhere it was not asked to.  Must precede its import.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from onnxguard.bundle import Manifest, read_manifest, verify_bundle_files
from onnxguard.errors import OnnxGuardError

__version__ = "0.1.0"

__all__ = [
    "Engine",
    "Manifest",
    "OnnxGuardError",
    "__version__",
    "build_bundle",
    "read_manifest",
    "verify_bundle_files",
]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from onnxguard.runtime import Engine

        return Engine
    if name == "build_bundle":
        from onnxguard.convert.pipeline import build_bundle

        return build_bundle
    raise AttributeError(name)
