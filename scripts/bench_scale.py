"""Scale-out benchmark (not a test): `serve --ray` and `predict --ray` next to one process.

On loopback, with the same texts:
  serve   single-process `onnxguard serve` (a subprocess) vs Ray Serve with 1 and 2 replicas on a
          local two-node Ray cluster (``ray.cluster_utils.Cluster``, 1 CPU per node); throughput
          at --concurrency clients, and latency of one client alone (the per-request overhead)
  bulk    `predict --input/--output` in-process vs Ray Data with 1 and 2 actors
Every serve setup has keys, the audit log (fsynced) and no rate limits, so the figures compare
the architecture, not the limits.  The machine's load average is printed with each figure: on a
2-core machine two replicas share the same cores as one process, so expect overhead, not speed-up.

    python scripts/bench_scale.py BUNDLE --data ../shared/data/sst2/dev.tsv
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import DEFAULT_DATA, HOST, free_port, load_texts


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def drive(url: str, key: str, chunks: list[list[str]], concurrency: int) -> dict[str, Any]:
    """Requests from ``concurrency`` keep-alive clients; texts/s, p50/p99 ms, errors."""
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = list(range(len(chunks)))
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(
            max_connections=concurrency)) as client:

        async def worker() -> None:
            nonlocal errors
            while queue:
                index = queue.pop()
                started = time.perf_counter()
                response = await client.post(url + "/v1/classify", headers=headers,
                                             json={"texts": chunks[index]})
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    texts = sum(len(c) for c in chunks)
    return {"texts_per_s": texts / seconds, "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "errors": errors, "load": load()}


def measure(url: str, key: str, chunks: list[list[str]], concurrency: int,
            alone: int) -> dict[str, Any]:
    asyncio.run(drive(url, key, chunks[:concurrency], concurrency))  # warm-up
    busy = asyncio.run(drive(url, key, chunks, concurrency))
    single = asyncio.run(drive(url, key, chunks[:alone], 1))
    return busy | {"alone_p50_ms": single["p50_ms"]}


def wait_ready(url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} never became ready")


def serve_single(bundle: Path, keys: Path, key: str, tmp: Path, chunks: list[list[str]],
                 args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "onnxguard", "serve", str(bundle), "--port", str(port),
         "--api-keys-file", str(keys), "--rate-limit", "off", "--token-limit", "off",
         "--audit-log", str(tmp / "single-audit.log"), "--no-access-log",
         "--threads", str(args.threads)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://{HOST}:{port}"
        wait_ready(url)
        return measure(url, key, chunks, args.concurrency, args.alone)
    finally:
        server.terminate()
        server.wait(60)


def serve_ray(bundle: Path, keys: Path, key: str, tmp: Path, chunks: list[list[str]],
              args: argparse.Namespace, replicas: int) -> dict[str, Any]:
    from onnxguard.serve.ray_serve import RayOptions, RayService
    from onnxguard.serve.settings import AuditSettings, ServeConfig

    config = ServeConfig(bundle=bundle, port=free_port(), api_keys_file=keys, rate_limit=None,
                         token_limit=None, access_log=False, threads=1,
                         audit=AuditSettings(path=tmp / f"ray{replicas}-audit.log"))
    service = RayService(config, RayOptions(replicas=replicas, cpus_per_replica=1.0))
    url = service.start()
    try:
        service.wait_ready(300)
        wait_ready(url)
        return measure(url, key, chunks, args.concurrency, args.alone)
    finally:
        service.stop()


def bulk(bundle: Path, source: Path, tmp: Path, actors: int | None) -> dict[str, Any]:
    from onnxguard.bulk import BulkConfig, run_bulk

    out = tmp / f"bulk-{actors or 0}.jsonl"
    config = BulkConfig(bundle=bundle, input=source, output=out, use_ray=actors is not None,
                        actors=actors or 1, threads=1 if actors else None)
    result = run_bulk(config, progress=lambda _: None)
    out.unlink()
    return {"texts_per_s": result.rows / result.seconds, "seconds": result.seconds,
            "load": load()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--texts-per-request", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--alone", type=int, default=40, help="requests of the lone client")
    parser.add_argument("--bulk-repeat", type=int, default=5, help="copies of the data, bulk")
    parser.add_argument("--threads", type=int, default=2, help="single-process ORT threads")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from onnxguard.serve.auth import generate_secret, key_line

    texts = load_texts(args.data)
    n = args.texts_per_request
    chunks = [texts[i:i + n] for i in range(0, len(texts), n)]
    chunks = (chunks * (args.requests // len(chunks) + 1))[:args.requests]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_str:
        tmp = Path(tmp_str)
        key = generate_secret()
        keys = tmp / "keys.txt"
        keys.write_text(key_line("bench", key) + "\n")
        keys.chmod(0o600)
        source = tmp / "bulk.jsonl"
        source.write_text("".join(json.dumps({"text": t}) + "\n"
                                  for t in texts * args.bulk_repeat))
        print(f"machine: {os.cpu_count()} cores, load before {load()}", flush=True)
        rows: list[tuple[str, dict[str, Any]]] = []
        rows.append(("serve, one process", serve_single(args.bundle, keys, key, tmp, chunks,
                                                         args)))
        os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            for replicas in (1, 2):
                rows.append((f"serve --ray, {replicas} replica(s)",
                             serve_ray(args.bundle, keys, key, tmp, chunks, args, replicas)))
            bulk_rows = [("predict, in-process", bulk(args.bundle, source, tmp, None))]
            for actors in (1, 2):
                bulk_rows.append((f"predict --ray, {actors} actor(s)",
                                  bulk(args.bundle, source, tmp, actors)))
        finally:
            ray.shutdown()
            cluster.shutdown()
    print(f"\nserve: {len(chunks)} requests x {n} texts, {args.concurrency} clients; "
          f"'alone' = one client, {args.alone} requests")
    print(f"{'setup':<28}{'texts/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'alone p50':>11}"
          f"{'errors':>8}  load")
    for name, r in rows:
        print(f"{name:<28}{r['texts_per_s']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['alone_p50_ms']:>11.1f}{r['errors']:>8}  {r['load']}")
    base = rows[0][1]
    for name, r in rows[1:]:
        print(f"  {name}: {r['texts_per_s'] / base['texts_per_s']:.2f}x one process; "
              f"+{r['alone_p50_ms'] - base['alone_p50_ms']:.1f} ms per request alone")
    print(f"\nbulk: {len(texts) * args.bulk_repeat} texts")
    print(f"{'setup':<28}{'texts/s':>9}{'seconds':>9}  load")
    for name, r in bulk_rows:
        print(f"{name:<28}{r['texts_per_s']:>9.1f}{r['seconds']:>9.1f}  {r['load']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
