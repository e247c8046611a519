"""The server over real HTTP on loopback: keys, limits, errors, batching, metrics, audit.

A real uvicorn server (``BackgroundServer``: real sockets and HTTP parsing) serves a tiny bundle
built by the real pipeline; clients are httpx.  Servers with special settings (tiny rate limit,
tiny queue, blocked loading) are started per test.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from onnxguard.errors import HashMismatchError
from onnxguard.runtime import Engine
from onnxguard.serve.app import create_app
from onnxguard.serve.audit import hash_inputs, verify_chain
from onnxguard.serve.auth import generate_secret, key_line
from onnxguard.serve.service import default_loader
from onnxguard.serve.settings import (
    AuditSettings,
    BatchSettings,
    DocsMode,
    Limits,
    RateLimit,
    ServeConfig,
)
from onnxguard.serve.testing import BackgroundServer

TEXTS = [
    "a good movie",
    "the worst film ever",
    "i love it",
    "slow and boring plot",
    "great acting",
    "no",
    "terrible service but the food was good",
    "it was fine",
]


@dataclass(frozen=True)
class Keys:
    path: Path
    infer: str
    ops: str
    """infer + metrics"""
    metrics_only: str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    infer, ops, metrics_only = generate_secret(), generate_secret(), generate_secret()
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(
        "\n".join(
            [
                key_line("client", infer),
                key_line("ops", ops, ["infer", "metrics"]),
                key_line("scraper", metrics_only, ["metrics"]),
            ]
        )
        + "\n"
    )
    path.chmod(0o600)
    return Keys(path, infer, ops, metrics_only)


@pytest.fixture(scope="module")
def bundle(tiny_bundle_factory: Callable[..., Path]) -> Path:
    return tiny_bundle_factory("bert", "text-classification", "dynamic")


@pytest.fixture(scope="module")
def engine(bundle: Path) -> Engine:
    return Engine.from_bundle(bundle)


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def config_for(bundle: Path, keys: Keys, tmp: Path, **changes: object) -> ServeConfig:
    base: dict[str, object] = {
        "bundle": bundle,
        "api_keys_file": keys.path,
        "audit": AuditSettings(path=tmp / "audit.log"),
        "rate_limit": RateLimit(100_000, 60.0),
        "limits": Limits(max_body_bytes=64 * 1024, max_texts=8, max_chars=500, max_tokens=200),
        "batching": BatchSettings(max_wait_ms=5.0),
    }
    base.update(changes)
    return ServeConfig(**base)  # type: ignore[arg-type]


@dataclass
class Running:
    server: BackgroundServer
    config: ServeConfig
    client: httpx.Client

    @property
    def audit_path(self) -> Path:
        assert self.config.audit.path is not None
        return self.config.audit.path


@pytest.fixture(scope="module")
def running(
    bundle: Path, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    config = config_for(bundle, keys, tmp_path_factory.mktemp("serve"))
    with BackgroundServer(create_app(config)) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield Running(server, config, client)


def classify(client: httpx.Client, secret: str, texts: list[str]) -> httpx.Response:
    return client.post("/v1/classify", json={"texts": texts}, headers=auth(secret))


# --- authentication ---------------------------------------------------------------------------
def test_health_needs_no_key(running: Running) -> None:
    assert running.client.get("/v2/health/live").json() == {"live": True}
    assert running.client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer ogk_not-a-real-key-at-all-0000"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/classify"),
        ("POST", "/v2/models/x/infer"),
        ("GET", "/v2"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/path"),
    ],
)
def test_401_without_or_with_a_wrong_key(
    running: Running, headers: dict[str, str], method: str, path: str
) -> None:
    response = running.client.request(
        method, path, headers=headers, json={"texts": ["x"]} if method == "POST" else None
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {
        "error": "missing or invalid API key (send Authorization: Bearer KEY)"
    }


def test_403_when_the_key_lacks_the_scope(running: Running, keys: Keys) -> None:
    assert running.client.get("/metrics", headers=auth(keys.infer)).status_code == 403
    assert classify(running.client, keys.metrics_only, ["x"]).status_code == 403
    assert running.client.get("/metrics", headers=auth(keys.metrics_only)).status_code == 200
    assert running.client.get("/metrics", headers=auth(keys.ops)).status_code == 200


# --- results -----------------------------------------------------------------------------------
def test_classify_matches_the_engine(running: Running, keys: Keys, engine: Engine) -> None:
    response = classify(running.client, keys.infer, TEXTS)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == engine.name
    for got, want in zip(body["results"], engine.predict(TEXTS), strict=True):
        assert got["label"] == want["label"]
        # abs 1e-3: dynamic int8 scales activations per batch, and batches differ here.
        assert got["score"] == pytest.approx(want["score"], abs=1e-3)
        assert set(got["scores"]) == set(engine.labels)


def test_concurrent_requests_share_batches_and_keep_their_results(
    running: Running, keys: Keys, engine: Engine
) -> None:
    expected = {t: r["label"] for t, r in zip(TEXTS, engine.predict(TEXTS), strict=True)}
    jobs = [[TEXTS[i % len(TEXTS)], TEXTS[(i * 3) % len(TEXTS)]] for i in range(48)]
    before = _metric(running.client, keys, "onnxguard_batch_size_count")

    def one(texts: list[str]) -> list[str]:
        response = classify(running.client, keys.infer, texts)
        assert response.status_code == 200, response.text
        return [r["label"] for r in response.json()["results"]]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, jobs))
    for texts, labels in zip(jobs, results, strict=True):
        assert labels == [expected[t] for t in texts]
    batches = _metric(running.client, keys, "onnxguard_batch_size_count") - before
    assert 0 < batches < len(jobs) * 2  # texts from different requests shared batches


def test_embed_on_a_classifier_is_a_clear_400(running: Running, keys: Keys) -> None:
    response = running.client.post("/v1/embed", json={"texts": ["x"]}, headers=auth(keys.infer))
    assert response.status_code == 400
    assert "/v1/classify" in response.json()["error"]


def test_v2_json_inference_and_unknown_models(running: Running, keys: Keys, engine: Engine) -> None:
    request = {
        "id": "r1",
        "inputs": [
            {
                "name": "text",
                "shape": [2, 1],
                "datatype": "BYTES",
                "data": [["a good movie"], ["i love it"]],
            }
        ],
        "outputs": [{"name": "label"}, {"name": "probabilities"}],
    }
    url = f"/v2/models/{engine.name}/infer"
    response = running.client.post(url, json=request, headers=auth(keys.infer))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r1" and body["model_name"] == engine.name
    assert [o["name"] for o in body["outputs"]] == ["label", "probabilities"]
    assert body["outputs"][0]["data"] == [
        r["label"] for r in engine.predict(["a good movie", "i love it"])
    ]
    assert body["outputs"][1]["shape"] == [2, len(engine.labels)]
    for path in ("/v2/models/other/infer", f"/v2/models/{engine.name}/versions/2/infer"):
        missing = running.client.post(path, json=request, headers=auth(keys.infer))
        assert missing.status_code == 404 and "unknown model" in missing.json()["error"]
    meta = running.client.get(f"/v2/models/{engine.name}", headers=auth(keys.infer)).json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


# --- limits and malformed input ------------------------------------------------------------------
def test_413_for_a_large_body(running: Running, keys: Keys) -> None:
    big = json.dumps({"texts": ["x" * 400] * 200}).encode()
    response = running.client.post(
        "/v1/classify",
        content=big,
        headers={**auth(keys.infer), "Content-Type": "application/json"},
    )
    assert response.status_code == 413 and "exceeds" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"texts": ["'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"]}'

    response = running.client.post(
        "/v1/classify",
        content=chunks(),
        headers={**auth(keys.infer), "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_413_for_a_gzip_bomb(running: Running, keys: Keys) -> None:
    bomb = gzip.compress(b'{"texts": ["' + b"a" * (20 * 1024 * 1024) + b'"]}')
    assert len(bomb) < 64 * 1024  # the compressed body itself is within the limit
    response = running.client.post(
        "/v1/classify",
        content=bomb,
        headers={
            **auth(keys.infer),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    assert response.status_code == 413
    assert "decompressed" in response.json()["error"]
    fine = gzip.compress(json.dumps({"texts": ["a good movie"]}).encode())
    response = running.client.post(
        "/v1/classify",
        content=fine,
        headers={
            **auth(keys.infer),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["x"] * 9, "too many texts"),
        (["x" * 501], "characters"),
        (["good " * 60] * 4, "too many tokens"),
    ],
)
def test_413_for_input_limits(running: Running, keys: Keys, texts: list[str], message: str) -> None:
    response = classify(running.client, keys.infer, texts)
    assert response.status_code == 413 and message in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"texts": ["x"', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'{"texts": ["x"], "extra": 1}', "application/json", 422),
        (b'{"texts": "x"}', "application/json", 422),
        (b'{"texts": []}', "application/json", 422),
        (b'{"texts": [1, 2]}', "application/json", 422),
        (b'{"texts": [null]}', "application/json", 422),
        (b'["x"]', "application/json", 422),
        (b"{}", "application/json", 422),
        (b'{"texts": ["\\ud800"]}', "application/json", 400),  # lone surrogate: not JSON text
        (b'{"texts": ["x"]}', "text/plain", 415),
        (b'{"texts": ["x"]}', "", 415),
    ],
)
def test_malformed_input_is_4xx_never_500(
    running: Running, keys: Keys, body: bytes, content_type: str, status: int
) -> None:
    headers = {**auth(keys.infer)}
    if content_type:
        headers["Content-Type"] = content_type
    response = running.client.post("/v1/classify", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}


def test_unknown_paths_and_methods(running: Running, keys: Keys) -> None:
    assert running.client.get("/v1/classify", headers=auth(keys.infer)).status_code == 405
    response = running.client.get("/nope", headers=auth(keys.infer))
    assert response.status_code == 404 and response.json() == {"error": "not found"}


# --- headers, metrics, audit, logs ---------------------------------------------------------------
def test_security_headers_and_no_cors_by_default(running: Running, keys: Keys) -> None:
    first = classify(running.client, keys.infer, ["x"])
    second = running.client.post(
        "/v1/classify",
        json={"texts": ["x"]},
        headers={**auth(keys.infer), "Origin": "https://evil.example"},
    )
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert first.headers["cache-control"] == "no-store"
    assert first.headers["x-content-type-options"] == "nosniff"
    assert "server" not in first.headers
    assert "access-control-allow-origin" not in second.headers
    preflight = running.client.options(
        "/v1/classify",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def _metric(client: httpx.Client, keys: Keys, name: str) -> float:
    """The value of an unlabelled metric line."""
    text = client.get("/metrics", headers=auth(keys.ops)).text
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_cover_requests_latency_queue_batches_padding(running: Running, keys: Keys) -> None:
    classify(running.client, keys.infer, TEXTS)
    classify(running.client, "wrong-key-wrong-key-wrong", TEXTS)
    text = running.client.get("/metrics", headers=auth(keys.ops)).text
    for needle in (
        'onnxguard_requests_total{endpoint="/v1/classify",status="200"}',
        'onnxguard_requests_total{endpoint="/v1/classify",status="401"}',
        'onnxguard_request_duration_seconds_bucket{endpoint="/v1/classify"',
        "onnxguard_queue_wait_seconds_count",
        "onnxguard_batch_size_bucket",
        "onnxguard_batch_padding_ratio_sum",
        "onnxguard_requests_in_flight",
        "onnxguard_queue_depth",
        "onnxguard_ready 1.0",
        "onnxguard_model_info{",
        'onnxguard_rejected_total{reason="unauthorized"}',
    ):
        assert needle in text, needle
    assert "/no/such/path" not in text  # labels are route templates, never raw paths


def test_audit_log_records_every_request_and_verifies(
    running: Running, keys: Keys, engine: Engine
) -> None:
    texts = ["an audited text", "another one"]
    ok = classify(running.client, keys.infer, texts)
    denied = classify(running.client, "ogk_definitely-not-a-valid-key", texts)
    records = [json.loads(line) for line in running.audit_path.read_text().splitlines()]
    by_id = {r.get("request_id"): r for r in records}
    record = by_id[ok.headers["x-request-id"]]
    assert record["key_id"] == "client" and record["status"] == 200
    assert record["outcome"] == "ok" and record["endpoint"] == "/v1/classify"
    assert record["inputs"] == 2 and record["inputs_sha256"] == hash_inputs(texts)
    assert record["model"] == engine.name and record["bundle_digest"] == engine.digest
    assert record["client"] == "127.0.0.1" and record["latency_ms"] > 0
    assert denied.status_code == 401  # audited in full or in its address's digest (see below)
    refused = [r for r in records if r.get("status") == 401]
    assert refused and all(
        (r["outcome"], r["key_id"], r["endpoint"]) == ("unauthorized", None, "/v1/classify")
        for r in refused
    )
    raw = running.audit_path.read_text()
    assert "an audited text" not in raw and keys.infer not in raw
    assert not any(r.get("endpoint") == "/v2/health/live" for r in records)
    report = verify_chain(running.audit_path)
    assert report.ok, report.problems


def test_text_and_keys_never_reach_the_logs(
    running: Running, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    secret_text = "my very private sentence 4711"
    with caplog.at_level(logging.DEBUG):
        classify(running.client, keys.infer, [secret_text])
        running.client.post(
            "/v1/classify",
            content=b'{"texts": ["' + secret_text.encode() + b'"], "x": 1}',
            headers={**auth(keys.infer), "Content-Type": "application/json"},
        )
        classify(running.client, keys.infer + "x", [secret_text])
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "POST /v1/classify 200" in logged  # the access log is there
    assert secret_text not in logged and keys.infer not in logged
    assert "4711" not in logged


def test_openapi_needs_a_key_by_default(running: Running, keys: Keys) -> None:
    assert running.client.get("/openapi.json").status_code == 401
    schema = running.client.get("/openapi.json", headers=auth(keys.infer)).json()
    paths = schema["paths"]
    assert {"/v1/classify", "/v2/models/{model_name}/infer"} <= set(paths)
    assert "/v1/embed" not in paths  # a classifier's document lists only its task's route
    infer = paths["/v2/models/{model_name}/infer"]["post"]["responses"]
    assert "422" not in infer and {"400", "404", "429", "503"} <= set(infer)  # what V2 answers


# --- servers with special settings ----------------------------------------------------------------
def test_429_past_the_rate_with_retry_after(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    config = config_for(bundle, keys, tmp_path, rate_limit=RateLimit(3, 60.0))
    with BackgroundServer(create_app(config)) as server, httpx.Client(base_url=server.url) as c:
        server.wait_ready()
        statuses = [classify(c, keys.infer, ["x"]).status_code for _ in range(3)]
        limited = classify(c, keys.infer, ["x"])
        other = classify(c, keys.ops, ["x"])
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "rate limit" in limited.json()["error"]
    assert other.status_code == 200  # limits are per key


def test_503_under_overload_is_fast(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    config = config_for(
        bundle,
        keys,
        tmp_path,
        limits=Limits(max_texts=2),
        batching=BatchSettings(queue_size=2, max_wait_ms=1500, max_batch=64),
    )
    with (
        BackgroundServer(create_app(config)) as server,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        server.wait_ready()
        first: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: first.append(classify(c, keys.infer, ["a", "b"])))
        holder.start()
        _wait_for(lambda: _metric(c, keys, "onnxguard_queue_depth") >= 2)
        refused = classify(c, keys.infer, ["c"])
        holder.join()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "busy" in refused.json()["error"]
    assert refused.elapsed.total_seconds() < 1.0
    assert first[0].status_code == 200  # the accepted request still completes


def test_504_past_the_request_timeout(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    config = config_for(
        bundle,
        keys,
        tmp_path,
        batching=BatchSettings(timeout_s=0.3, max_wait_ms=3000, max_batch=64),
    )
    with BackgroundServer(create_app(config)) as server, httpx.Client(base_url=server.url) as c:
        server.wait_ready()
        response = classify(c, keys.infer, ["x"])
    assert response.status_code == 504 and "no result" in response.json()["error"]


def test_ready_only_after_verification_and_warm_up(
    bundle: Path, keys: Keys, tmp_path: Path
) -> None:
    release = threading.Event()
    config = config_for(bundle, keys, tmp_path)
    real_loader = default_loader(config)

    def slow_loader() -> Engine:
        release.wait(30)
        return real_loader()

    app = create_app(config, loader=slow_loader)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        assert classify(c, keys.infer, ["x"]).status_code == 503
        assert c.get("/v2/models/x/ready", headers=auth(keys.infer)).status_code == 503
        release.set()
        server.wait_ready(30)
        service = app.state.onnxguard.service
        assert service.ready and service.load_seconds is not None
        assert classify(c, keys.infer, ["x"]).status_code == 200


def test_a_tampered_bundle_never_becomes_ready(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    tampered = tmp_path / "bundle"
    shutil.copytree(bundle, tampered)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / "model.onnx").write_bytes(bytes(data))
    failures: list[BaseException] = []
    failed = threading.Event()

    def on_fatal(exc: BaseException) -> None:
        failures.append(exc)
        failed.set()

    config = config_for(tampered, keys, tmp_path)
    with (
        BackgroundServer(create_app(config, on_fatal=on_fatal)) as server,
        httpx.Client(base_url=server.url) as c,
    ):
        assert failed.wait(30)
        assert c.get("/v2/health/ready").status_code == 503
    assert isinstance(failures[0], HashMismatchError)


def test_docs_public_and_off(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    for mode, status_without_key, status_with_key in (
        (DocsMode.PUBLIC, 200, 200),
        (DocsMode.OFF, 401, 404),
    ):
        config = config_for(bundle, keys, tmp_path, docs=mode)
        with BackgroundServer(create_app(config)) as server, httpx.Client(base_url=server.url) as c:
            assert c.get("/openapi.json").status_code == status_without_key
            assert c.get("/openapi.json", headers=auth(keys.infer)).status_code == status_with_key


def test_cors_only_for_listed_origins(bundle: Path, keys: Keys, tmp_path: Path) -> None:
    config = config_for(bundle, keys, tmp_path, cors_origins=("https://app.example",))
    with BackgroundServer(create_app(config)) as server, httpx.Client(base_url=server.url) as c:
        server.wait_ready()
        allowed = c.options(
            "/v1/classify",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        other = c.options(
            "/v1/classify",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


def test_unauthenticated_mode_limits_per_client(bundle: Path, tmp_path: Path) -> None:
    config = ServeConfig(bundle=bundle, allow_unauthenticated=True, rate_limit=RateLimit(2, 60.0))
    with BackgroundServer(create_app(config)) as server, httpx.Client(base_url=server.url) as c:
        server.wait_ready()
        statuses = [c.post("/v1/classify", json={"texts": ["x"]}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_embeddings(tiny_bundle_factory: Callable[..., Path], keys: Keys, tmp_path: Path) -> None:
    bundle = tiny_bundle_factory("bert", "feature-extraction", "dynamic")
    engine = Engine.from_bundle(bundle)
    config = config_for(bundle, keys, tmp_path)
    with BackgroundServer(create_app(config)) as server, httpx.Client(base_url=server.url) as c:
        server.wait_ready()
        response = c.post("/v1/embed", json={"texts": TEXTS[:3]}, headers=auth(keys.infer))
        wrong = classify(c, keys.infer, ["x"])
        v2 = c.post(
            f"/v2/models/{engine.name}/infer",
            headers=auth(keys.infer),
            json={
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXTS[0]]}]
            },
        )
    body = response.json()
    expected = engine.predict(TEXTS[:3])
    assert body["dimensions"] == len(expected[0]["embedding"])
    for got, want in zip(body["embeddings"], expected, strict=True):
        assert got == pytest.approx(want["embedding"], abs=1e-3)
    assert wrong.status_code == 400 and "/v1/embed" in wrong.json()["error"]
    (output,) = v2.json()["outputs"]
    assert output["shape"] == [1, body["dimensions"]]


def test_token_classification(
    tiny_bundle_factory: Callable[..., Path], keys: Keys, tmp_path: Path
) -> None:
    bundle = tiny_bundle_factory("bert", "token-classification", "dynamic")
    engine = Engine.from_bundle(bundle)
    config = config_for(bundle, keys, tmp_path)
    with BackgroundServer(create_app(config)) as server, httpx.Client(base_url=server.url) as c:
        server.wait_ready()
        v1 = classify(c, keys.infer, ["a good movie", "no"])
        v2 = c.post(
            f"/v2/models/{engine.name}/infer",
            headers=auth(keys.infer),
            json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["no"]}]},
        )
    results = v1.json()["results"]
    assert results == engine.predict(["a good movie", "no"])
    (output,) = v2.json()["outputs"]
    assert output["name"] == "tokens"
    assert json.loads(output["data"][0]) == engine.predict(["no"])[0]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise TimeoutError("condition not reached")
