"""The hash-chained audit log: durable appends, rotation, and tamper detection."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
from pathlib import Path

import pytest

from onnxguard.serve.audit import (
    GENESIS,
    AuditLog,
    AuditLogError,
    canonical,
    hash_inputs,
    record_hash,
    rotated_files,
    verify_chain,
)


def _write(path: Path, requests: int, **options: int) -> None:
    log = AuditLog(path, **options)
    log.open()
    for i in range(requests):
        log.append_sync({"request_id": f"r{i}", "key_id": "alice", "status": 200})
    log.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_records_chain_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 5)
    records = [json.loads(line) for line in _lines(path)]
    assert [r["type"] for r in records] == ["file", "start"] + ["request"] * 5 + ["stop"]
    assert records[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"] and after["seq"] == before["seq"] + 1
    assert all(r["hash"] == record_hash(r) for r in records)
    report = verify_chain(path)
    assert report.ok and report.complete and report.closed
    assert (report.records, report.requests, report.head) == (8, 5, records[-1]["hash"])


def test_a_restart_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 2)
    _write(path, 3)
    report = verify_chain(path)
    assert report.ok and report.requests == 5
    assert [json.loads(line)["type"] for line in _lines(path)].count("start") == 2


def test_edited_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 5)
    lines = _lines(path)
    lines[3] = lines[3].replace('"status":200', '"status":201')
    path.write_text("\n".join(lines) + "\n")
    report = verify_chain(path)
    assert not report.ok and "edited" in report.problems[0] and "line 4" in report.problems[0]


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 5)
    lines = _lines(path)
    record = json.loads(lines[3])
    record["key_id"] = "mallory"
    record["hash"] = record_hash(record)
    lines[3] = canonical(record)
    path.write_text("\n".join(lines) + "\n")
    report = verify_chain(path)
    assert not report.ok and "line 5" in report.problems[0] and "chain broken" in report.problems[0]


@pytest.mark.parametrize("index", [0, 1, 4, 7])
def test_deleted_record_is_detected(tmp_path: Path, index: int) -> None:
    path = tmp_path / "audit.log"
    _write(path, 5)
    lines = _lines(path)
    del lines[index]
    path.write_text("\n".join(lines) + "\n")
    report = verify_chain(path)
    if index == 7:  # the final stop record: the tail cannot be checked, but it shows as open
        assert report.ok and not report.closed
    else:
        assert not report.ok


def test_reordered_and_non_canonical_lines_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 4)
    lines = _lines(path)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_text("\n".join(lines) + "\n")
    assert not verify_chain(path).ok
    _write(path2 := tmp_path / "b.log", 2)
    lines = _lines(path2)
    lines[2] = json.dumps(json.loads(lines[2]), indent=1).replace("\n", "")
    path2.write_text("\n".join(lines) + "\n")
    report = verify_chain(path2)
    assert not report.ok and "canonical" in report.problems[0]


def test_torn_tail_refuses_to_open_and_fails_verification(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 2)
    path.write_bytes(path.read_bytes()[:-10])
    assert not verify_chain(path).ok
    with pytest.raises(AuditLogError, match="partial"):
        AuditLog(path).open()


def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 40, max_bytes=2000)
    rotated = rotated_files(path)
    assert len(rotated) >= 2
    report = verify_chain(path)
    assert report.ok and report.complete and report.requests == 40
    assert len(report.files) == len(rotated) + 1
    first = json.loads(_lines(path)[0])
    assert first["type"] == "file" and first["previous_file"] == rotated[-1].name


def test_deleting_a_rotated_file_is_detected_but_pruning_is_not_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 40, max_bytes=2000)
    rotated = rotated_files(path)
    rotated[1].unlink()  # a file in the middle
    assert not verify_chain(path).ok
    rotated[0].unlink()  # and the oldest: the chain now starts at a file nobody pruned
    report = verify_chain(path)
    assert not report.ok and "not pruned" in " ".join(report.problems)

    pruned = tmp_path / "pruned" / "audit.log"
    _write(pruned, 60, max_bytes=2000, keep=2)
    assert len(rotated_files(pruned)) == 2
    report = verify_chain(pruned)
    assert report.ok and not report.complete and report.requests < 60


def test_async_appends_are_grouped_and_all_durable(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.open()

    async def many() -> None:
        await asyncio.gather(*(log.append({"request_id": str(i)}) for i in range(50)))

    asyncio.run(many())
    log.close()
    ids = [json.loads(line).get("request_id") for line in _lines(path)]
    assert sorted(i for i in ids if i is not None) == sorted(str(i) for i in range(50))
    assert verify_chain(path).ok


def test_a_failed_write_fails_closed_and_leaves_no_phantom_record(tmp_path: Path) -> None:
    """ENOSPC after part of a record reached the file: the partial bytes are cut off, nothing
    refused is written later (not even at close), and the chain still verifies."""
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.open()
    log.append_sync({"request_id": "served"})
    good_size = path.stat().st_size

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        os.write(fd, bytes(data[:10]))  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    log._write = disk_full
    with pytest.raises(AuditLogError, match="No space"):
        log.append_sync({"request_id": "refused-1"})
    assert not log.healthy
    log._write = os.write  # the disk has room again: still nothing is written
    with pytest.raises(AuditLogError, match="failed earlier"):
        log.append_sync({"request_id": "refused-2"})
    log.close()
    assert path.stat().st_size == good_size
    text = path.read_text()
    assert "refused" not in text and '"served"' in text
    assert verify_chain(path).ok


def test_hash_inputs_is_length_prefixed() -> None:
    assert hash_inputs(["ab", "c"]) != hash_inputs(["a", "bc"])
    assert hash_inputs(["x"]) == hash_inputs(["x"])
    assert len(hash_inputs([])) == 64


def test_verify_missing_log(tmp_path: Path) -> None:
    from onnxguard.serve.audit import AuditChainError

    with pytest.raises(AuditChainError):
        verify_chain(tmp_path / "none.log")
