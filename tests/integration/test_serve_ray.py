"""``serve --ray`` on a real two-node Ray cluster: two replicas behind Ray Serve's proxy.

Checked over real HTTP on loopback: every replica verified its bundle before readiness; requests
reach both replicas; a key's rate limit is global across replicas; one audit hash chain holds the
records of both replicas and verifies; /metrics on any replica shows both; a tampered bundle
fails the deployment with a clear error.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from tiny_models import tampered_copy

pytestmark = pytest.mark.slow

TEXTS = ["a good movie", "the worst film ever", "slow and boring plot", "great acting"]
LIMIT = 40  # per key per hour: the client key spends ~35 in the first two tests


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tampered_bundle_fails_the_deployment(
    ray_cluster: Any, tiny_bundle_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """First in the file: before the module's deployment owns Ray Serve's proxy."""
    bundle = tampered_copy(tiny_bundle_factory("bert", "text-classification", "none"),
                           tmp_path / "b")
    config = ServeConfig(bundle=bundle, port=_free_port(), allow_unauthenticated=True)
    service = RayService(config, RayOptions(replicas=1, app_name="tampered"))
    with pytest.raises(ServeError) as info:
        service.start()
    assert "deployment failed" in info.value.message
    assert info.value.hint and "verify" in info.value.hint


@dataclass(frozen=True)
class Deployed:
    url: str
    client_key: str
    limited_key: str
    config: ServeConfig
    service: RayService


@pytest.fixture(scope="module")
def deployed(ray_cluster: Any, tiny_bundle_factory: Callable[..., Path],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("ray-serve")
    client, limited = generate_secret(), generate_secret()
    keys = tmp / "keys.txt"
    keys.write_text(key_line("client", client, ["infer", "metrics"]) + "\n"
                    + key_line("limited", limited) + "\n")
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
    yield Deployed(url, client, limited, config, service)
    service.stop()


def _wait_ready(client: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.get(url + "/v2/health/ready").status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError("readiness never answered 200")


def _classify_many(url: str, key: str, count: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(6) as pool:
        return list(pool.map(
            lambda _: client.post(url + "/v1/classify", json={"texts": TEXTS}, headers=headers),
            range(count)))


def _requests_per_replica() -> list[float]:
    import ray

    hub = ray.get_actor("onnxguard-hub", namespace="onnxguard")
    time.sleep(2.5)  # replicas report their metrics to the hub every second
    snapshots = ray.get(hub.metrics.remote())
    return [
        sum(float(line.rsplit(" ", 1)[1]) for line in data.decode().splitlines()
            if line.startswith("onnxguard_requests_total{") and 'endpoint="/v1/classify"' in line)
        for data in snapshots.values()
    ]


def test_both_replicas_serve_the_engines_answers(deployed: Deployed) -> None:
    expected = Engine.from_bundle(deployed.config.bundle).predict(TEXTS)
    with httpx.Client(timeout=30) as client:
        _wait_ready(client, deployed.url)
        assert client.post(deployed.url + "/v1/classify",
                           json={"texts": TEXTS}).status_code == 401
    responses = _classify_many(deployed.url, deployed.client_key, 16)
    assert [r.status_code for r in responses] == [200] * 16
    for response in responses:
        assert [r["label"] for r in response.json()["results"]] == [e["label"] for e in expected]
    per_replica = _requests_per_replica()
    assert len(per_replica) == 2 and all(n > 0 for n in per_replica), per_replica
    with httpx.Client(timeout=30) as client:
        text = client.get(deployed.url + "/metrics",
                          headers={"Authorization": f"Bearer {deployed.client_key}"}).text
    replicas = {line.split('replica="', 1)[1].split('"', 1)[0]
                for line in text.splitlines() if 'replica="' in line}
    assert len(replicas) == 2 and text.count("# HELP onnxguard_requests_total") == 1


def test_a_killed_replica_is_replaced(deployed: Deployed) -> None:
    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::onnxguard#onnxguard#")]
    assert len(replicas) == 2
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(_classify_many, deployed.url, deployed.client_key, 12)
        ray.kill(victim, no_restart=True)
        during = [r.status_code for r in load.result()]
    assert during.count(200) >= 6, during  # requests on the killed replica may fail

    def replica_names() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::onnxguard#onnxguard#")}

    deadline = time.monotonic() + 120
    while len(replica_names() - {replicas[0]["name"]}) < 2:
        assert time.monotonic() < deadline, "Ray Serve should start a replacement replica"
        time.sleep(0.5)
    time.sleep(3.5)  # the killed replica's last report goes stale
    assert deployed.service.wait_ready(120), "the new replica should verify and report ready"
    after = [r.status_code for r in _classify_many(deployed.url, deployed.client_key, 6)]
    assert after == [200] * 6


def test_rate_limit_is_global_and_one_audit_chain_verifies(deployed: Deployed) -> None:
    statuses = [r.status_code for r in _classify_many(deployed.url, deployed.limited_key,
                                                      LIMIT + 6)]
    # One bucket for the key across both replicas: exactly LIMIT requests pass.
    assert statuses.count(200) == LIMIT and statuses.count(429) == 6, statuses
    audit = deployed.config.audit.path
    assert audit is not None
    report = verify_chain(audit)
    assert report.ok, report.to_dict()
    requests = [json.loads(line) for line in audit.read_text().splitlines()
                if json.loads(line).get("type") == "request"]
    assert sum(r.get("key_id") == "limited" for r in requests) == LIMIT + 6


def test_merge_metrics_labels_every_sample() -> None:
    merged = merge_metrics({
        "a": b"# HELP x_total X.\n# TYPE x_total counter\nx_total{k=\"1\"} 2.0\ny 1.0\n",
        "b": b"# HELP x_total X.\n# TYPE x_total counter\nx_total{k=\"1\"} 3.0\n",
    }).decode()
    assert merged.splitlines() == [
        "# HELP x_total X.", "# TYPE x_total counter",
        'x_total{replica="a",k="1"} 2.0', 'y{replica="a"} 1.0', 'x_total{replica="b",k="1"} 3.0',
    ]
