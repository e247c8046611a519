"""A keyed server on loopback for a tiny bundle (shared by the compatibility-route tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxguard.serve.app import create_app
from onnxguard.serve.auth import generate_secret, key_line
from onnxguard.serve.settings import BatchSettings, Limits, RateLimit, ServeConfig
from onnxguard.serve.testing import BackgroundServer


def serve_with_key(bundle: Path, tmp: Path, **changes: Any) -> tuple[BackgroundServer, str]:
    """A started, ready server with one infer key (returned); generous limits unless changed."""
    secret = generate_secret()
    keys = tmp / "keys.txt"
    keys.write_text(key_line("client", secret) + "\n")
    keys.chmod(0o600)
    settings: dict[str, Any] = {
        "bundle": bundle, "api_keys_file": keys, "rate_limit": RateLimit(100_000, 60.0),
        "token_limit": None, "batching": BatchSettings(max_wait_ms=2.0),
        "limits": Limits(max_chars=100_000),
    } | changes
    server = BackgroundServer(create_app(ServeConfig(**settings))).start()
    server.wait_ready()
    return server, secret
