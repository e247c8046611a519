"""Load benchmark for `onnxguard serve` (not a test): the server against the raw Engine.

Starts `onnxguard serve BUNDLE` on 127.0.0.1 (a fresh API key, an fsynced audit log, no rate
limit), drives it with concurrent keep-alive HTTP/1.1 clients (a minimal asyncio client, so the
load generator takes as little of the shared CPU as it can), and prints throughput and latency
next to the raw Engine's throughput on the same texts (``Engine.predict``: length-sorted batches,
dynamic padding, no HTTP).  Rounds are interleaved (engine, server, engine, server, ...) because
a shared machine is noisy; the best round of each is compared.

    python scripts/bench_serve.py /tmp/serve-bench/sst2 --data ../shared/data/sst2/dev.tsv

Loopback only; the number of requests and the time are bounded (--max-requests, --time-limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "dev.tsv"


def load_texts(path: Path) -> list[str]:
    """One text per line, or label<TAB>text (a header line is skipped)."""
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        if "\t" in line:
            label, text = line.split("\t", 1)
            if number == 0 and not label.strip().lstrip("-").isdigit():
                continue
            texts.append(text.strip())
        else:
            texts.append(line.strip())
    return texts


@dataclass
class ServerRound:
    texts_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    texts: int
    seconds: float
    errors: int
    labels: list[str]
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def engine_round(engine, texts: list[str], batch_size: int) -> tuple[float, float, list[str]]:
    """(texts/s, CPU seconds per text, labels) of one Engine.predict over all texts."""
    cpu = time.process_time()
    started = time.perf_counter()
    results = engine.predict(texts, batch_size=batch_size)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return len(texts) / seconds, cpu / len(texts), [r.get("label", "") for r in results]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes]:
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    payload = await reader.readexactly(length)
    return status, payload


async def server_round(
    port: int, key: str, chunks: list[list[str]], concurrency: int, time_limit: float
) -> ServerRound:
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        "Content-Length: "
    ).encode()
    bodies = [json.dumps({"texts": chunk}).encode() for chunk in chunks]
    latencies: list[float] = []
    labels: list[list[str]] = [[] for _ in chunks]
    errors = 0
    next_index = 0
    deadline = time.perf_counter() + time_limit

    async def client() -> None:
        nonlocal next_index, errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while next_index < len(bodies) and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                started = time.perf_counter()
                status, payload = await _request(reader, writer, head, bodies[index])
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1
                    continue
                labels[index] = [r["label"] for r in json.loads(payload)["results"]]
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    done = len(latencies)
    texts = sum(len(chunks[i]) for i in range(done))
    ordered = sorted(latencies)
    return ServerRound(
        texts_per_s=texts / seconds,
        requests_per_s=done / seconds,
        p50_ms=1000 * statistics.median(ordered),
        p99_ms=1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        requests=done,
        texts=texts,
        seconds=seconds,
        errors=errors,
        labels=[label for chunk in labels for label in chunk],
    )


def scrape(port: int, key: str) -> dict[str, float]:
    import urllib.request

    request = urllib.request.Request(
        f"http://{HOST}:{port}/metrics", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(onnxguard_[a-z_]+(?:_sum|_count))\s+([0-9.e+-]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--max-requests",
        type=int,
        default=2000,
        help="per server round (the texts are cycled to reach it)",
    )
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per round")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--min-fill", type=float, default=0.5)
    parser.add_argument("--call-overhead-tokens", type=int, default=32)
    parser.add_argument("--no-audit", action="store_true", help="serve without an audit log")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    from onnxguard.runtime import Engine, available_cores

    texts = load_texts(args.data)
    per = max(1, args.texts_per_request)
    wanted = max(1, min(args.max_requests * per, 200_000))
    cycled = [texts[i % len(texts)] for i in range(max(wanted, len(texts)))]
    chunks = [cycled[i : i + per] for i in range(0, len(cycled), per)][: args.max_requests]

    from onnxguard.serve.service import _NO_SPINNING, _session_config

    # The raw Engine twice: as `onnxguard predict` runs it (ONNX Runtime's default thread
    # spinning) and with the server's session settings (no spinning); the better one is the
    # reference.
    engines = {"default": Engine.from_bundle(args.bundle, intra_op_threads=args.threads)}
    with _session_config(_NO_SPINNING):
        engines["no-spin"] = Engine.from_bundle(args.bundle, intra_op_threads=args.threads)
    for candidate in engines.values():
        candidate.predict(texts[:64], batch_size=args.max_batch)  # warm-up
    engine = engines["default"]

    workdir = Path(tempfile.mkdtemp(prefix="onnxguard-bench-"))
    keys = workdir / "keys.txt"
    new_key = subprocess.run(
        [
            sys.executable,
            "-c",
            "from onnxguard.cli import main; main()",
            "apikey",
            "new",
            "--id",
            "bench",
            "--scopes",
            "infer,metrics",
            "--keys-file",
            str(keys),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    key = json.loads(new_key.stdout)["secret"]
    port = free_port()
    command = [
        sys.executable,
        "-c",
        "from onnxguard.cli import main; main()",
        "serve",
        str(args.bundle),
        "--host",
        HOST,
        "--port",
        str(port),
        "--api-keys-file",
        str(keys),
        "--rate-limit",
        "off",
        "--token-limit",
        "off",
        "--no-access-log",
        "--log-level",
        "warning",
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--max-batch-tokens",
        str(args.max_batch_tokens),
        "--min-fill",
        str(args.min_fill),
        "--call-overhead-tokens",
        str(args.call_overhead_tokens),
        "--max-texts",
        str(max(64, per)),
        "--queue-size",
        str(max(1024, args.concurrency * per * 2)),
    ]
    if not args.no_audit:
        command += ["--audit-log", str(workdir / "audit.log")]
    if args.threads:
        command += ["--threads", str(args.threads)]
    server = subprocess.Popen(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        _wait_ready(port, server)
        engine_rounds: dict[str, list[float]] = {name: [] for name in engines}
        engine_cpu: list[float] = []
        server_rounds: list[ServerRound] = []
        reference: list[str] = []
        for _ in range(args.rounds):
            for name, candidate in engines.items():
                rate, cpu_per_text, reference = engine_round(candidate, texts, args.max_batch)
                engine_rounds[name].append(rate)
                engine_cpu.append(cpu_per_text)
            server_before, client_before = process_cpu_s(server.pid), time.process_time()
            result = asyncio.run(server_round(port, key, chunks, args.concurrency, args.time_limit))
            result.server_cpu_s = process_cpu_s(server.pid) - server_before
            result.client_cpu_s = time.process_time() - client_before
            server_rounds.append(result)
        metrics = scrape(port, key)
    finally:
        server.terminate()
        server.wait(timeout=60)
    best_engine = max(max(rounds) for rounds in engine_rounds.values())
    best = max(server_rounds, key=lambda r: r.texts_per_s)
    truth = {text: label for text, label in zip(texts, reference, strict=True)}
    served = [text for chunk in chunks[: best.requests] for text in chunk]
    agree = sum(truth.get(t) == label for t, label in zip(served, best.labels, strict=False))
    batches = metrics.get("onnxguard_batch_size_count", 0.0)
    summary = {
        "bundle": str(args.bundle),
        "precision": engine.manifest.precision,
        "cores": available_cores(),
        "ort_threads": engine.threads,
        "concurrency": args.concurrency,
        "texts_per_request": per,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "max_batch_tokens": args.max_batch_tokens,
        "min_fill": args.min_fill,
        "call_overhead_tokens": args.call_overhead_tokens,
        "audit_log": not args.no_audit,
        "engine_texts_per_s": {
            name: [round(r, 1) for r in rounds] for name, rounds in engine_rounds.items()
        },
        "server_texts_per_s": [round(r.texts_per_s, 1) for r in server_rounds],
        "best_engine_texts_per_s": round(best_engine, 1),
        "best_server_texts_per_s": round(best.texts_per_s, 1),
        "server_requests_per_s": round(best.requests_per_s, 1),
        "p50_ms": round(best.p50_ms, 2),
        "p99_ms": round(best.p99_ms, 2),
        "ratio": round(best.texts_per_s / best_engine, 3),
        "requests": best.requests,
        "errors": sum(r.errors for r in server_rounds),
        "label_agreement": round(agree / max(1, len(best.labels)), 4),
        "mean_batch_size": round(metrics.get("onnxguard_batch_size_sum", 0.0) / batches, 2)
        if batches
        else None,
        "mean_padding_ratio": round(
            metrics.get("onnxguard_batch_padding_ratio_sum", 0.0) / batches, 3
        )
        if batches
        else None,
        "engine_cpu_ms_per_text": round(1000 * min(engine_cpu), 2),
        "server_cpu_ms_per_text": round(1000 * best.server_cpu_s / max(1, best.texts), 2),
        "client_cpu_ms_per_text": round(1000 * best.client_cpu_s / max(1, best.texts), 2),
    }
    summary["cpu_ratio"] = round(
        summary["engine_cpu_ms_per_text"] / max(1e-9, summary["server_cpu_ms_per_text"]), 3
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"bundle {summary['bundle']} ({summary['precision']}), {summary['cores']} cores, "
            f"ORT {summary['ort_threads']} threads"
        )
        print(
            f"load: {args.concurrency} concurrent clients x {per} text(s)/request, "
            f"{best.requests} requests per round, {args.rounds} rounds (interleaved)"
        )
        print(
            f"batching: max-batch {args.max_batch}, max-wait {args.max_wait_ms} ms, "
            f"max-batch-tokens {args.max_batch_tokens}, min-fill {args.min_fill}, "
            f"call-overhead-tokens {args.call_overhead_tokens}; audit "
            f"{'on (fsync)' if summary['audit_log'] else 'off'}"
        )
        for name, rounds in summary["engine_texts_per_s"].items():
            print(
                f"raw Engine   : {max(rounds):8.1f} texts/s   rounds {rounds}  ({name} ORT threads)"
            )
        print(
            f"server       : {best.texts_per_s:8.1f} texts/s   rounds "
            f"{summary['server_texts_per_s']}  ({best.requests_per_s:.1f} req/s)"
        )
        print(f"latency      : p50 {best.p50_ms:.1f} ms   p99 {best.p99_ms:.1f} ms")
        print(f"ratio        : {summary['ratio']:.1%} of the raw Engine (target >= 85%)")
        print(
            f"CPU per text : engine {summary['engine_cpu_ms_per_text']} ms, server "
            f"{summary['server_cpu_ms_per_text']} ms ({summary['cpu_ratio']:.1%} "
            f"efficient), load generator {summary['client_cpu_ms_per_text']} ms"
        )
        print(
            f"batches      : mean size {summary['mean_batch_size']}, mean padding "
            f"{summary['mean_padding_ratio']}; errors {summary['errors']}; labels agree "
            f"{summary['label_agreement']:.2%}"
        )
    return 0


def _wait_ready(port: int, server: subprocess.Popen[bytes]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(
                f"http://{HOST}:{port}/v2/health/ready", timeout=2
            ) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready within 120 s")


if __name__ == "__main__":
    raise SystemExit(main())
