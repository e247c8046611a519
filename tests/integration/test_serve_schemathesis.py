"""Schemathesis against the server's own OpenAPI document: no generated request gets a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from onnxguard.runtime import Engine
from onnxguard.serve.app import create_app
from onnxguard.serve.auth import generate_secret, key_line
from onnxguard.serve.settings import AuditSettings, ServeConfig
from onnxguard.serve.testing import BackgroundServer


def _schemathesis() -> str:
    found = Path(sys.executable).with_name("st")
    return str(found) if found.exists() else (shutil.which("st") or "st")


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(
    tiny_bundle_factory: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = tiny_bundle_factory("bert", "text-classification", "dynamic")
    name = Engine.from_bundle(bundle).name
    secret = generate_secret()
    keys = tmp_path / "keys.txt"
    keys.write_text(key_line("fuzzer", secret, ["infer", "metrics"]) + "\n")
    keys.chmod(0o600)
    config = ServeConfig(
        bundle=bundle,
        api_keys_file=keys,
        rate_limit=None,
        audit=AuditSettings(path=tmp_path / "audit.log"),
    )
    settings = tmp_path / "schemathesis.toml"
    # The model's real name and version, so V2 requests reach the parser, not a 404.
    settings.write_text(f'[parameters]\nmodel_name = "{name}"\nmodel_version = "1"\n')
    # One worker: with several, hypothesis compiles lambdas in parallel threads, which trips a
    # CPython 3.11 bug ("AST constructor recursion depth mismatch") inside schemathesis itself.
    with BackgroundServer(create_app(config)) as server:
        server.wait_ready()  # (its polls before readiness are 503s: counted from here on)
        before = _server_errors(
            httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {secret}"}).text
        )
        result = subprocess.run(
            [
                _schemathesis(),
                "--config-file",
                str(settings),
                "--no-color",
                "run",
                f"{server.url}/openapi.json",
                "-H",
                f"Authorization: Bearer {secret}",
                "--checks",
                "not_a_server_error",
                "--phases",
                "coverage,fuzzing",
                "--max-examples",
                "15",
                "--seed",
                "7",
                "--max-time",
                "30",
                "--workers",
                "1",
                "--request-timeout",
                "20",
                "--suppress-health-check",
                "all",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        metrics = httpx.get(
            f"{server.url}/metrics", headers={"Authorization": f"Bearer {secret}"}
        ).text
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "generated" in result.stdout
    requests = [
        line for line in metrics.splitlines() if line.startswith("onnxguard_requests_total{")
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in requests) > 100
    assert _server_errors(metrics) == before, requests


def _server_errors(metrics: str) -> dict[str, float]:
    """5xx counts by endpoint from the server's own metrics."""
    return {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("onnxguard_requests_total{") and 'status="5' in line
    }
