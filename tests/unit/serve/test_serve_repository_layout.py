"""The repository's layout and policy rules, without a server (``serve/repository.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxguard.errors import RepositoryError
from onnxguard.serve.auth import generate_secret, key_line, parse_keys
from onnxguard.serve.repository import (
    VersionPolicy,
    fingerprint,
    is_repository,
    read_policies,
    scan_layout,
)


@pytest.mark.parametrize(
    ("policy", "available", "chosen"),
    [
        (VersionPolicy(), [3, 1, 2], [3]),
        (VersionPolicy("latest", latest=2), [3, 1, 2], [2, 3]),
        (VersionPolicy("all"), [2, 1], [1, 2]),
        (VersionPolicy("specific", versions=(1, 5)), [1, 2, 3], [1]),
        (VersionPolicy(), [], []),
    ],
)
def test_version_policies_choose_as_triton_does(
    policy: VersionPolicy, available: list[int], chosen: list[int]
) -> None:
    assert policy.choose(available) == chosen


def test_policies_are_read_strictly(tmp_path: Path) -> None:
    assert read_policies(tmp_path) == {}
    (tmp_path / "repository.toml").write_text(
        '[models.a]\npolicy = "specific"\nversions = [1, 3]\n[models.b]\nlatest = 2\n'
    )
    assert read_policies(tmp_path) == {
        "a": VersionPolicy("specific", versions=(1, 3)),
        "b": VersionPolicy("latest", latest=2),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.a\n", "cannot read"),
        ("[server]\nx = 1\n", "unknown section"),
        ('[models.a]\npolicy = "newest"\n', "policy 'newest' is unknown"),
        ("[models.a]\nlatest = 0\n", "latest must be"),
        ('[models.a]\npolicy = "specific"\n', "needs versions"),
        ("[models.a]\nversions = [1]\n", "only go with policy"),
        ('[models.a]\npolicy = "specific"\nversions = [0]\n', "positive integers"),
        ("[models.a]\nlatest = true\n", "latest must be"),
        ("[models.a]\nkeep = 1\n", "unknown key"),
        ('[models."bad name"]\n', "not a valid model table"),
    ],
)
def test_a_malformed_policy_file_says_what_is_wrong(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "repository.toml").write_text(text)
    with pytest.raises(RepositoryError) as raised:
        read_policies(tmp_path)
    assert message in raised.value.message
    assert raised.value.hint or "cannot read" in message


def test_only_integer_version_directories_count(tmp_path: Path) -> None:
    for path in ("m/1", "m/12", "m/.3.tmp", "m/03", "m/latest", "m/-1", "n/2", ".hidden/1",
                 "bad name/1"):
        (tmp_path / path).mkdir(parents=True)
    (tmp_path / "m" / "7").write_text("a file, not a version")
    (tmp_path / "n" / "5").symlink_to(tmp_path / "m" / "1")
    layout = scan_layout(tmp_path)
    assert {name: sorted(v) for name, v in layout.items()} == {"m": [1, 12], "n": [2]}
    assert is_repository(tmp_path)


def test_a_bundle_is_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "onnxguard.json").write_text("{}")
    (tmp_path / "m" / "1").mkdir(parents=True)
    assert not is_repository(tmp_path)
    assert not is_repository(tmp_path / "missing")


def test_fingerprint_changes_with_the_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    first = fingerprint(tmp_path)
    assert fingerprint(tmp_path) == first
    (tmp_path / "a").write_bytes(b"12")
    assert fingerprint(tmp_path) != first


def test_keys_can_be_restricted_to_models() -> None:
    line = key_line("team", generate_secret(), ["infer", "admin"], ["b", "a"])
    assert line.endswith(":admin,infer:a,b")
    (key,) = parse_keys(line)
    assert key.scopes == {"infer", "admin"} and key.models == {"a", "b"}
    (everything,) = parse_keys(key_line("all", generate_secret()))
    assert everything.models is None
