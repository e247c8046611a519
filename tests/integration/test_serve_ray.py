"""``serve --ray`` on a real two-node Ray cluster: two replicas behind Ray Serve's proxy.

Checked over real HTTP on loopback: every replica verified its bundle before readiness; requests
reach both replicas; a key's rate limit is global across replicas; one audit hash chain holds the
records of both replicas and verifies; /metrics on any replica shows both; a tampered bundle
fails the deployment with a clear error.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from onnxguard.errors import ServeError
from onnxguard.runtime import Engine
from onnxguard.serve.audit import verify_chain
from onnxguard.serve.auth import generate_secret, key_line
from onnxguard.serve.ray_serve import RayOptions, RayService, merge_metrics
from onnxguard.serve.settings import AuditSettings, BatchSettings, RateLimit, ServeConfig

pytestmark = pytest.mark.slow

TEXTS = ["a good movie", "the worst film ever", "slow and boring plot", "great acting"]
LIMIT = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def deployed(ray_cluster: Any, tiny_bundle_factory: Callable[..., Path],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, ServeConfig]]:
    tmp = tmp_path_factory.mktemp("ray-serve")
    secret = generate_secret()
    keys = tmp / "keys.txt"
    keys.write_text(key_line("client", secret, ["infer", "metrics"]) + "\n")
    keys.chmod(0o600)
    config = ServeConfig(
        bundle=tiny_bundle_factory("bert", "text-classification", "none"),
        port=_free_port(),
        api_keys_file=keys,
        rate_limit=RateLimit(LIMIT, 3600.0),
        audit=AuditSettings(path=tmp / "audit.log"),
        batching=BatchSettings(max_wait_ms=2.0),
        threads=1,
    )
    service = RayService(config, RayOptions(replicas=2, cpus_per_replica=1.0))
    url = service.start()
    assert service.wait_ready(120), "both replicas should verify and report ready"
    yield url, secret, config
    service.stop()


def _wait_ready(client: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.get(url + "/v2/health/ready").status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError("readiness never answered 200")


def test_replicas_serve_share_limits_and_one_audit_chain(
    deployed: tuple[str, str, ServeConfig], tiny_bundle_factory: Callable[..., Path]
) -> None:
    url, secret, config = deployed
    headers = {"Authorization": f"Bearer {secret}"}
    expected = Engine.from_bundle(config.bundle).predict(TEXTS)
    with httpx.Client(timeout=30) as client:
        _wait_ready(client, url)
        assert client.post(url + "/v1/classify", json={"texts": TEXTS}).status_code == 401

        def call(_: int) -> httpx.Response:
            return client.post(url + "/v1/classify", json={"texts": TEXTS}, headers=headers)

        with ThreadPoolExecutor(6) as pool:  # concurrent, so both replicas get requests
            responses = list(pool.map(call, range(LIMIT + 6)))
        statuses = [r.status_code for r in responses]
        # One bucket for the key across both replicas: exactly LIMIT requests pass.
        assert statuses.count(200) == LIMIT and statuses.count(429) == 6, statuses
        for response in responses:
            if response.status_code == 200:
                labels = [r["label"] for r in response.json()["results"]]
                assert labels == [e["label"] for e in expected]
        time.sleep(2.5)  # replicas report their metrics to the hub every second
        metrics = client.get(url + "/metrics", headers=headers)
    assert metrics.status_code in (200, 429)
    report = verify_chain(config.audit.path)  # type: ignore[arg-type]
    assert report.ok, report.to_dict()
    records = [line for line in config.audit.path.read_text().splitlines()  # type: ignore[union-attr]
               if '"type":"request"' in line.replace(" ", "")]
    assert len(records) >= LIMIT + 6


def test_metrics_show_both_replicas(deployed: tuple[str, str, ServeConfig]) -> None:
    """The hub holds every replica's metrics (the key's bucket is spent by the test above)."""
    import ray

    hub = ray.get_actor("onnxguard-hub", namespace="onnxguard")
    snapshots = ray.get(hub.metrics.remote())
    assert len(snapshots) == 2
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for data in snapshots.values()
        for line in data.decode().splitlines()
        if line.startswith("onnxguard_requests_total{") and 'status="200"' in line
    )
    per_replica = [
        sum(float(line.rsplit(" ", 1)[1]) for line in data.decode().splitlines()
            if line.startswith("onnxguard_requests_total{") and 'endpoint="/v1/classify"' in line)
        for data in snapshots.values()
    ]
    assert served >= LIMIT - 1
    assert all(count > 0 for count in per_replica), "requests should reach both replicas"
    merged = merge_metrics(snapshots).decode()
    assert merged.count("# HELP onnxguard_requests_total") == 1
    assert len({line.split('replica="', 1)[1].split('"', 1)[0]
                for line in merged.splitlines() if 'replica="' in line}) == 2


def test_tampered_bundle_fails_the_deployment(
    ray_cluster: Any, tiny_bundle_factory: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle_factory("bert", "text-classification", "none"), bundle)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    config = ServeConfig(bundle=bundle, port=_free_port(), allow_unauthenticated=True)
    service = RayService(config, RayOptions(replicas=1, app_name="tampered"))
    with pytest.raises(ServeError) as info:
        service.start()
    assert "deployment failed" in info.value.message
    assert info.value.hint and "verify" in info.value.hint
