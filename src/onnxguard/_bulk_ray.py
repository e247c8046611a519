"""Ray Data runner for bulk inference (the ``onnxguard[ray]`` extra).

Rows travel as (part, row, text); ``map_batches`` sends blocks of rows to a fixed pool of actors.
Each actor verifies the bundle (hashes, signature with the configured public key) and decrypts it
in its own memory with the key source resolved on its node, so weights never pass through the
object store.  Inside a block the Engine sorts texts by length and pads per batch.  The driver
consumes results as they stream in and writes a part as soon as all its rows are back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxguard.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from onnxguard.bulk import BulkConfig, PartStore, Row


_POOL_START_TIMEOUT_S = 600


class BundleActor:
    """One verified Engine per actor; called with a block of rows, returns their predictions."""

    def __init__(self, bundle: str, public_key: str | None, key_source: str | None,
                 threads: int | None, batch_size: int) -> None:
        from onnxguard.runtime import Engine

        self.engine = Engine.from_bundle(
            Path(bundle), public_key=Path(public_key) if public_key else None,
            key_source=key_source, intra_op_threads=threads, batch_size=batch_size)
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import numpy as np

        from onnxguard.bulk import predict_texts

        texts = [str(t) for t in batch["text"]]
        results = predict_texts(self.engine, texts)
        encoded = np.array([json.dumps(r, ensure_ascii=False) for r in results], dtype=object)
        node = np.array([self.node_id] * len(texts), dtype=object)
        return {"part": batch["part"], "row": batch["row"], "result": encoded, "node": node}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--ray needs Ray, which is not installed",
                         hint="pip install 'onnxguard[ray]', or run without --ray") from exc
    return ray


def run_parts(config: BulkConfig, parts: dict[int, list[Row]], store: PartStore,
              say: Callable[[str], None]) -> list[str]:
    """Run the pending parts on a Ray cluster (``config.ray_address``, or a local one);
    returns notes for the result (how many nodes the actors ran on)."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.ray_address, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        nodes = _stream(ray, config, parts, store, say)
    finally:
        if started_here:
            ray.shutdown()
    return [f"ray actors ran on {len(nodes)} node(s)"]


def _stream(ray: Any, config: BulkConfig, parts: dict[int, list[Row]], store: PartStore,
            say: Callable[[str], None]) -> set[str]:
    by_index = {(part, i): row for part, rows in parts.items() for i, row in enumerate(rows)}
    items = [{"part": part, "row": i, "text": row.text} for (part, i), row in by_index.items()]
    block_rows = max(1, min(config.part_size, 1024))
    # Start (verify and load) the whole actor pool before the first block goes out, so the
    # work spreads over every actor instead of the first one that happens to be ready.
    ray.data.DataContext.get_current().wait_for_min_actors_s = _POOL_START_TIMEOUT_S
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items) // block_rows))
    predicted = dataset.map_batches(
        BundleActor,
        batch_size=block_rows,
        concurrency=config.actors,
        num_cpus=config.cpus_per_actor,
        fn_constructor_kwargs={
            "bundle": str(config.bundle.resolve()),
            "public_key": str(config.public_key.resolve()) if config.public_key else None,
            "key_source": config.key_source,
            "threads": config.threads,
            "batch_size": config.batch_size,
        },
    )
    waiting: dict[int, dict[int, dict[str, Any]]] = {part: {} for part in parts}
    from onnxguard.bulk import part_lines

    done = 0
    nodes: set[str] = set()
    for record in predicted.iter_rows():
        nodes.add(str(record["node"]))
        part, row = int(record["part"]), int(record["row"])
        waiting[part][row] = json.loads(record["result"])
        if len(waiting[part]) == len(parts[part]):
            rows = parts[part]
            store.write(part, part_lines(rows, [waiting[part][i] for i in range(len(rows))]))
            del waiting[part]
            done += 1
            say(f"part {part + 1}: {len(rows)} rows ({done}/{len(parts)} pending parts done)")
    return nodes
