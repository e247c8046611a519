"""Benchmark inputs: texts (and labels) from a TSV, the latency sample, the workload grid.

Why a sample: the seed's setting (PyTorch, batch 8, padded to 128) runs ~40 sentences/s here, so
timing every engine on all 872 SST-2 sentences for several interleaved rounds would take far
longer than the ~10 minutes a benchmark should.  Latency rounds use an evenly spaced sample (the
same length distribution as the whole set); accuracy always uses every sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onnxguard.errors import UsageError

DYNAMIC = "dynamic"


@dataclass(frozen=True)
class Dataset:
    """Texts in file order; ``labels`` (class indices) only when every line is labelled."""

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    source: str
    label_names: tuple[str, ...] = ()

    @property
    def labelled(self) -> bool:
        return self.labels is not None


@dataclass(frozen=True)
class Workload:
    """One cell of the grid: an input mode at a batch size."""

    seq: int | None
    """Pad every batch to this many tokens (the seed's setting); None: dynamic padding."""
    batch: int

    @property
    def id(self) -> str:
        return f"{self.mode}-b{self.batch}"

    @property
    def mode(self) -> str:
        return f"pad{self.seq}" if self.seq is not None else DYNAMIC

    @property
    def title(self) -> str:
        if self.seq is None:
            return f"batch {self.batch}, real text (dynamic padding, length-sorted batches)"
        return f"batch {self.batch} × {self.seq} tokens (fixed padding)"

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "mode": self.mode, "seq": self.seq, "batch": self.batch}


def read_dataset(path: Path, label_names: Sequence[str] = ()) -> Dataset:
    """``--data``: read like the build's ``--validation-data`` (the one reader), kept with the
    model's label names for the report."""
    from onnxguard.convert.validate import read_validation_data

    data = read_validation_data(path, label_names, what="data")
    return Dataset(data.texts, data.labels, data.source, tuple(label_names))


def sample_indices(total: int, size: int) -> list[int]:
    """``size`` evenly spaced indices (all when ``size`` is 0 or at least ``total``)."""
    if size <= 0 or size >= total:
        return list(range(total))
    step = total / size
    return [int(i * step) for i in range(size)]


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise UsageError(f"--batch {text!r} is not a list of integers",
                         hint="e.g. --batch 1,8") from None
    if not values or any(v < 1 or v > 4096 for v in values):
        raise UsageError(f"--batch {text!r}: sizes must be 1..4096", hint="e.g. --batch 1,8")
    return values


def parse_seqs(text: str) -> tuple[int | None, ...]:
    """``128``, ``dynamic`` or both (``128,dynamic``); None stands for dynamic."""
    values: list[int | None] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        if part == DYNAMIC:
            values.append(None)
            continue
        if not part.isdigit() or not 2 <= int(part) <= 8192:
            raise UsageError(f"--seq {part!r} is neither a token count nor 'dynamic'",
                             hint="e.g. --seq 128, --seq dynamic or --seq 128,dynamic")
        values.append(int(part))
    if not values:
        raise UsageError("--seq is empty", hint="e.g. --seq 128,dynamic")
    return tuple(dict.fromkeys(values))


def workload_grid(seqs: Sequence[int | None], batches: Sequence[int]) -> tuple[Workload, ...]:
    return tuple(Workload(seq, batch) for seq in seqs for batch in batches)
