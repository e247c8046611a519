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
    """``label<TAB>content`` lines (header ``label<TAB>...`` skipped), or one text per line.

    Labels may be class indices (``0``/``1``) or the model's label names (``POSITIVE``).  A file
    where only some lines carry a label is refused: half-labelled accuracy would mislead.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read data file {path}: {exc}",
            hint="pass a UTF-8 file with label<TAB>text lines (or one text per line)",
        ) from exc
    texts: list[str] = []
    raw_labels: list[str | None] = []
    for number, line in enumerate(lines):
        if number == 0 and line.lower().startswith("label\t"):
            continue
        if not line.strip():
            continue
        if "\t" in line:
            label, text = line.split("\t", 1)
            raw_labels.append(label.strip())
        else:
            text = line
            raw_labels.append(None)
        if text.strip():
            texts.append(text)
        else:
            raw_labels.pop()
    if not texts:
        raise UsageError(f"data file {path} has no texts", hint="add one text per line")
    given = [label for label in raw_labels if label is not None]
    if given and len(given) != len(raw_labels):
        raise UsageError(
            f"data file {path}: {len(given)} of {len(raw_labels)} lines carry a label",
            hint="label every line (label<TAB>text) or none of them",
        )
    labels = _label_indices(given, label_names, path) if given else None
    return Dataset(tuple(texts), labels, str(path), tuple(label_names))


def _label_indices(raw: list[str], names: Sequence[str], path: Path) -> tuple[int, ...]:
    if all(label.lstrip("-").isdigit() for label in raw):
        indices = tuple(int(label) for label in raw)
        if names and any(not 0 <= i < len(names) for i in indices):
            raise UsageError(
                f"data file {path} has label indices outside 0..{len(names) - 1}",
                hint=f"the model's labels are {', '.join(names)}",
            )
        return indices
    lookup = {name.lower(): i for i, name in enumerate(names)}
    unknown = sorted({label for label in raw if label.lower() not in lookup})
    if unknown:
        raise UsageError(
            f"data file {path} has labels the model does not know: {', '.join(unknown[:5])}",
            hint=f"use class indices or the model's labels ({', '.join(names) or 'none'})",
        )
    return tuple(lookup[label.lower()] for label in raw)


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
