"""Outside attacks on a real server on loopback, each reproduced with raw sockets or httpx.

Every test starts its own ``BackgroundServer`` (uvicorn with the same guarded protocol as
``onnxguard serve``) on a tiny bundle built by the real pipeline.  Timing assertions are loose
enough for a loaded 2-core machine; each one was far outside them before the fix.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from onnxguard.serve.app import create_app
from onnxguard.serve.audit import verify_chain
from onnxguard.serve.auth import generate_secret, key_line
from onnxguard.serve.settings import AuditSettings, Limits, RateLimit, ServeConfig
from onnxguard.serve.testing import BackgroundServer


@pytest.fixture(scope="module")
def bundle(tiny_bundle_factory: Callable[..., Path]) -> Path:
    return tiny_bundle_factory("bert", "text-classification", "dynamic")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str, str]:
    light, heavy = generate_secret(), generate_secret()
    path = tmp_path / "keys.txt"
    path.write_text(key_line("light", light) + "\n" + key_line("heavy", heavy) + "\n")
    path.chmod(0o600)
    return path, light, heavy


def make_config(bundle: Path, keys_file: Path, tmp: Path, **changes: object) -> ServeConfig:
    base: dict[str, object] = {
        "bundle": bundle,
        "api_keys_file": keys_file,
        "audit": AuditSettings(path=tmp / "audit.log"),
        "rate_limit": RateLimit(1_000_000, 60.0),
    }
    base.update(changes)
    return ServeConfig(**base)  # type: ignore[arg-type]


@contextmanager
def serving(config: ServeConfig) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(config)) as server:
        server.wait_ready()
        yield server


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def metric(server: BackgroundServer, secret: str, name: str) -> float:
    """Sum of a sample's values over its label sets (``name`` with or without ``{labels}``)."""
    text = httpx.get(server.url + "/metrics", headers=bearer(secret), timeout=30).text
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name or sample.startswith(name + "{") or ("{" in name and sample == name):
            total += float(value)
    return total


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<open>")
        return b"".join(chunks)


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"the fd hard limit {hard} is below the {needed} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# --- 1. gzip members: the event loop stays free ------------------------------------------------
def test_gzip_member_bodies_never_block_a_concurrent_health_check(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    body = gzip.compress(b"") * 50_000  # < 1 MiB; once ~1 s of event-loop time per request
    config = make_config(bundle, keys[0], tmp_path)
    with serving(config) as server:
        stop = threading.Event()
        statuses: list[int] = []

        def attack(path: str, headers: dict[str, str]) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while not stop.is_set():
                    response = client.post(
                        path, content=body, headers={"Content-Encoding": "gzip", **headers}
                    )
                    statuses.append(response.status_code)

        attackers = [
            threading.Thread(target=attack, args=("/v2/health/live", {})),
            threading.Thread(target=attack, args=("/v1/classify", {})),
            threading.Thread(target=attack, args=("/v1/classify", bearer(keys[1]))),
        ]
        for thread in attackers:
            thread.start()
        latencies = []
        try:
            with httpx.Client(base_url=server.url, timeout=30) as probe:
                for _ in range(40):
                    started = time.perf_counter()
                    assert probe.get("/v2/health/live").status_code == 200
                    latencies.append(time.perf_counter() - started)
                    time.sleep(0.02)
        finally:
            stop.set()
            for thread in attackers:
                thread.join(30)
    # live answers 405 to a POST without reading its body; the rest is refused (no key: 401,
    # then 429 per address; with a key: 400 at the member cap).
    assert statuses and set(statuses) <= {400, 401, 405, 429}
    assert 400 in statuses and 401 in statuses
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 0.5, latencies


# --- 2. idle connections: a legitimate client is still served --------------------------------
def test_1100_idle_connections_leave_room_for_a_legitimate_client(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    raise_fd_limit(4096)
    ops = generate_secret()
    keys[0].write_text(keys[0].read_text() + key_line("ops", ops, ["infer", "metrics"]) + "\n")
    config = make_config(
        bundle, keys[0], tmp_path, limits=Limits(max_connections=1024, header_timeout_s=300)
    )
    idle: list[socket.socket] = []
    with serving(config) as server:
        try:
            for index in range(1_100):  # 10 per address, 110 addresses: under the per-address cap
                sock = socket.socket()
                sock.bind((f"127.0.0.{2 + index // 10}", 0))
                sock.connect(("127.0.0.1", server.port))
                idle.append(sock)
            closed = "onnxguard_connections_closed_total"
            _wait_for(lambda: metric(server, ops, closed) >= 70, 60)
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for _ in range(5):
                    response = client.post(
                        "/v1/classify", json={"texts": ["still served"]}, headers=bearer(ops)
                    )
                    assert response.status_code == 200
            # The oldest idle connections made room; the count shows in /metrics.
            assert metric(server, ops, 'onnxguard_connections_closed_total{reason="evicted"}') >= 70
            assert metric(server, ops, "onnxguard_connections_open") <= 1024
        finally:
            for sock in idle:
                sock.close()


def test_per_address_cap_and_header_deadline(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    ops = generate_secret()
    keys[0].write_text(keys[0].read_text() + key_line("ops", ops, ["infer", "metrics"]) + "\n")
    limits = Limits(max_connections_per_client=20, header_timeout_s=1.5)
    config = make_config(bundle, keys[0], tmp_path, limits=limits)
    with serving(config) as server:
        held = []
        for _ in range(30):
            sock = socket.socket()
            sock.bind(("127.0.0.50", 0))
            sock.connect(("127.0.0.1", server.port))
            sock.settimeout(20)
            held.append(sock)
        # Ten were refused at once (closed: recv sees EOF); twenty were closed by the deadline.
        assert all(sock.recv(1) == b"" for sock in held)
        for sock in held:
            sock.close()
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
        started = time.monotonic()
        assert slow.recv(1) == b""
        assert time.monotonic() - started < 15
        slow.close()
        by_reason = {
            reason: metric(server, ops, f'onnxguard_connections_closed_total{{reason="{reason}"}}')
            for reason in ("per_client_limit", "header_timeout")
        }
        assert by_reason["per_client_limit"] >= 10 and by_reason["header_timeout"] >= 21
        # A client that sends its request in time is served on the same port.
        ok = httpx.get(server.url + "/v2/health/live", timeout=30)
        assert ok.status_code == 200


# --- 3. bad-key flood: bounded audit growth, 429 per address ---------------------------------
def test_a_bad_key_flood_is_limited_and_barely_grows_the_audit_log(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    config = make_config(bundle, keys[0], tmp_path)
    audit = tmp_path / "audit.log"
    with serving(config) as server:
        before = audit.stat().st_size
        statuses: list[int] = []
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for number in range(2_000):
                response = client.post(
                    "/v1/classify",
                    json={"texts": ["x"]},
                    headers=bearer(f"ogk_not-a-key-{number:06d}-padding"),
                )
                statuses.append(response.status_code)
            assert (
                client.post(
                    "/v1/classify",
                    json={"texts": ["a valid key still works"]},
                    headers=bearer(keys[1]),
                ).status_code
                == 200
            )
        grown = audit.stat().st_size - before
    # 30 failures a minute per address (plus the refill while the flood ran), then 429s.
    assert 30 <= statuses.count(401) < 100 and statuses.count(429) == 2_000 - statuses.count(401)
    assert grown < 64 * 1024, grown
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    digests = [r for r in records if r["type"] == "auth_failures"]
    in_full = [r for r in records if r["type"] == "request" and r["status"] in (401, 429)]
    # Nothing is dropped silently: every refused request is a record or in a count.
    assert len(in_full) + sum(d["count"] for d in digests) == 2_000
    assert {d["client"] for d in digests} == {"127.0.0.1"}
    assert sum(d["statuses"].get("429", 0) for d in digests) == statuses.count(429)
    assert verify_chain(audit).ok


# --- 4 + 5. audit write failure: not ready, refused, no phantom records ----------------------
def test_an_audit_write_failure_turns_the_server_not_ready_and_leaves_no_phantoms(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    config = make_config(bundle, keys[0], tmp_path)
    audit_path = tmp_path / "audit.log"
    app = create_app(config)
    audit = app.state.onnxguard.audit
    with BackgroundServer(app) as server:
        server.wait_ready()
        client = httpx.Client(base_url=server.url, timeout=30)
        served = client.post("/v1/classify", json={"texts": ["kept"]}, headers=bearer(keys[1]))
        assert served.status_code == 200

        def disk_full(fd: int, data: memoryview) -> int:
            os.write(fd, bytes(data[:7]))  # part of a record, then ENOSPC
            raise OSError(28, "No space left on device")

        audit._write = disk_full
        refused = [
            client.post("/v1/classify", json={"texts": ["refused"]}, headers=bearer(keys[1]))
            for _ in range(3)
        ]
        assert [r.status_code for r in refused] == [503, 503, 503]
        assert client.get("/v2/health/ready").status_code == 503  # a balancer stops routing here
        assert client.get("/v2/health/live").status_code == 200
        audit._write = os.write  # space is back: still nothing is written until a restart
        again = client.post("/v1/classify", json={"texts": ["later"]}, headers=bearer(keys[1]))
        assert again.status_code == 503
        client.close()
    text = audit_path.read_text()
    assert served.headers["x-request-id"] in text
    for response in [*refused, again]:
        assert response.headers["x-request-id"] not in text
    assert '"type":"stop"' not in text  # the log failed: no clean stop is claimed
    assert verify_chain(audit_path).ok


# --- 6. keys file emptied: every key revoked within the reload interval ----------------------
def test_emptying_the_keys_file_revokes_every_key(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    config = make_config(bundle, keys[0], tmp_path)
    with serving(config) as server, httpx.Client(base_url=server.url, timeout=30) as client:

        def status() -> int:
            body = {"texts": ["x"]}
            return client.post("/v1/classify", json=body, headers=bearer(keys[1])).status_code

        assert status() == 200
        keys[0].write_text("# all keys revoked\n")
        emptied = time.monotonic()
        _wait_for(lambda: status() == 401, 10)
        assert time.monotonic() - emptied < 2.0 + 5.0  # reload interval + slack for load
        keys[0].unlink()
        time.sleep(2.5)
        assert status() == 401


# --- 7. a heavy key cannot starve a light key ------------------------------------------------
def test_a_heavy_key_does_not_starve_a_light_key(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    config = make_config(
        bundle,
        keys[0],
        tmp_path,
        token_limit=RateLimit(20_000, 60.0),
        limits=Limits(max_texts=64, max_tokens=64 * 128),
    )
    heavy_texts = [" ".join(["word"] * 120)] * 64
    with serving(config) as server, httpx.Client(base_url=server.url, timeout=60) as client:

        def light_p50(rounds: int = 30) -> float:
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                response = client.post(
                    "/v1/classify", json={"texts": ["a short text"]}, headers=bearer(keys[1])
                )
                assert response.status_code == 200
                times.append(time.perf_counter() - started)
            return statistics.median(times)

        unloaded = light_p50()
        stop = threading.Event()
        heavy_statuses: list[int] = []

        def heavy() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as own:
                while not stop.is_set():
                    response = own.post(
                        "/v1/classify", json={"texts": heavy_texts}, headers=bearer(keys[2])
                    )
                    heavy_statuses.append(response.status_code)
                    if response.status_code == 429:
                        time.sleep(0.05)

        threads = [threading.Thread(target=heavy) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            loaded = light_p50()
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert 200 in heavy_statuses and 429 in heavy_statuses  # the token budget bit
    assert loaded <= max(2 * unloaded, unloaded + 0.01), (unloaded, loaded)


# --- 8 + 9. malformed input and framing: 4xx, never 5xx --------------------------------------
def test_malformed_v2_requests_answer_4xx(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    config = make_config(bundle, keys[0], tmp_path, model_name="tiny")
    good = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["fine"]}]}
    cases: list[tuple[bytes, dict[str, bytes]]] = [
        (b"[" * 50_000 + b"]" * 50_000, {}),
        (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, {}),
        (json.dumps(good).encode(), {"Inference-Header-Content-Length": b"\xb2"}),
        (json.dumps(good).encode(), {"Inference-Header-Content-Length": b"-1"}),
        (json.dumps({**good, "id": "\ud800"}).encode(), {}),
        (json.dumps({**good, "parameters": {"\ud800": 1}}).encode(), {}),
        (json.dumps({**good, "\ud800x": 1}).encode(), {}),
        (json.dumps({**good, "outputs": [{"name": "\ud800"}]}).encode(), {}),
    ]
    with serving(config) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for body, extra in cases:
            headers: dict[str, str | bytes] = {**bearer(keys[1])}
            headers.update(extra)
            response = client.post("/v2/models/tiny/infer", content=body, headers=headers)
            assert 400 <= response.status_code < 500, (body[:40], extra, response.text)
            assert len(response.text) < 1_000
        ok = client.post("/v2/models/tiny/infer", json=good, headers=bearer(keys[1]))
        assert ok.status_code == 200


def test_content_length_with_chunked_is_refused_and_the_connection_closed(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    config = make_config(bundle, keys[0], tmp_path)
    with serving(config) as server:
        body = b'{"texts": ["x"]}'
        request = (
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {keys[1]}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        answer = raw_request(server.port, request)
        assert answer.startswith(b"HTTP/1.1 400")
        assert b"connection: close" in answer.lower()
        assert not answer.endswith(b"<open>")  # the server closed the connection
        digits = (
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {keys[1]}\r\n".encode()
            + "Content-Length: \u00b2\r\n\r\n".encode()
        )
        assert raw_request(server.port, digits).startswith(b"HTTP/1.1 400")


def test_a_client_that_disconnects_mid_body_gets_its_own_audit_outcome(
    bundle: Path, keys: tuple[Path, str, str], tmp_path: Path
) -> None:
    config = make_config(bundle, keys[0], tmp_path)
    with serving(config) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {keys[1]}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                + b'{"texts": ["cut'
            )
            time.sleep(0.3)
        audit = tmp_path / "audit.log"
        _wait_for(lambda: "client_disconnected" in audit.read_text(), 10)
    gone = [
        json.loads(line) for line in audit.read_text().splitlines() if "client_disconnected" in line
    ]
    assert len(gone) == 1 and gone[0]["status"] == 499 and gone[0]["key_id"] == "light"


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")
