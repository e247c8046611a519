"""Load benchmark for `onnxguard serve` (not a test): every route of a bundle next to the Engine.

Starts `onnxguard serve BUNDLE` on 127.0.0.1 (a fresh API key, an fsynced audit log, no rate
limit) and runs the same requests through each mode of the bundle's task:
  embeddings   raw Engine (``Engine.predict``), ``/v1/embed``, OpenAI ``/v1/embeddings`` (raw
               HTTP, and the unmodified ``openai`` client), TEI ``/embed``
  reranking    raw Engine (``rerank_encoded`` over every pair), TEI ``/rerank``, ``/v1/rerank``
  classifying  raw Engine, ``/v1/classify``, TEI ``/predict``
Raw HTTP is a minimal keep-alive asyncio client, so the load generator takes as little of the
shared CPU as it can.  The raw Engine runs all the requests' texts (or pairs) in one call,
length-sorted batches of --max-batch, with the server's session settings.  Rounds are
interleaved (every mode once per round) because a shared machine is noisy; the table gives the
median and best round, each mode's median as a share of the Engine's, p50/p99 of the median
round, and the load average.

    python scripts/bench_serve.py /tmp/bench-default --data ../shared/data/sst2/dev.tsv
    python scripts/bench_serve.py /tmp/bench-rerank --texts-per-request 8 --concurrency 8

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
from typing import Any

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
class Round:
    """One mode's pass over the requests: units (texts or pairs) per second and latency."""

    units_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    units: int
    errors: int
    load: str
    server_cpu_s: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- what is sent: one request per chunk ---------------------------------------------------------
@dataclass(frozen=True)
class Mode:
    """A way to run the same work: the raw Engine, or one HTTP route (raw HTTP or a client)."""

    name: str
    path: str | None
    """The route; None for the in-process Engine."""
    client: str = "http"
    """``http`` (a minimal keep-alive asyncio client) or ``openai`` (the unmodified client)."""


def modes_for(task: str) -> list[Mode]:
    """Every way a bundle of this task is served, next to the raw Engine."""
    if task == "feature-extraction":
        return [Mode("raw Engine", None), Mode("/v1/embed", "/v1/embed"),
                Mode("/v1/embeddings", "/v1/embeddings"),
                Mode("/v1/embeddings openai", "/v1/embeddings", "openai"),
                Mode("/embed (TEI)", "/embed")]
    if task == "reranking":
        return [Mode("raw Engine rerank", None), Mode("/rerank (TEI)", "/rerank"),
                Mode("/v1/rerank (Cohere)", "/v1/rerank")]
    return [Mode("raw Engine", None), Mode("/v1/classify", "/v1/classify"),
            Mode("/predict (TEI)", "/predict")]


def body_for(path: str, chunk: list[str], model: str) -> bytes:
    """The request body of ``path`` for one chunk (a reranking chunk is query + documents)."""
    bodies = {
        "/v1/embed": lambda: {"texts": chunk}, "/v1/classify": lambda: {"texts": chunk},
        "/v1/embeddings": lambda: {"input": chunk, "model": model,
                                   "encoding_format": "float"},
        "/embed": lambda: {"inputs": chunk}, "/predict": lambda: {"inputs": chunk},
        "/rerank": lambda: {"query": chunk[0], "texts": chunk[1:]},
        "/v1/rerank": lambda: {"query": chunk[0], "documents": chunk[1:], "model": model},
    }
    return json.dumps(bodies[path]()).encode()


def units_of(task: str, chunk: list[str]) -> int:
    return len(chunk) - 1 if task == "reranking" else len(chunk)


def engine_round(engine: Any, task: str, chunks: list[list[str]], batch_size: int) -> Round:
    """All the chunks' work in one call, as `predict` runs a file: length-sorted batches."""
    load = load_average()
    started = time.perf_counter()
    if task == "reranking":
        encodings = [e for chunk in chunks for e in engine.encode_pairs(chunk[0], chunk[1:])]
        engine.rerank_encoded(encodings, batch_size)
    else:
        engine.predict([t for chunk in chunks for t in chunk], batch_size=batch_size)
    seconds = time.perf_counter() - started
    units = sum(units_of(task, c) for c in chunks)
    return Round(units / seconds, None, None, len(chunks), units, 0, load)


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


async def server_round(port: int, key: str, mode: Mode, task: str, model: str,
                       chunks: list[list[str]], concurrency: int, time_limit: float) -> Round:
    """``concurrency`` keep-alive clients send the chunks in order until done or out of time."""
    assert mode.path is not None
    load = load_average()
    head = (f"POST {mode.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            "Content-Length: ").encode()
    bodies = [body_for(mode.path, chunk, model) for chunk in chunks]
    latencies: list[float] = []
    done_units = 0
    errors = 0
    next_index = 0
    deadline = time.perf_counter() + time_limit
    openai_client: Any = None
    if mode.client == "openai":
        from openai import AsyncOpenAI

        openai_client = AsyncOpenAI(base_url=f"http://{HOST}:{port}/v1", api_key=key,
                                    max_retries=0)

    async def send(index: int, reader: Any, writer: Any) -> bool:
        if openai_client is not None:
            try:
                await openai_client.embeddings.create(input=chunks[index], model=model)
            except Exception:  # any client error counts as one
                return False
            return True
        status, _ = await _request(reader, writer, head, bodies[index])
        return status == 200

    async def client() -> None:
        nonlocal next_index, errors, done_units
        reader = writer = None
        if openai_client is None:
            reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while next_index < len(chunks) and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                started = time.perf_counter()
                ok = await send(index, reader, writer)
                latencies.append(time.perf_counter() - started)
                if ok:
                    done_units += units_of(task, chunks[index])
                else:
                    errors += 1
        finally:
            if writer is not None:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    if openai_client is not None:
        await openai_client.close()
    ordered = sorted(latencies) or [0.0]
    return Round(done_units / seconds, 1000 * statistics.median(ordered),
                 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
                 len(latencies), done_units, errors, load)


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--texts-per-request", type=int, default=1,
                        help="texts per request; for a reranker, documents per query")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-requests", type=int, default=2000,
                        help="per server round (the texts are cycled to reach it)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per round")
    parser.add_argument("--modes", default=None,
                        help="comma-separated subset of the modes (default: all for the task)")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--min-fill", type=float, default=0.5)
    parser.add_argument("--call-overhead-tokens", type=int, default=32)
    parser.add_argument("--no-audit", action="store_true", help="serve without an audit log")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def make_chunks(texts: list[str], task: str, per: int, max_requests: int) -> list[list[str]]:
    """The requests' texts, cycled; a reranking chunk is a query and ``per`` documents."""
    size = per + 1 if task == "reranking" else per
    wanted = max(size, min(max_requests * size, 200_000))
    cycled = [texts[i % len(texts)] for i in range(max(wanted, len(texts)))]
    return [cycled[i:i + size] for i in range(0, len(cycled) - size + 1, size)][:max_requests]


def start_server(args: argparse.Namespace, workdir: Path, port: int,
                 max_texts: int) -> tuple[subprocess.Popen[bytes], str]:
    """`onnxguard serve` in a subprocess with a fresh key; no rate or token limits."""
    cli = [sys.executable, "-c", "from onnxguard.cli import main; main()"]
    keys = workdir / "keys.txt"
    new_key = subprocess.run(
        [*cli, "apikey", "new", "--id", "bench", "--scopes", "infer,metrics", "--keys-file",
         str(keys), "--json"], check=True, capture_output=True, text=True)
    key = json.loads(new_key.stdout)["secret"]
    command = [
        *cli, "serve", str(args.bundle), "--host", HOST, "--port", str(port),
        "--api-keys-file", str(keys), "--rate-limit", "off", "--token-limit", "off",
        "--no-access-log", "--log-level", "warning", "--max-batch", str(args.max_batch),
        "--max-wait-ms", str(args.max_wait_ms), "--max-batch-tokens", str(args.max_batch_tokens),
        "--min-fill", str(args.min_fill), "--call-overhead-tokens", str(args.call_overhead_tokens),
        "--max-texts", str(max(64, max_texts)),
        "--queue-size", str(max(1024, args.concurrency * max_texts * 2)),
    ]
    if not args.no_audit:
        command += ["--audit-log", str(workdir / "audit.log")]
    if args.threads:
        command += ["--threads", str(args.threads)]
    server = subprocess.Popen(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    _wait_ready(port, server)
    return server, key


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from onnxguard.runtime import Engine, available_cores
    from onnxguard.serve.service import _NO_SPINNING

    texts = load_texts(args.data)
    per = max(1, args.texts_per_request)
    # The raw Engine with the server's session settings (no thread spinning).
    engine = Engine.from_bundle(args.bundle, intra_op_threads=args.threads,
                                session_config=_NO_SPINNING)
    task = engine.task.value
    chunks = make_chunks(texts, task, per, args.max_requests)
    modes = modes_for(task)
    if args.modes:
        wanted = {m.strip() for m in args.modes.split(",")}
        modes = [m for m in modes if m.name in wanted or m.path is None]
    engine_round(engine, task, chunks[:8], args.max_batch)  # warm-up
    workdir = Path(tempfile.mkdtemp(prefix="onnxguard-bench-"))
    port = free_port()
    load_before = load_average()
    server, key = start_server(args, workdir, port, len(chunks[0]))
    rounds: dict[str, list[Round]] = {m.name: [] for m in modes}
    try:
        for mode in modes:  # one unmeasured pass each: connections, JIT-free warm paths
            if mode.path is not None:
                asyncio.run(server_round(port, key, mode, task, engine.name, chunks[:4], 2, 10))
        for _ in range(args.rounds):  # interleaved: every mode once per round
            for mode in modes:
                if mode.path is None:
                    rounds[mode.name].append(engine_round(engine, task, chunks, args.max_batch))
                    continue
                cpu = process_cpu_s(server.pid)
                result = asyncio.run(server_round(port, key, mode, task, engine.name, chunks,
                                                  args.concurrency, args.time_limit))
                result.server_cpu_s = process_cpu_s(server.pid) - cpu
                rounds[mode.name].append(result)
        metrics = scrape(port, key)
    finally:
        server.terminate()
        server.wait(timeout=60)
    unit = "pairs" if task == "reranking" else "texts"
    summary = summarise(args, engine, available_cores(), rounds, unit, metrics)
    summary["load_average"] = {"before": load_before, "after": load_average()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0


def summarise(args: argparse.Namespace, engine: Any, cores: int,
              rounds: dict[str, list[Round]], unit: str,
              metrics: dict[str, float]) -> dict[str, Any]:
    """Medians over rounds (a noisy machine moves single rounds), best, and the median round's
    latency; each server mode as a share of the raw Engine's median."""
    engine_median = statistics.median(r.units_per_s for r in next(iter(rounds.values())))
    rows = []
    for name, results in rounds.items():
        rates = [r.units_per_s for r in results]
        median_round = sorted(results, key=lambda r: r.units_per_s)[len(results) // 2]
        units = sum(r.units for r in results)
        rows.append({
            "mode": name, f"{unit}_per_s_median": round(statistics.median(rates), 1),
            f"{unit}_per_s_best": round(max(rates), 1), "rounds": [round(r, 1) for r in rates],
            "of_engine": round(statistics.median(rates) / engine_median, 3),
            "p50_ms": None if median_round.p50_ms is None else round(median_round.p50_ms, 1),
            "p99_ms": None if median_round.p99_ms is None else round(median_round.p99_ms, 1),
            "errors": sum(r.errors for r in results),
            "server_cpu_ms_per_unit": round(1000 * sum(r.server_cpu_s for r in results)
                                            / max(1, units), 2) if results[0].p50_ms else None,
            "load": [r.load for r in results],
        })
    batches = metrics.get("onnxguard_batch_size_count", 0.0)
    return {
        "bundle": str(args.bundle), "task": engine.task.value,
        "precision": engine.manifest.precision, "cores": cores, "ort_threads": engine.threads,
        "data": str(args.data), "unit": unit, "concurrency": args.concurrency,
        "texts_per_request": args.texts_per_request, "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms, "rounds": args.rounds,
        "audit_log": not args.no_audit, "modes": rows,
        "mean_batch_size": round(metrics.get("onnxguard_batch_size_sum", 0.0) / batches, 2)
        if batches else None,
    }


def print_summary(summary: dict[str, Any]) -> None:
    unit = summary["unit"]
    per = summary["texts_per_request"]
    print(f"bundle {summary['bundle']} ({summary['task']}, {summary['precision']}), "
          f"{summary['cores']} cores, ORT {summary['ort_threads']} threads; data "
          f"{summary['data']}")
    what = f"1 query + {per} documents" if unit == "pairs" else f"{per} text(s)"
    print(f"load: {summary['concurrency']} concurrent clients x {what}/request, max-batch "
          f"{summary['max_batch']}, max-wait {summary['max_wait_ms']} ms, audit "
          f"{'on (fsync)' if summary['audit_log'] else 'off'}, {summary['rounds']} rounds "
          f"(interleaved); load average {summary['load_average']['before']} -> "
          f"{summary['load_average']['after']}")
    print(f"{'mode':<24} {unit + '/s median':>14} {'best':>8} {'of Engine':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  rounds")
    for row in summary["modes"]:
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f}"
        p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f}"
        print(f"{row['mode']:<24} {row[unit + '_per_s_median']:>14.1f} "
              f"{row[unit + '_per_s_best']:>8.1f} {row['of_engine']:>9.1%} {p50:>8} {p99:>8} "
              f"{row['errors']:>6}  {row['rounds']}")
    print(f"server mean batch size {summary['mean_batch_size']}")


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
