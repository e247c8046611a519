"""`onnxguard serve` as a process: graceful SIGTERM, exit codes, TLS, and the key/audit CLIs."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

CLI = [sys.executable, "-c", "from onnxguard.cli import main; main()"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def bundle(tiny_bundle_factory: Callable[..., Path]) -> Path:
    return tiny_bundle_factory("bert", "text-classification", "dynamic")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    made = cli(
        "apikey",
        "new",
        "--id",
        "tester",
        "--scopes",
        "infer,metrics",
        "--keys-file",
        str(keys),
        "--json",
    )
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)["secret"], keys


class ServerProcess:
    def __init__(
        self,
        args: list[str],
        port: int,
        scheme: str = "http",
        verify: ssl.SSLContext | bool = False,
    ) -> None:
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.verify = verify
        self.process = subprocess.Popen(
            [*CLI, "serve", *args, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.communicate()[1]}")
            try:
                if (
                    httpx.get(
                        self.url + "/v2/health/ready", verify=self.verify, timeout=2
                    ).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server not ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(
        *args: str, scheme: str = "http", verify: ssl.SSLContext | bool = False
    ) -> ServerProcess:
        server = ServerProcess(list(args), free_port(), scheme, verify)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_sigterm_finishes_every_accepted_request(
    bundle: Path, key: tuple[str, Path], tmp_path: Path, serve: Callable[..., ServerProcess]
) -> None:
    secret, keys = key
    audit = tmp_path / "audit.log"
    server = serve(
        str(bundle),
        "--api-keys-file",
        str(keys),
        "--audit-log",
        str(audit),
        "--rate-limit",
        "off",
        # The batch waits for batch-mates far longer than the test needs: the requests stay in
        # the queue until SIGTERM, which runs them at once (the drain flushes the batcher).
        "--max-wait-ms",
        "600000",
        "--max-batch",
        "64",
    )
    server.wait_ready()
    headers = {"Authorization": f"Bearer {secret}"}
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        response = httpx.post(
            server.url + "/v1/classify", json={"texts": [f"text {i}"]}, headers=headers, timeout=60
        )
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    # Wait on what the server reports, not on time: all 20 accepted and waiting in the queue.
    deadline = time.monotonic() + 180
    depth = 0.0
    while time.monotonic() < deadline and depth < 20:
        metrics = httpx.get(server.url + "/metrics", headers=headers, timeout=30).text
        depth = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("onnxguard_queue_depth ")
        )
        time.sleep(0.05)
    assert depth >= 20, f"requests did not reach the queue (depth {depth})"
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    rc = server.process.wait(60)
    assert sorted(r.status_code for r in responses) == [200] * 20
    assert time.monotonic() - started < 60  # the drain did not wait out --max-wait-ms
    # Keep-alive clients are told to reconnect elsewhere instead of meeting a reset.
    assert all(r.headers.get("connection") == "close" for r in responses)
    assert rc == 0, server.process.communicate()[1]
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/v2/health/live", timeout=2)
    report = cli("audit", "verify", str(audit), "--json")
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["ok"] and summary["closed"]
    ids = {json.loads(line).get("request_id") for line in audit.read_text().splitlines()}
    assert {r.headers["x-request-id"] for r in responses} <= ids


def test_audit_verify_cli_exit_codes(
    bundle: Path, key: tuple[str, Path], tmp_path: Path, serve: Callable[..., ServerProcess]
) -> None:
    secret, keys = key
    audit = tmp_path / "audit.log"
    server = serve(str(bundle), "--api-keys-file", str(keys), "--audit-log", str(audit))
    server.wait_ready()
    for text in ("one", "two", "three"):
        httpx.post(
            server.url + "/v1/classify",
            json={"texts": [text]},
            headers={"Authorization": f"Bearer {secret}"},
        )
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    good = cli("audit", "verify", str(audit))
    assert good.returncode == 0 and good.stdout.startswith("head ")
    lines = audit.read_text().splitlines()

    edited = tmp_path / "edited.log"
    changed = lines.copy()
    changed[3] = changed[3].replace('"status":200', '"status":500')
    edited.write_text("\n".join(changed) + "\n")
    result = cli("audit", "verify", str(edited))
    assert result.returncode == 7 and "edited" in result.stderr

    deleted = tmp_path / "deleted.log"
    deleted.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    result = cli("audit", "verify", str(deleted))
    assert result.returncode == 7 and "chain broken" in result.stderr


def test_a_tampered_bundle_stops_the_server_with_exit_7(
    bundle: Path, key: tuple[str, Path], tmp_path: Path, serve: Callable[..., ServerProcess]
) -> None:
    tampered = tmp_path / "bundle"
    shutil.copytree(bundle, tampered)
    (tampered / "tokenizer.json").write_text((tampered / "tokenizer.json").read_text() + " ")
    server = serve(str(tampered), "--api-keys-file", str(key[1]))
    assert server.process.wait(60) == 7
    assert "tokenizer.json" in server.process.communicate()[1]


def test_start_refusals(bundle: Path, key: tuple[str, Path], tmp_path: Path) -> None:
    no_keys = cli("serve", str(bundle))
    assert no_keys.returncode == 2 and "apikey new" in no_keys.stderr
    open_to_all = cli("serve", str(bundle), "--allow-unauthenticated", "--host", "0.0.0.0")
    assert open_to_all.returncode == 2
    missing = cli("serve", str(tmp_path / "nothing"), "--api-keys-file", str(key[1]))
    assert missing.returncode == 2  # a missing path: the same usage error as every command
    loose = tmp_path / "loose.txt"
    shutil.copy(key[1], loose)
    loose.chmod(0o666)
    assert cli("serve", str(bundle), "--api-keys-file", str(loose)).returncode == 9
    audit = tmp_path / "never.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        in_use = cli(
            "serve",
            str(bundle),
            "--api-keys-file",
            str(key[1]),
            "--port",
            port,
            "--audit-log",
            str(audit),
        )
    assert in_use.returncode == 9 and "could not start" in in_use.stderr
    assert not audit.exists()  # a server that never bound writes no start/stop records


def test_apikey_new_prints_secret_and_line(tmp_path: Path) -> None:
    plain = cli("apikey", "new", "--id", "alice")
    secret, line = plain.stdout.split()
    assert line == f"alice:{hashlib.sha256(secret.encode()).hexdigest()}"
    assert "shown once" in plain.stderr
    scoped = cli("apikey", "new", "--id", "ops", "--scopes", "metrics,infer")
    assert scoped.stdout.split()[1].endswith(":infer,metrics")
    keys = tmp_path / "keys.txt"
    added = cli("apikey", "new", "--id", "bob", "--keys-file", str(keys))
    assert added.stdout.strip().startswith("ogk_") and len(added.stdout.split()) == 1
    assert (keys.stat().st_mode & 0o777) == 0o600 and keys.read_text().startswith("bob:")
    assert cli("apikey", "new", "--id", "bob", "--keys-file", str(keys)).returncode == 2
    assert cli("apikey", "new", "--id", "bad id").returncode == 2
    assert cli("apikey", "new", "--id", "x", "--scopes", "superuser").returncode == 2
    limited = cli("apikey", "new", "--id", "team", "--scopes", "admin", "--models", "a,b")
    assert limited.stdout.split()[1].endswith(":admin:a,b")
    assert cli("apikey", "new", "--id", "x", "--models", "bad name").returncode == 2


def test_tls(
    bundle: Path, key: tuple[str, Path], tmp_path: Path, serve: Callable[..., ServerProcess]
) -> None:
    cert, private = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    server = serve(
        str(bundle),
        "--api-keys-file",
        str(key[1]),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(private),
        scheme="https",
        verify=trust,
    )
    server.wait_ready()
    response = httpx.post(
        server.url + "/v1/classify",
        json={"texts": ["secure"]},
        headers={"Authorization": f"Bearer {key[0]}"},
        verify=trust,
    )
    assert response.status_code == 200
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not spoken on the TLS port
        httpx.get(f"http://127.0.0.1:{server.port}/v2/health/live", timeout=5)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_startup_failures_are_one_error_line_with_a_hint(
    bundle: Path, key: tuple[str, Path], tmp_path: Path
) -> None:
    keys = str(key[1])
    torn = tmp_path / "torn.log"
    torn.write_text('{"seq": 0, "half a rec')
    result = cli(
        "serve",
        str(bundle),
        "--api-keys-file",
        keys,
        "--audit-log",
        str(torn),
        "--port",
        str(free_port()),
    )
    assert result.returncode == 9 and "partial record" in _one_error(result)
    assert "hint:" in result.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli(
        "serve",
        str(bundle),
        "--api-keys-file",
        keys,
        "--audit-log",
        str(blocker / "audit.log"),
        "--port",
        str(free_port()),
    )
    assert result.returncode == 9 and "audit log" in _one_error(result)
    loud = cli("serve", str(bundle), "--api-keys-file", keys, "--log-level", "loud")
    assert loud.returncode == 2 and "Traceback" not in loud.stderr
    assert all(level in loud.stderr for level in ("debug", "info", "warning", "error"))
    zero = cli("serve", str(bundle), "--api-keys-file", keys, "--max-texts", "0")
    assert zero.returncode == 2 and "max-texts" in _one_error(zero) and "hint:" in zero.stderr
    folder = cli("audit", "verify", str(tmp_path))
    assert folder.returncode == 2 and "directory" in _one_error(folder)


def _exit_table() -> dict[int, str]:
    """The exit-code table of docs/SERVING.md (between its markers)."""
    doc = (Path(__file__).parents[2] / "docs" / "SERVING.md").read_text()
    table = doc.split("<!-- exit-codes -->")[1]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].isdigit():
            rows[int(cells[0])] = cells[1]
    return rows


def test_exit_codes_match_the_table_in_serving_md(
    bundle: Path, key: tuple[str, Path], tmp_path: Path
) -> None:
    table = _exit_table()
    assert set(table) == {0, 2, 6, 7, 8, 9}
    keys = str(key[1])
    unscanned = tmp_path / "unscanned"
    shutil.copytree(bundle, unscanned)
    manifest = json.loads((unscanned / "onnxguard.json").read_text())
    manifest["stages"]["scan"]["bundle"]["unscanned"] = 1  # what the build's scan left out
    (unscanned / "onnxguard.json").write_text(json.dumps(manifest))
    repository = tmp_path / "repo"
    (repository / "m" / "1").mkdir(parents=True)  # a version directory that is not a bundle
    empty_keys = tmp_path / "empty.txt"
    empty_keys.write_text("# no keys\n")
    empty_keys.chmod(0o600)
    not_a_bundle = tmp_path / "not-a-bundle"
    not_a_bundle.mkdir()
    cases = {
        "no keys file": (2, cli("serve", str(bundle))),
        "bundle directory missing": (
            2,
            cli("serve", str(tmp_path / "none"), "--api-keys-file", keys),
        ),
        "not a bundle": (
            8,
            cli("serve", str(not_a_bundle), "--api-keys-file", keys, "--port", str(free_port())),
        ),
        "keys file without keys": (
            9,
            cli("serve", str(bundle), "--api-keys-file", str(empty_keys)),
        ),
        "keys file missing": (9, cli("serve", str(bundle), "--api-keys-file", str(tmp_path / "x"))),
        "scan summary not clean": (
            6,
            cli("serve", str(unscanned), "--api-keys-file", keys, "--port", str(free_port())),
        ),
        "repository version refused": (
            9,
            cli("serve", str(repository), "--api-keys-file", keys, "--port", str(free_port())),
        ),
    }
    for name, (code, result) in cases.items():
        assert result.returncode == code, (name, result.stderr)
        assert code in table, name
    assert "nor a model repository" in _one_error(cases["not a bundle"][1])
