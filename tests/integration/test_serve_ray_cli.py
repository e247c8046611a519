"""``onnxguard serve BUNDLE --ray`` as a process joining a real two-node cluster: it serves,
audits, and on SIGTERM stops cleanly (exit 0, the audit chain closed and verified)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from onnxguard.serve.audit import verify_chain

pytestmark = pytest.mark.slow


def test_serve_ray_process(ray_cluster: Any, tiny_bundle_factory: Callable[..., Path],
                           tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    audit = tmp_path / "audit.log"
    bundle = tiny_bundle_factory("bert", "text-classification", "none")
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxguard", "serve", str(bundle), "--ray", "--replicas", "2",
         "--cpus-per-replica", "0.5", "--address", ray_cluster.address, "--port", str(port),
         "--allow-unauthenticated", "--audit-log", str(audit), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"serving http://127.0.0.1:{port}" in line, line + (process.stderr.read()
                                                                   if process.poll() else "")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.get(url + "/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.5)
            response = client.post(url + "/v1/classify", json={"texts": ["great", "awful"]})
            assert response.status_code == 200
            assert len(response.json()["results"]) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
    report = verify_chain(audit)
    assert report.ok and report.closed, report.to_dict()
