"""Integration fixtures: a real local multi-node Ray cluster for the scale-out tests (started
once per session), and loopback access for huggingface_hub's clients.

``ray.cluster_utils.Cluster`` runs a head node and a second node as separate raylets on this
machine (loopback only), 1 CPU each, so actor pools and replicas really spread over two nodes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="the ray extra is part of requirements.lock")
    from ray.cluster_utils import Cluster

    # One proxy serves the test's port: let it route to replicas on both nodes (Ray Serve
    # prefers the proxy's own node by default; `serve --ray` sets the same when it starts Ray).
    os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="onnxguard", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def loopback_hub_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite sets HF_HUB_OFFLINE (no test may reach the Hub); huggingface_hub's clients in
    these tests only talk to a server on 127.0.0.1, so the offline switch is lifted for them."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
