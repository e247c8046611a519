"""Bulk inference in-process: formats, ids, input order, empty rows, restart by parts."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from onnxguard import bulk
from onnxguard.bulk import BulkConfig, run_bulk
from onnxguard.errors import BulkInputError, BulkResumeError, UsageError
from onnxguard.runtime import Engine

TEXTS = [
    "a gorgeous, witty film",
    "a dull mess from start to finish that never finds its footing",
    "",
    "fine",
    "the cast is wonderful and the story moves at a brisk pace",
    "   ",
    "nothing works",
]


@pytest.fixture
def bundle(tiny_bundle_factory: Callable[..., Path]) -> Path:
    return tiny_bundle_factory("bert", "text-classification", "none")


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_in_order_with_ids_and_empty_rows(bundle: Path, tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out.jsonl"
    result = run_bulk(BulkConfig(bundle=bundle, input=source, output=out, part_size=3),
                      progress=lambda _: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(TEXTS)))
    assert result.rows == len(TEXTS) and result.parts == 3 and result.errors == 2
    expected = Engine.from_bundle(bundle).predict([t for t in TEXTS if t.strip()])
    got = [r for r in rows if "error" not in r]
    assert [r["label"] for r in got] == [e["label"] for e in expected]
    assert [r["score"] for r in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert rows[2] == {"id": 2, "error": "empty text"}
    assert not (tmp_path / "out.jsonl.parts").exists()


def test_csv_with_id_column_to_csv(bundle: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["doc", "body"])
        writer.writerows([[f"d{i}", t] for i, t in enumerate(TEXTS)])
    out = tmp_path / "out.csv"
    run_bulk(BulkConfig(bundle=bundle, input=source, output=out, text_column="body",
                        id_column="doc"), progress=lambda _: None)
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(len(TEXTS))]
    assert rows[0]["label"] in {"NEG", "POS"}
    assert set(json.loads(rows[0]["scores"])) == {"NEG", "POS"}
    assert rows[2]["error"] == "empty text"


def test_rerun_skips_finished_parts(bundle: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    source = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out.jsonl"
    real = bulk.predict_texts
    calls: list[int] = []

    def crash_on_second_part(engine: Engine, texts: list[str]) -> list[dict[str, object]]:
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(engine, texts)

    monkeypatch.setattr(bulk, "predict_texts", crash_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        run_bulk(BulkConfig(bundle=bundle, input=source, output=out, part_size=3),
                 progress=lambda _: None)
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "out.jsonl.parts").iterdir()) == [
        "part-000000.jsonl", "run.json"]
    monkeypatch.setattr(bulk, "predict_texts", real)
    lines: list[str] = []
    result = run_bulk(BulkConfig(bundle=bundle, input=source, output=out, part_size=3),
                      progress=lines.append)
    assert result.parts_skipped == 1
    assert "resuming: 1 of 3 parts already done" in lines
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == list(range(7))


def test_changed_input_refuses_old_parts(bundle: Path, tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    (parts / "run.json").write_text(json.dumps({"input_sha256": "0" * 64}))
    with pytest.raises(BulkResumeError) as info:
        run_bulk(BulkConfig(bundle=bundle, input=source, output=out), progress=lambda _: None)
    assert info.value.hint and "remove" in info.value.hint


def test_missing_column_and_bad_lines_are_clear(bundle: Path, tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "in.jsonl", [{"body": "x"}])
    with pytest.raises(BulkInputError, match="no 'text' column") as info:
        run_bulk(BulkConfig(bundle=bundle, input=source, output=tmp_path / "o.jsonl"),
                 progress=lambda _: None)
    assert info.value.hint and "--text-column" in info.value.hint and "body" in info.value.hint
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(BulkInputError, match="line 2 is not JSON"):
        run_bulk(BulkConfig(bundle=bundle, input=broken, output=tmp_path / "o.jsonl"),
                 progress=lambda _: None)
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_options_are_usage_errors(bundle: Path, tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    with pytest.raises(UsageError, match="unknown file type"):
        BulkConfig(bundle=bundle, input=source, output=tmp_path / "out.txt")
    with pytest.raises(UsageError, match="--part-size"):
        BulkConfig(bundle=bundle, input=source, output=tmp_path / "o.jsonl", part_size=0)
    with pytest.raises(UsageError, match="must differ"):
        BulkConfig(bundle=bundle, input=source, output=source)


def test_embeddings_to_parquet(tiny_bundle_factory: Callable[..., Path], tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet needs the ray extra (pyarrow)")
    bundle = tiny_bundle_factory("bert", "feature-extraction", "none")
    source = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out.parquet"
    run_bulk(BulkConfig(bundle=bundle, input=source, output=out, part_size=2),
             progress=lambda _: None)
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == list(range(len(TEXTS)))
    expected = Engine.from_bundle(bundle).predict([TEXTS[0]])[0]["embedding"]
    assert table[0]["embedding"] == pytest.approx(expected, abs=1e-5)
    assert table[2]["error"] == "empty text" and table[2]["embedding"] is None


def test_predict_cli_bulk_mode(bundle: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    source = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out.csv"
    run = subprocess.run(
        [sys.executable, "-m", "onnxguard", "predict", str(bundle), "--input", str(source),
         "--output", str(out), "--part-size", "4"],
        capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert "wrote 7 rows" in run.stderr and "2 row(s) had no text" in run.stderr
    with out.open() as handle:
        assert [r["id"] for r in csv.DictReader(handle)] == [str(i) for i in range(7)]
    bad = subprocess.run(
        [sys.executable, "-m", "onnxguard", "predict", str(bundle), "--input", str(source)],
        capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "--output" in bad.stderr and "Traceback" not in bad.stderr
