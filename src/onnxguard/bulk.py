"""Bulk inference over a file: JSON lines, CSV or Parquet in, the same formats out.

The input is cut into parts of ``part_size`` rows (part k holds rows k*size ...), so a part means
the same rows on every run.  Each finished part is written atomically to
``OUTPUT.parts/part-NNNNNN.jsonl``; a rerun skips the parts already there, so a crash, Ctrl-C or a
lost Ray node costs at most the parts in flight.  When every part exists they are joined in input
order into OUTPUT (atomically) and the parts folder is removed.

Runners: in-process (one Engine, the texts of a part length-sorted into batches by the Engine), or
Ray Data (``map_batches`` over an actor pool; every actor verifies and loads the bundle itself, the
key source is resolved on the actor, so weights never travel through the object store).
Rows whose text is empty get an ``error`` field instead of a prediction; nothing is dropped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxguard._files import REPORT_MODE, atomic_stream, atomic_write
from onnxguard.errors import BulkInputError, BulkResumeError, UsageError

FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
             ".parquet": "parquet", ".pq": "parquet"}
_RUN_FILE = "run.json"


@dataclass(frozen=True)
class BulkConfig:
    """What to run on what; everything that changes the output is part of the resume check."""

    bundle: Path
    input: Path
    output: Path
    text_column: str = "text"
    id_column: str | None = None
    part_size: int = 4096
    batch_size: int = 32
    public_key: Path | None = None
    key_source: str | None = None
    threads: int | None = None
    use_ray: bool = False
    ray_address: str | None = None
    actors: int = 2
    cpus_per_actor: float = 1.0

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise UsageError(f"--part-size must be at least 1 (got {self.part_size})",
                             hint="parts of a few thousand rows keep restarts cheap")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {self.batch_size})",
                             hint="32 is a good default on CPU")
        if self.actors < 1:
            raise UsageError(f"--actors must be at least 1 (got {self.actors})",
                             hint="one actor per node or per few cores")
        file_format(self.input, "--input")
        file_format(self.output, "--output")
        if self.input.resolve() == self.output.resolve():
            raise UsageError("--output must differ from --input",
                             hint="write the predictions to a new file")


@dataclass(frozen=True)
class BulkResult:
    output: Path
    rows: int
    parts: int
    parts_skipped: int
    seconds: float
    runner: str
    errors: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = str(self.output)
        return data


@dataclass(frozen=True)
class Row:
    index: int
    id: Any
    text: str


def file_format(path: Path, option: str) -> str:
    """The table format named by a file's suffix (jsonl, csv or parquet)."""
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{option} {path}: unknown file type {path.suffix or '(no suffix)'!r}",
            hint="use .jsonl (JSON lines), .csv or .parquet",
        )
    return fmt


# --- reading --------------------------------------------------------------------------------
def read_rows(path: Path, text_column: str, id_column: str | None) -> Iterator[Row]:
    """Rows in input order; a missing column or a malformed line is a clear error."""
    if not path.is_file():
        raise BulkInputError(f"input file {path} does not exist",
                             hint="pass a .jsonl, .csv or .parquet file with a text column")
    fmt = file_format(path, "--input")
    records = {"jsonl": _jsonl_records, "csv": _csv_records,
               "parquet": _parquet_records}[fmt](path, text_column)
    for index, (where, record) in enumerate(records):
        text = record.get(text_column)
        if not isinstance(text, str):
            if text is None and text_column not in record:
                raise BulkInputError(
                    f"{where} has no {text_column!r} column",
                    hint=f"name the text column with --text-column (columns: "
                    f"{', '.join(sorted(map(str, record))) or 'none'})",
                )
            text = "" if text is None else str(text)
        row_id: Any = index
        if id_column is not None:
            if id_column not in record:
                raise BulkInputError(f"{where} has no {id_column!r} column",
                                     hint="fix --id-column, or leave it out to number the rows")
            row_id = record[id_column]
        yield Row(index, row_id, text)


def _jsonl_records(path: Path, text_column: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("r", encoding="utf-8", errors="strict", newline="") as handle:
        number = 0
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    raise BulkInputError(
                        f"{path} line {number} is not JSON",
                        hint=f'write one JSON object per line, e.g. {{"{text_column}": "..."}}',
                    ) from None
                if isinstance(item, str):
                    item = {text_column: item}
                if not isinstance(item, dict):
                    raise BulkInputError(f"{path} line {number} is not a JSON object",
                                         hint=f'write {{"{text_column}": "..."}} per line')
                yield f"{path} line {number}", item
        except UnicodeDecodeError as exc:
            raise BulkInputError(f"{path} line {number + 1} is not UTF-8 text",
                                 hint="convert the file to UTF-8") from exc


def _csv_records(path: Path, text_column: str) -> Iterator[tuple[str, dict[str, Any]]]:
    csv.field_size_limit(64 * 1024 * 1024)
    try:
        with path.open("r", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for number, record in enumerate(reader, 2):
                yield f"{path} row {number}", dict(record)
    except csv.Error as exc:
        raise BulkInputError(f"{path} is not valid CSV: {exc}",
                             hint="quote fields that contain commas or newlines") from exc
    except UnicodeDecodeError as exc:
        raise BulkInputError(f"{path} is not UTF-8 text",
                             hint="convert the file to UTF-8") from exc


def _parquet_records(path: Path, text_column: str) -> Iterator[tuple[str, dict[str, Any]]]:
    pq = _pyarrow_parquet()
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for damaged files
        raise BulkInputError(f"{path} is not a readable Parquet file: {exc}",
                             hint="check that the file was written completely") from exc
    number = 0
    for batch in parquet.iter_batches(batch_size=8192):
        for record in batch.to_pylist():
            number += 1
            yield f"{path} row {number}", record


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError("Parquet needs pyarrow, which is not installed",
                         hint="pip install 'onnxguard[ray]' (it brings pyarrow), or use "
                         ".jsonl / .csv") from exc
    return pq


def input_digest(path: Path) -> str:
    """sha256 of the input file: a rerun on changed input must not reuse old parts."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- predicting one part --------------------------------------------------------------------
def predict_texts(engine: Any, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Engine results for non-empty texts; an ``error`` entry for empty ones (nothing dropped)."""
    results: list[dict[str, Any]] = [{"error": "empty text"} for _ in texts]
    keep = [i for i, text in enumerate(texts) if text.strip()]
    if keep:
        for i, result in zip(keep, engine.predict([texts[i] for i in keep]), strict=True):
            results[i] = result
    return results


def part_lines(rows: Sequence[Row], results: Sequence[dict[str, Any]]) -> bytes:
    """One JSON line per row, in input order: the row's id first, then the prediction."""
    ordered = sorted(zip(rows, results, strict=True), key=lambda pair: pair[0].index)
    lines = [json.dumps({"id": row.id} | result, ensure_ascii=False, default=str)
             for row, result in ordered]
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


# --- the run --------------------------------------------------------------------------------
class PartStore:
    """``OUTPUT.parts/``: one atomically written file per finished part, plus the run's identity."""

    def __init__(self, config: BulkConfig, identity: dict[str, Any]) -> None:
        self.root = config.output.with_name(config.output.name + ".parts")
        self.identity = identity
        self.root.mkdir(parents=True, exist_ok=True)
        run_file = self.root / _RUN_FILE
        if run_file.exists():
            try:
                previous = json.loads(run_file.read_text())
            except ValueError:
                previous = None
            if previous != identity:
                raise BulkResumeError(
                    f"{self.root} holds parts of a different run (other input, bundle or "
                    "settings)",
                    hint=f"remove {self.root} to start over, or rerun with the same settings",
                )
        else:
            atomic_write(run_file, json.dumps(identity, indent=2).encode())

    def path(self, part: int) -> Path:
        return self.root / f"part-{part:06d}.jsonl"

    def done(self, part: int) -> bool:
        return self.path(part).is_file()

    def write(self, part: int, data: bytes) -> None:
        atomic_write(self.path(part), data)

    def finish(self, parts: int, output: Path) -> int:
        """Join the parts in order into OUTPUT (atomic), remove the parts; returns error rows."""
        paths = [self.path(part) for part in range(parts)]
        errors = write_table(output, paths)
        shutil.rmtree(self.root)
        return errors


def _records(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def write_table(output: Path, parts: Sequence[Path]) -> int:
    """Stream the parts into OUTPUT in the format its suffix names; returns the error rows.

    Two passes over the part files: the first finds the columns (error rows have fewer), the
    second writes, so memory stays one row (CSV, JSON lines) or one part (Parquet).
    """
    fmt = file_format(output, "--output")
    columns: dict[str, None] = {}
    errors = 0
    for record in _records(parts):
        columns.update(dict.fromkeys(record))
        errors += "error" in record
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_stream(output, mode=REPORT_MODE) as handle:
        if fmt == "jsonl":
            for path in parts:
                with path.open("rb") as part:
                    shutil.copyfileobj(part, handle)
        elif fmt == "csv":
            _write_csv(handle, list(columns), parts)
        else:
            _write_parquet(handle, list(columns), parts)
    return errors


def _write_csv(handle: Any, columns: list[str], parts: Sequence[Path]) -> None:
    import io

    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in _records(parts):
        writer.writerow({k: _csv_cell(v) for k, v in record.items()})
    text.flush()
    text.detach()


def _csv_cell(value: Any) -> Any:
    """CSV cells are flat: nested values (scores, embeddings, tokens) are written as JSON."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def _write_parquet(handle: Any, columns: list[str], parts: Sequence[Path]) -> None:
    pq = _pyarrow_parquet()
    import pyarrow as pa

    rows = list(_records(parts[:1]))
    full = next((r for r in _records(parts) if "error" not in r), rows[0] if rows else {})
    sample = {c: full.get(c) for c in columns}
    sample = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in sample.items()}
    schema = pa.Table.from_pylist([sample]).schema
    schema = pa.schema([f if not pa.types.is_null(f.type) else pa.field(f.name, pa.string())
                        for f in schema])
    with pq.ParquetWriter(handle, schema) as writer:
        for path in parts:
            records = [{c: (json.dumps(r[c]) if isinstance(r.get(c), dict) else r.get(c))
                        for c in columns} for r in _records([path])]
            writer.write_table(pa.Table.from_pylist(records, schema=schema))


def run_bulk(config: BulkConfig, progress: Callable[[str], None] | None = None) -> BulkResult:
    """Predict every row of ``config.input`` into ``config.output``; restartable by parts."""
    import time

    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    start = time.perf_counter()
    parts = _split_parts(read_rows(config.input, config.text_column, config.id_column),
                         config.part_size)
    rows = sum(len(p) for p in parts)
    identity = {
        "input_sha256": input_digest(config.input),
        "bundle": str(config.bundle.resolve()),
        "bundle_manifest_sha256": _manifest_digest(config.bundle),
        "text_column": config.text_column,
        "id_column": config.id_column,
        "part_size": config.part_size,
    }
    store = PartStore(config, identity)
    pending = [k for k in range(len(parts)) if not store.done(k)]
    skipped = len(parts) - len(pending)
    if skipped:
        say(f"resuming: {skipped} of {len(parts)} parts already done")
    runner = "ray" if config.use_ray else "in-process"
    notes: list[str] = []
    if pending:
        from onnxguard import _bulk_ray

        run = _bulk_ray.run_parts if config.use_ray else _run_parts_in_process
        notes = run(config, {k: parts[k] for k in pending}, store, say)
    errors = store.finish(len(parts), config.output)
    seconds = time.perf_counter() - start
    say(f"wrote {rows} rows to {config.output} in {seconds:.1f}s ({runner})")
    return BulkResult(output=config.output, rows=rows, parts=len(parts), parts_skipped=skipped,
                      seconds=seconds, runner=runner, errors=errors, notes=notes)


def _split_parts(rows: Iterator[Row], size: int) -> list[list[Row]]:
    parts: list[list[Row]] = []
    for row in rows:
        if not parts or len(parts[-1]) == size:
            parts.append([])
        parts[-1].append(row)
    return parts


def _manifest_digest(bundle: Path) -> str:
    from onnxguard.bundle import read_manifest_bytes

    return hashlib.sha256(read_manifest_bytes(bundle)).hexdigest()


def _run_parts_in_process(config: BulkConfig, parts: dict[int, list[Row]], store: PartStore,
                          say: Callable[[str], None]) -> list[str]:
    from onnxguard.runtime import Engine

    engine = Engine.from_bundle(config.bundle, public_key=config.public_key,
                                key_source=config.key_source, intra_op_threads=config.threads,
                                batch_size=config.batch_size)
    for done, (part, rows) in enumerate(sorted(parts.items()), 1):
        results = predict_texts(engine, [row.text for row in rows])
        store.write(part, part_lines(rows, results))
        say(f"part {part + 1}: {len(rows)} rows ({done}/{len(parts)} pending parts done)")
    return []
