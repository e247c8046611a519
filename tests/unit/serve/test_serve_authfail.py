"""Failed authentications: a per-address budget and a bounded audit digest."""

from __future__ import annotations

import pytest

from onnxguard.serve import _authfail
from onnxguard.serve._authfail import AuthFailures
from onnxguard.serve._http import error_body, shown


def make(now: list[float], per_minute: int = 3) -> AuthFailures:
    return AuthFailures(per_minute, 60.0, clock=lambda: now[0], wall=lambda: f"t{now[0]:g}")


def test_the_budget_is_per_address() -> None:
    now = [0.0]
    failures = make(now)
    assert [failures.charge("a").allowed for _ in range(4)] == [True, True, True, False]
    assert failures.charge("b").allowed  # another address has its own budget
    assert failures.charge("a").retry_after_s >= 1


def test_first_failure_in_full_the_rest_counted_then_summarised() -> None:
    now = [0.0]
    failures = make(now)
    assert failures.note("a", 401) == (True, [])
    for _ in range(5):
        assert failures.note("a", 429) == (False, [])
    assert failures.due() == []  # the window has not ended
    now[0] = 61.0
    full, due = failures.note("a", 401)
    assert full  # a new window starts with a full record
    assert due == [
        {"client": "a", "count": 5, "statuses": {"429": 5}, "since": "t0", "until": "t61"}
    ]
    failures.note("a", 401)
    assert [d["count"] for d in failures.due(everything=True)] == [1]
    assert failures.due(everything=True) == []


def test_the_digest_is_bounded_in_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_authfail, "MAX_ADDRESSES", 2)
    now = [0.0]
    failures = make(now)
    for client in ("a", "b"):
        failures.note(client, 401)
        failures.note(client, 401)
    _, due = failures.note("c", 401)  # "a" is written out early, with its count
    assert [(d["client"], d["count"]) for d in due] == [("a", 1)]


def test_echoed_names_are_bounded_and_escaped() -> None:
    assert shown("name") == "'name'"
    assert shown("\ud800\x00é") == "'\\ud800\\x00\\xe9'"
    assert shown("x" * 500).endswith("'...") and len(shown("x" * 500)) < 80
    assert error_body("bad \ud800").decode("ascii")  # never a UnicodeEncodeError
