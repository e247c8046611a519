"""``onnxguard serve``: a secure, batched inference server for one verified bundle.

``create_app(ServeConfig(...))`` builds the FastAPI app; ``onnxguard serve`` runs it with uvicorn.
Serve-side only (onnxruntime, tokenizers, numpy, FastAPI, uvicorn, prometheus-client): nothing
here imports torch or transformers.  See docs/SERVING.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onnxguard.serve.settings import (
    AuditSettings,
    BatchSettings,
    DocsMode,
    Limits,
    RateLimit,
    ServeConfig,
    TLSSettings,
)

if TYPE_CHECKING:
    from onnxguard.serve.app import create_app
    from onnxguard.serve.audit import verify_chain

__all__ = [
    "AuditSettings",
    "BatchSettings",
    "DocsMode",
    "Limits",
    "RateLimit",
    "ServeConfig",
    "TLSSettings",
    "create_app",
    "verify_chain",
]


def __getattr__(name: str) -> Any:
    # FastAPI and uvicorn are imported only when the app is actually built.
    if name == "create_app":
        from onnxguard.serve.app import create_app

        return create_app
    if name == "verify_chain":
        from onnxguard.serve.audit import verify_chain

        return verify_chain
    raise AttributeError(name)
