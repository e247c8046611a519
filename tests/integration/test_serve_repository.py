"""A model repository on a real server: several models and versions, live swaps, refusals,
rollback, admin scope and model-restricted keys (``serve/repository.py``, ``serve/admin.py``)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from onnxguard.errors import RepositoryError
from onnxguard.integrity.keys import generate_signing_keypair
from onnxguard.integrity.signing import sign_bundle
from onnxguard.serve.app import create_app
from onnxguard.serve.audit import verify_chain
from onnxguard.serve.auth import generate_secret, key_line
from onnxguard.serve.settings import AuditSettings, BatchSettings, RateLimit, ServeConfig
from onnxguard.serve.testing import BackgroundServer
from tiny_models import tampered_copy


@pytest.fixture(scope="module")
def builds(tiny_bundle_factory: Callable[..., Path]) -> dict[str, Path]:
    """Two builds of one classifier (int8 and fp32: different digests) and an embedder."""
    return {
        "clf-int8": tiny_bundle_factory("bert", "text-classification", "dynamic"),
        "clf-fp32": tiny_bundle_factory("bert", "text-classification", "none"),
        "emb": tiny_bundle_factory("bert", "feature-extraction", "none"),
    }

class Keys:
    def __init__(self, tmp: Path) -> None:
        self.file = tmp / "keys.txt"
        self.secrets: dict[str, str] = {}
        lines = []
        for key_id, scopes, models in (
            ("ops", ("infer", "admin", "metrics"), None),
            ("client", ("infer",), None),
            ("emb-only", ("infer", "admin"), ("emb",)),
        ):
            secret = generate_secret()
            self.secrets[key_id] = secret
            lines.append(key_line(key_id, secret, scopes, models))
        self.file.write_text("\n".join(lines) + "\n")
        self.file.chmod(0o600)

    def header(self, key_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[key_id]}"}

def _serve(repo: Path, tmp: Path, **changes: Any) -> tuple[BackgroundServer, Keys]:
    keys = Keys(tmp)
    settings: dict[str, Any] = {
        "bundle": repo, "api_keys_file": keys.file, "rate_limit": RateLimit(100_000, 60.0),
        "token_limit": None, "batching": BatchSettings(max_wait_ms=2.0),
        "repository_poll_s": 0.2, "audit": AuditSettings(path=tmp / "audit.jsonl"),
    } | changes
    server = BackgroundServer(create_app(ServeConfig(**settings))).start()
    server.wait_ready()
    return server, keys

@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Callable[..., tuple[BackgroundServer, Keys]]]:
    started: list[BackgroundServer] = []

    def start(repo: Path, **changes: Any) -> tuple[BackgroundServer, Keys]:
        server, keys = _serve(repo, tmp_path, **changes)
        started.append(server)
        return server, keys

    yield start
    for server in started:
        server.stop()

def _place(source: Path, repo: Path, name: str, version: int) -> Path:
    """Copy a bundle in as a new version the way operators should: under a temporary name,
    then one rename (the poller never sees half a bundle)."""
    staging = repo / name / f".{version}.tmp"
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging)
    final = repo / name / str(version)
    staging.rename(final)
    return final

def _v2_infer(client: httpx.Client, model: str, version: str | None = None,
              headers: dict[str, str] | None = None) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["good"]}]}
    return client.post(path, json=body, headers=headers)

def _wait_for(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")

def _audit(tmp: Path, kind: str) -> list[dict[str, Any]]:
    lines = (tmp / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == kind]

def test_two_models_and_two_versions_at_once(
    builds: dict[str, Path], tmp_path: Path, serving: Callable[..., Any]
) -> None:
    repo = tmp_path / "repo"
    _place(builds["clf-int8"], repo, "clf", 1)
    _place(builds["clf-fp32"], repo, "clf", 2)
    _place(builds["emb"], repo, "emb", 1)
    (repo / "repository.toml").write_text('[models.clf]\npolicy = "all"\n')
    server, keys = serving(repo)
    ops = keys.header("ops")
    with httpx.Client(base_url=server.url, headers=ops, timeout=30) as client:
        for version in ("1", "2"):
            answer = _v2_infer(client, "clf", version)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == version
        assert _v2_infer(client, "clf").json()["model_version"] == "2"  # the default: newest
        assert _v2_infer(client, "clf", "3").status_code == 404
        assert client.get("/v2/models/clf").json()["versions"] == ["1", "2"]
        digests = {v: client.get(f"/v2/models/clf/versions/{v}/config").json()["parameters"]
                   ["bundle_digest"]["string_value"] for v in ("1", "2")}
        assert digests["1"] != digests["2"]

        embedded = client.post("/v1/embed", json={"texts": ["a", "b"], "model": "emb"})
        assert embedded.status_code == 200 and len(embedded.json()["embeddings"]) == 2
        classified = client.post("/v1/classify", json={"texts": ["good"], "model": "clf/1"})
        assert classified.status_code == 200
        unnamed = client.post("/v1/classify", json={"texts": ["good"]})
        assert unnamed.status_code == 400 and "serves 2 models" in unnamed.json()["error"]
        assert client.post("/v1/classify", json={"texts": ["x"], "model": "nope"}).status_code \
            == 404
        openai = client.post("/v1/embeddings", json={"input": "a", "model": "emb"})
        assert openai.status_code == 200, openai.text

        index = client.post("/v2/repository/index").json()
        assert [(r["name"], r["version"], r["state"]) for r in index] == [
            ("clf", "1", "READY"), ("clf", "2", "READY"), ("emb", "1", "READY")]
        metrics = client.get("/metrics").text
    assert 'onnxguard_model_requests_total{model="clf",outcome="ok",version="1"}' in metrics
    assert 'onnxguard_model_requests_total{model="emb",outcome="ok",version="1"}' in metrics
    assert 'onnxguard_model_info{bundle_digest="' in metrics and 'version="2"' in metrics
    requests = _audit(tmp_path, "request")
    assert {(r["model"], r["version"]) for r in requests if r["model"]} >= {
        ("clf", "1"), ("clf", "2"), ("emb", "1")}
    loads = {(r["model"], r["version"]) for r in _audit(tmp_path, "lifecycle")
             if r["action"] == "load"}
    assert loads == {("clf", "1"), ("clf", "2"), ("emb", "1")}

def test_a_new_version_swaps_in_under_load_without_a_failed_request(
    builds: dict[str, Path], tmp_path: Path, serving: Callable[..., Any]
) -> None:
    repo = tmp_path / "repo"
    _place(builds["clf-int8"], repo, "clf", 1)
    server, keys = serving(repo)
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, headers=keys.header("client"),
                          timeout=30) as client:
            while not stop.is_set():
                answer = _v2_infer(client, "clf")
                version = answer.json().get("model_version") if answer.status_code == 200 \
                    else None
                results.append((answer.status_code, version))

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: len(results) > 50)
        _place(builds["clf-fp32"], repo, "clf", 2)
        _wait_for(lambda: any(v == "2" for _, v in results[-20:]))
        seen = len(results)
        _wait_for(lambda: len(results) > seen + 100)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    statuses = {status for status, _ in results}
    assert statuses == {200}, f"failed requests during the swap: {statuses}"
    versions = [v for _, v in results]
    assert "1" in versions and "2" in versions
    assert versions[-50:] == ["2"] * 50  # once swapped, the old version gets no new work
    lifecycle = [(r["action"], r["version"]) for r in _audit(tmp_path, "lifecycle")]
    assert lifecycle == [("load", "1"), ("load", "2"), ("unload", "1")]

def test_unsigned_or_tampered_versions_are_refused_and_the_old_one_keeps_serving(
    builds: dict[str, Path], tmp_path: Path, serving: Callable[..., Any]
) -> None:
    pair = generate_signing_keypair(tmp_path / "signing")
    signed = tmp_path / "signed"
    shutil.copytree(builds["clf-int8"], signed)
    sign_bundle(signed, pair.private_key)
    signed_v3 = tmp_path / "signed-v3"
    shutil.copytree(builds["clf-fp32"], signed_v3)
    sign_bundle(signed_v3, pair.private_key)
    repo = tmp_path / "repo"
    _place(signed, repo, "clf", 1)
    server, keys = serving(repo, public_key=pair.public_key)
    with httpx.Client(base_url=server.url, headers=keys.header("ops"), timeout=30) as client:
        _place(builds["clf-fp32"], repo, "clf", 2)  # not signed
        tampered_copy(signed_v3, tmp_path / "tampered")
        _place(tmp_path / "tampered", repo, "clf", 3)

        def refused() -> dict[str, str]:
            index = client.post("/v2/repository/index").json()
            return {r["version"]: r["reason"] for r in index
                    if r.get("reason", "").startswith("refused")}

        _wait_for(lambda: set(refused()) == {"2", "3"})
        reasons = refused()
        assert "not signed" in reasons["2"], reasons["2"]
        assert "model.onnx" in reasons["3"], reasons["3"]
        answer = _v2_infer(client, "clf")
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        time.sleep(0.6)  # several polls: a refused version is not retried until it changes
        refusals = [r for r in _audit(tmp_path, "lifecycle") if r["action"] == "refused"]
        assert sorted(r["version"] for r in refusals) == ["2", "3"]
        assert "onnxguard_model_lifecycle_total{action=\"refused\",model=\"clf\"} 2.0" in \
            client.get("/metrics").text

        # An explicit load retries them: still refused, still serving version 1.
        again = client.post("/v2/repository/models/clf/load")
        assert again.status_code == 200, again.text
        assert set(again.json()["refused"]) == {"2", "3"}
        assert _v2_infer(client, "clf").json()["model_version"] == "1"

        # A properly signed version 4 is taken.
        _place(signed_v3, repo, "clf", 4)
        _wait_for(lambda: _v2_infer(client, "clf").json()["model_version"] == "4")

def test_rollback_restores_the_previous_version_and_load_undoes_it(
    builds: dict[str, Path], tmp_path: Path, serving: Callable[..., Any]
) -> None:
    repo = tmp_path / "repo"
    _place(builds["clf-int8"], repo, "clf", 1)
    _place(builds["clf-fp32"], repo, "clf", 2)
    server, keys = serving(repo)
    with httpx.Client(base_url=server.url, headers=keys.header("ops"), timeout=30) as client:
        assert _v2_infer(client, "clf").json()["model_version"] == "2"
        back = client.post("/v2/repository/models/clf/rollback")
        assert back.status_code == 200, back.text
        assert back.json() == {"model": "clf", "from": "2", "to": "1"}
        assert _v2_infer(client, "clf").json()["model_version"] == "1"
        assert _v2_infer(client, "clf", "2").status_code == 404
        time.sleep(0.6)  # the poller keeps the hold
        assert _v2_infer(client, "clf").json()["model_version"] == "1"
        index = {r["version"]: r for r in client.post("/v2/repository/index").json()}
        assert index["2"]["reason"] == "rolled back"
        none_left = client.post("/v2/repository/models/clf/rollback")
        assert none_left.status_code == 409 and "no earlier version" in none_left.json()["error"]

        assert client.post("/v2/repository/models/clf/load").status_code == 200
        assert _v2_infer(client, "clf").json()["model_version"] == "2"
        assert client.post("/v2/repository/models/clf/unload").json()["unloaded"] == ["2"]
        assert _v2_infer(client, "clf").status_code in (404, 503)
        time.sleep(0.6)  # polling leaves an unloaded model alone
        assert _v2_infer(client, "clf").status_code in (404, 503)
        assert client.post("/v2/repository/models/nope/load").status_code == 404
    actions = [(r["action"], r["version"], r["key_id"]) for r in _audit(tmp_path, "lifecycle")]
    assert ("rollback", "1", "ops") in actions and ("unload", "2", "ops") in actions
    assert verify_chain(tmp_path / "audit.jsonl").ok  # lifecycle records are in the hash chain

def test_admin_scope_and_keys_restricted_to_models(
    builds: dict[str, Path], tmp_path: Path, serving: Callable[..., Any]
) -> None:
    repo = tmp_path / "repo"
    _place(builds["clf-int8"], repo, "clf", 1)
    _place(builds["emb"], repo, "emb", 1)
    server, keys = serving(repo, default_model="emb")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client_key, emb_only = keys.header("client"), keys.header("emb-only")
        assert client.post("/v2/repository/index", headers=client_key).status_code == 403
        assert client.post("/v2/repository/models/clf/unload",
                           headers=client_key).status_code == 403
        assert _v2_infer(client, "clf", headers=emb_only).status_code == 403
        assert client.post("/v1/classify", json={"texts": ["x"], "model": "clf"},
                           headers=emb_only).status_code == 403
        assert client.post("/v2/repository/models/clf/unload",
                           headers=emb_only).status_code == 403
        index = client.post("/v2/repository/index", headers=emb_only).json()
        assert [r["name"] for r in index] == ["emb"]
        # The default model answers requests that name none (TEI routes have no model field).
        assert client.post("/v1/embed", json={"texts": ["a"]}, headers=emb_only).status_code \
            == 200
        assert client.post("/embed", json={"inputs": "a"}, headers=client_key).status_code == 200
        assert client.post("/v1/embed", json={"texts": ["a"]}).status_code == 401

@pytest.mark.parametrize("problem", ["tampered", "empty", "bad-policy"])
def test_a_repository_that_cannot_be_served_stops_the_server(
    problem: str, builds: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    if problem == "tampered":
        (repo / "clf").mkdir()
        tampered_copy(builds["clf-int8"], repo / "clf" / "1")
    elif problem == "empty":
        (repo / "repository.toml").write_text("")
    else:
        _place(builds["clf-int8"], repo, "clf", 1)
        (repo / "repository.toml").write_text('[models.clf]\npolicy = "newest"\n')
    errors: list[BaseException] = []
    app = create_app(ServeConfig(bundle=repo, allow_unauthenticated=True), on_fatal=errors.append)
    with BackgroundServer(app) as server:
        _wait_for(lambda: bool(errors), 60)
        assert httpx.get(server.url + "/v2/health/ready").status_code == 503
    assert isinstance(errors[0], RepositoryError)
    message = errors[0].message
    expected = {"tampered": "clf version 1", "empty": "holds no model versions",
                "bad-policy": "policy 'newest' is unknown"}[problem]
    assert expected in message, message


def test_a_single_bundle_server_lists_its_model_and_refuses_changes(
    builds: dict[str, Path], tmp_path: Path, serving: Callable[..., Any]
) -> None:
    server, keys = serving(builds["clf-int8"])
    with httpx.Client(base_url=server.url, headers=keys.header("ops"), timeout=30) as client:
        index = client.post("/v2/repository/index", json={"ready": True}).json()
        assert [(r["version"], r["state"]) for r in index] == [("1", "READY")]
        name = index[0]["name"]
        assert _v2_infer(client, name).json()["model_version"] == "1"
        refused = client.post(f"/v2/repository/models/{name}/unload")
        assert refused.status_code == 409 and "model repository" in refused.json()["error"]
        assert client.post("/v2/repository/index", json={"ready": 1}).status_code == 400
