"""API keys: the file format (with and without scopes), constant-time lookup, reloads."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from onnxguard.errors import ServeError, UsageError
from onnxguard.serve import auth
from onnxguard.serve.auth import (
    KeyStore,
    append_key_line,
    bearer_token,
    generate_secret,
    key_line,
    parse_keys,
    read_keys_file,
)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def test_generated_secrets_are_long_random_and_distinct() -> None:
    secrets = {generate_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(s.startswith("ogk_") and len(s) >= 40 for s in secrets)


def test_key_line_default_scope_has_no_suffix() -> None:
    secret = generate_secret()
    assert key_line("alice", secret) == f"alice:{_digest(secret)}"
    assert key_line("ops", secret, ["metrics", "infer"]) == f"ops:{_digest(secret)}:infer,metrics"


def test_parse_plain_lines_get_the_infer_scope_and_suffix_lines_their_scopes() -> None:
    a, b = generate_secret(), generate_secret()
    text = f"# comment\n\nalice:{_digest(a)}\n  ops:{_digest(b)}:metrics  \n"
    keys = parse_keys(text)
    assert [(k.key_id, k.scopes) for k in keys] == [
        ("alice", frozenset({"infer"})),
        ("ops", frozenset({"metrics"})),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "alice",
        "alice:nothex",
        "alice:" + "a" * 63,
        ":" + "a" * 64,
        "a b:" + "a" * 64,
        "alice:" + "a" * 64 + ":superuser",
        "alice:" + "a" * 64 + ":",
        "alice:" + "a" * 64 + ":infer:",
        "alice:" + "a" * 64 + ":infer:bad name",
        "alice:" + "a" * 64 + ":infer:x:y",
    ],
)
def test_malformed_lines_refuse_the_whole_file(line: str) -> None:
    with pytest.raises(ServeError):
        parse_keys(f"good:{'b' * 64}\n{line}\n")


def test_duplicate_ids_refused() -> None:
    with pytest.raises(ServeError, match="twice"):
        parse_keys(f"a:{'1' * 64}\na:{'2' * 64}\n")


def test_authenticate_right_wrong_and_malformed() -> None:
    secret, other = generate_secret(), generate_secret()
    store = KeyStore(
        parse_keys(key_line("alice", secret) + "\n" + key_line("ops", other, ["metrics"]))
    )
    principal = store.authenticate(f"Bearer {secret}")
    assert principal is not None and principal.key_id == "alice"
    assert principal.scopes == frozenset({"infer"})
    assert store.authenticate(f"bearer   {other}").key_id == "ops"  # type: ignore[union-attr]
    for header in (
        None,
        "",
        secret,
        f"Basic {secret}",
        f"Bearer {secret}x",
        "Bearer short",
        f"Bearer {generate_secret()}",
        "Bearer " + "x" * 600,
    ):
        assert store.authenticate(header) is None


def test_every_digest_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the number of comparisons does not depend on which key matched."""
    secrets = [generate_secret() for _ in range(5)]
    store = KeyStore(parse_keys("\n".join(key_line(f"k{i}", s) for i, s in enumerate(secrets))))
    calls: list[int] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    counts = []
    for secret in (secrets[0], secrets[4], generate_secret()):
        calls.clear()
        store.authenticate(f"Bearer {secret}")
        counts.append(len(calls))
    assert counts == [5, 5, 5]


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abcdefghijklmnopq") == "abcdefghijklmnopq"
    assert bearer_token("Bearer abc def ghijklmnopqrstuv") is None
    assert bearer_token("Bearer \x00bcdefghijklmnopq") is None


def test_read_keys_file_checks(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    with pytest.raises(ServeError, match="cannot read"):
        read_keys_file(path)
    path.write_text("# nothing yet\n")
    path.chmod(0o600)
    with pytest.raises(ServeError, match="no keys"):
        read_keys_file(path)
    path.write_text(key_line("alice", generate_secret()) + "\n")
    path.chmod(0o664)
    with pytest.raises(ServeError, match="writable"):
        read_keys_file(path)
    path.chmod(0o644)
    assert [k.key_id for k in read_keys_file(path)] == ["alice"]


def test_append_key_line_creates_private_file_and_refuses_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    append_key_line(path, key_line("alice", generate_secret()))
    assert (path.stat().st_mode & 0o777) == 0o600
    path.write_text(path.read_text().rstrip("\n"))  # a file without a final newline
    append_key_line(path, key_line("bob", generate_secret()))
    assert [k.key_id for k in read_keys_file(path)] == ["alice", "bob"]
    with pytest.raises(UsageError, match="already"):
        append_key_line(path, key_line("alice", generate_secret()))


def test_store_reloads_a_changed_file_and_a_bad_one_revokes_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "_RELOAD_INTERVAL_S", 0.0)
    old, new = generate_secret(), generate_secret()
    path = tmp_path / "keys.txt"
    path.write_text(key_line("old", old) + "\n")
    path.chmod(0o600)
    store = KeyStore.from_file(path)
    assert store.authenticate(f"Bearer {old}") is not None
    path.write_text(key_line("new", new) + "\n")  # revoke "old", add "new"
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert store.authenticate(f"Bearer {old}") is None
    assert store.authenticate(f"Bearer {new}").key_id == "new"  # type: ignore[union-attr]
    path.write_text("broken line\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
    assert store.authenticate(f"Bearer {new}") is None  # fail closed: nothing is in force
    path.write_text(key_line("new", new) + "\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 3_000_000_000))
    assert store.authenticate(f"Bearer {new}") is not None  # a good file restores the keys


@pytest.mark.parametrize("change", ["empty", "comments", "deleted", "loose"])
def test_emptying_or_deleting_the_keys_file_revokes_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    monkeypatch.setattr(auth, "_RELOAD_INTERVAL_S", 0.0)
    secret = generate_secret()
    path = tmp_path / "keys.txt"
    path.write_text(key_line("alice", secret) + "\n")
    path.chmod(0o600)
    store = KeyStore.from_file(path)
    assert store.authenticate(f"Bearer {secret}") is not None
    if change == "empty":
        path.write_text("")
    elif change == "comments":
        path.write_text("# every key was removed\n\n")
    elif change == "deleted":
        path.unlink()
    else:
        path.chmod(0o666)
    if path.exists():
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert store.authenticate(f"Bearer {secret}") is None
    assert len(store) == 0
