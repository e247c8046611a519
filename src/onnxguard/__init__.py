"""onnxguard: verified, optimized, signed ONNX bundles from unvetted Hugging Face models.

The public API is what this module exports; everything else may change.  Build-side names are
imported lazily so that serving a bundle never imports torch or transformers.
"""

from __future__ import annotations

from typing import Any

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
        from onnxguard.build.pipeline import build_bundle

        return build_bundle
    raise AttributeError(name)
