"""The server is serve-side only: a running server has not imported torch or transformers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def test_serving_never_imports_torch_or_transformers(
    tiny_bundle_factory: Callable[..., Path],
) -> None:
    bundle = tiny_bundle_factory("bert", "text-classification", "dynamic")
    code = f"""
import sys
import httpx
import onnxguard.cli  # every command registered, as `onnxguard serve` runs it
import onnxguard.serve, onnxguard.cli.serve
from onnxguard.serve.app import create_app
from onnxguard.serve.settings import ServeConfig
from onnxguard.serve.testing import BackgroundServer

app = create_app(ServeConfig(bundle={str(bundle)!r}, allow_unauthenticated=True))
with BackgroundServer(app) as server:
    server.wait_ready()
    response = httpx.post(server.url + "/v1/classify", json={{"texts": ["good"]}})
    assert response.status_code == 200, response.text
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print("heavy:", heavy)
assert not heavy, heavy
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "heavy: []" in result.stdout
