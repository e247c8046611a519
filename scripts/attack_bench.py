"""Attack benchmark for `onnxguard serve` (not a test): a legitimate client's throughput and p99
with and without each outside attack running.

Starts `onnxguard serve BUNDLE` on 127.0.0.1 (a fresh key per legitimate client, an fsynced
audit log, default limits unless --serve-arg says otherwise), then for each attack runs a
legitimate round (SST-2 sentences, one per request, a few keep-alive clients), starts the attack
in its own process, runs a second legitimate round under attack, and stops the attack.  It
prints, per attack, the legitimate requests/s and p99 without and with the attack, their ratio
(target: >= 80%), what the attacker got back, how much the audit log grew, and the server's CPU
seconds in each round.

Attacks (each from its own process and its own loopback addresses, as an outside attacker would
be; the legitimate client is 127.0.0.1):
  gzip       bodies of 50,000 empty gzip members to /v2/health/live and /v1/classify, no key
  idle       1,100 idle TCP connections from 110 loopback addresses, reopened 1 s after the
             server closes one
  slowloris  200 connections sending a request head one byte per second
  badkey     a flood of requests with invalid keys
  heavy      a second valid key sending 64 texts x ~128 tokens per request, 4 at a time

    python scripts/attack_bench.py /tmp/serve-bench/sst2 --data ../shared/data/sst2/dev.tsv

The attackers share the machine's cores with the server and the legitimate client: on a small
machine part of any drop is the attacker's own CPU use, not the server's weakness.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
ATTACKS = ("gzip", "idle", "slowloris", "badkey", "heavy")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "dev.tsv"


@dataclass
class Round:
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


# --- tiny HTTP/1.1 client (keeps the load generator's CPU low) ---------------------------------
async def request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> int:
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(head.encode("latin-1") + b"\r\n" + body)
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    length = 0
    close = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    await reader.readexactly(length)
    if close:
        raise ConnectionResetError(int(status_line.split()[1]))
    return int(status_line.split()[1])


async def legit_round(
    port: int, keys: list[str], texts: list[str], clients: int, seconds: float
) -> Round:
    bodies = [json.dumps({"texts": [t]}).encode() for t in texts]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal errors
        index = offset
        key = keys[offset % len(keys)]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status = await request(
                        reader, writer, "/v1/classify", bodies[index % len(bodies)], headers
                    )
                except (ConnectionError, asyncio.IncompleteReadError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    continue
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1
                index += clients
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return Round(
        texts_per_s=len(latencies) / elapsed,
        p50_ms=1000 * statistics.median(ordered),
        p99_ms=1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        requests=len(latencies),
        errors=errors,
    )


# --- attackers (run in a child process: `--attacker NAME`) -------------------------------------
async def _loop_requests(
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    pause: float,
    got: Counter[str],
    source: str,
) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            got["connect_error"] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            while True:
                got[str(await request(reader, writer, path, body, headers))] += 1
                if pause:
                    await asyncio.sleep(pause)
        except ConnectionResetError as closed:
            got[f"{closed.args[0] if closed.args else 'reset'}+close"] += 1
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            got["closed"] += 1
        finally:
            writer.close()


async def _hold_idle(port: int, source: str, got: Counter[str]) -> None:
    first = True
    while True:
        if not first:
            await asyncio.sleep(1.0)  # reconnect a second after being closed
        first = False
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            got["connect_error"] += 1
            await asyncio.sleep(0.5)
            continue
        got["opened"] += 1
        try:
            await reader.read(1)  # returns when the server closes it
            got["closed_by_server"] += 1
        except OSError:
            got["reset"] += 1
        finally:
            writer.close()


async def _slowloris(port: int, got: Counter[str], source: str) -> None:
    head = f"GET /v2/health/live HTTP/1.1\r\nHost: {HOST}\r\nX-Padding: {'a' * 200}\r\n\r\n"
    while True:
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            got["connect_error"] += 1
            await asyncio.sleep(0.5)
            continue
        got["opened"] += 1
        try:
            for char in head:
                writer.write(char.encode())
                await writer.drain()
                await asyncio.sleep(1.0)
                if reader.at_eof():
                    break
            got["closed_by_server"] += 1
        except OSError:
            got["closed_by_server"] += 1
        finally:
            writer.close()


async def attack(name: str, port: int, key: str, seconds: float) -> Counter[str]:
    got: Counter[str] = Counter()
    tasks: list[asyncio.Future[None]] = []
    if name == "gzip":
        body = gzip.compress(b"") * 50_000
        coded = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        tasks += [
            asyncio.ensure_future(_loop_requests(port, path, body, coded, 0.2, got, "127.0.1.1"))
            for path in ("/v2/health/live", "/v1/classify")
        ]
    elif name == "idle":
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
        tasks += [
            asyncio.ensure_future(_hold_idle(port, f"127.0.0.{2 + i // 10}", got))
            for i in range(1_100)
        ]
    elif name == "slowloris":
        tasks += [
            asyncio.ensure_future(_slowloris(port, got, f"127.0.2.{1 + i // 20}"))
            for i in range(200)
        ]
    elif name == "badkey":
        body = json.dumps({"texts": ["x"]}).encode()
        for _ in range(2):
            bad = {"Authorization": f"Bearer ogk_{secrets.token_urlsafe(32)}"}
            bad["Content-Type"] = "application/json"
            tasks.append(
                asyncio.ensure_future(
                    _loop_requests(port, "/v1/classify", body, bad, 0.005, got, "127.0.3.1")
                )
            )
    elif name == "heavy":
        texts = [" ".join(["word"] * 126)] * 64
        body = json.dumps({"texts": texts}).encode()
        heavy = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        tasks += [
            asyncio.ensure_future(
                _loop_requests(port, "/v1/classify", body, heavy, 0.05, got, "127.0.4.1")
            )
            for _ in range(4)
        ]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got


# --- driver -----------------------------------------------------------------------------------
def load_texts(path: Path) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        if text.strip() and label.strip().lstrip("-").isdigit():
            texts.append(text.strip())
    return texts


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, server: subprocess.Popen[bytes]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            url = f"http://{HOST}:{port}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready within 180 s")


def make_keys(directory: Path, clients: int) -> tuple[Path, list[str], str]:
    """One key per legitimate client (legitimate traffic is many clients) and the heavy key."""
    from onnxguard.serve.auth import generate_secret, key_line

    legit = [generate_secret() for _ in range(clients)]
    heavy = generate_secret()
    lines = [key_line(f"legit-{i}", secret) for i, secret in enumerate(legit)]
    lines.append(key_line("heavy", heavy))
    path = directory / "keys.txt"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path, legit, heavy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--seconds", type=float, default=15.0, help="Per legitimate round.")
    parser.add_argument("--clients", type=int, default=4, help="Legitimate keep-alive clients.")
    parser.add_argument(
        "--rounds", type=int, default=1, help="Interleaved without/with pairs per attack (median)."
    )
    parser.add_argument("--serve-arg", action="append", default=[], help="Extra serve option.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--attacker", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--key", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attacker:
        got = asyncio.run(attack(args.attacker, args.port, args.key, args.seconds))
        print(json.dumps(dict(got)))
        return 0
    if args.bundle is None:
        parser.error("the bundle directory is required")
    return run(args)


def run(args: argparse.Namespace) -> int:
    texts = load_texts(args.data)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise SystemExit(f"unknown attack(s): {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="onnxguard-attack-"))
    keys, legit, heavy = make_keys(work, args.clients)
    audit = work / "audit.log"
    port = free_port()
    command = [
        sys.executable, "-m", "onnxguard", "serve", str(args.bundle),
        "--api-keys-file", str(keys), "--audit-log", str(audit), "--port", str(port),
        "--rate-limit", "6000/minute", "--no-access-log", *args.serve_arg,
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        wait_ready(port, server)
        asyncio.run(legit_round(port, legit, texts, args.clients, 3.0))  # warm-up
        for name in attacks:
            pairs = [
                phase(args, name, port, legit, heavy, texts, server, audit)
                for _ in range(args.rounds)
            ]
            result = median_result(name, pairs)
            results.append(result)
            report(result)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)  # keys and audit log of this run
    print(f"machine load (1/5/15 min): {Path('/proc/loadavg').read_text().split()[:3]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return (
        0
        if all(r["attacked"]["texts_per_s"] >= 0.8 * r["base"]["texts_per_s"] for r in results)
        else 1
    )


def phase(
    args: argparse.Namespace,
    name: str,
    port: int,
    legit: list[str],
    heavy: str,
    texts: list[str],
    server: subprocess.Popen[bytes],
    audit: Path,
) -> dict[str, object]:
    """One legitimate round without the attack, then one with it."""
    cpu = server_cpu_s(server.pid)
    base = asyncio.run(legit_round(port, legit, texts, args.clients, args.seconds))
    base_cpu = server_cpu_s(server.pid) - cpu
    size = audit.stat().st_size
    attacker = subprocess.Popen(
        [sys.executable, __file__, "--attacker", name, "--port", str(port),
         "--key", heavy, "--seconds", str(args.seconds + 4)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    time.sleep(2.0)  # let the attack build up
    cpu = server_cpu_s(server.pid)
    hit = asyncio.run(legit_round(port, legit, texts, args.clients, args.seconds))
    hit_cpu = server_cpu_s(server.pid) - cpu
    out, _ = attacker.communicate(timeout=args.seconds + 60)
    grown = audit.stat().st_size - size
    got = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    time.sleep(2.0)
    return {
        "attack": name,
        "base": base.__dict__,
        "attacked": hit.__dict__,
        "attacker_got": got,
        "audit_growth_bytes": grown,
        "server_cpu_s": [round(base_cpu, 1), round(hit_cpu, 1)],
    }


def median_result(name: str, pairs: list[dict[str, object]]) -> dict[str, object]:
    """The pair whose with/without ratio is the median (all pairs are kept under "rounds")."""

    def ratio(pair: dict[str, object]) -> float:
        base, hit = pair["base"], pair["attacked"]
        assert isinstance(base, dict) and isinstance(hit, dict)
        return float(hit["texts_per_s"]) / max(1e-9, float(base["texts_per_s"]))

    ordered = sorted(pairs, key=ratio)
    return {**ordered[len(ordered) // 2], "rounds": [round(ratio(p), 3) for p in pairs]}


def report(result: dict[str, object]) -> None:
    base, hit = result["base"], result["attacked"]
    assert isinstance(base, dict) and isinstance(hit, dict)
    ratio = hit["texts_per_s"] / base["texts_per_s"] if base["texts_per_s"] else 0.0
    print(
        f"{result['attack']:<10} without: {base['texts_per_s']:7.1f} req/s "
        f"p99 {base['p99_ms']:7.1f} ms"
        f" | with: {hit['texts_per_s']:7.1f} req/s p99 {hit['p99_ms']:7.1f} ms"
        f" (errors {hit['errors']}) | {ratio:6.1%} {'ok' if ratio >= 0.8 else 'BELOW 80%'}"
        f" | attacker got {result['attacker_got']} | audit +{result['audit_growth_bytes']} B"
        f" | server CPU s without/with {result['server_cpu_s']}"
        f" | ratio per round {result.get('rounds')}",
        flush=True,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
