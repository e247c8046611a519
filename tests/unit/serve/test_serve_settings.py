"""Server settings: sizes, rate limits, and the combinations refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxguard.errors import UsageError
from onnxguard.serve.settings import BatchSettings, Limits, RateLimit, ServeConfig, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("512KiB", 512 * 1024),
        ("1MB", 1_000_000),
        ("1MiB", 1024 * 1024),
        ("2 gib", 2 * 1024**3),
        ("10b", 10),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "1 parsec", "-1", "1.5.2MB"])
def test_parse_size_refuses_garbage(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "requests", "period"),
    [
        ("100/minute", 100, 60.0),
        ("10/s", 10, 1.0),
        ("5000/hour", 5000, 3600.0),
        ("7/day", 7, 86400.0),
        ("3/minutes", 3, 60.0),
    ],
)
def test_rate_limit_parse(text: str, requests: int, period: float) -> None:
    limit = RateLimit.parse(text)
    assert limit == RateLimit(requests, period)
    assert RateLimit.parse(str(limit)) == limit


def test_rate_limit_off() -> None:
    assert RateLimit.parse("off") is None


@pytest.mark.parametrize("text", ["100", "0/minute", "x/minute", "10/ms", "10/fortnight"])
def test_rate_limit_refuses_garbage(text: str) -> None:
    with pytest.raises(UsageError):
        RateLimit.parse(text)


def test_defaults_are_safe(tmp_path: Path) -> None:
    config = ServeConfig(bundle=tmp_path, api_keys_file=tmp_path / "keys")
    config.check()
    assert config.host == "127.0.0.1" and config.loopback
    assert config.cors_origins == ()
    assert config.rate_limit is not None
    assert config.limits.max_body_bytes == 1024 * 1024
    assert config.scheme == "http"


def test_keys_are_required_unless_explicitly_waived(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="API keys"):
        ServeConfig(bundle=tmp_path).check()
    ServeConfig(bundle=tmp_path, allow_unauthenticated=True).check()
    with pytest.raises(UsageError, match="exclude"):
        ServeConfig(
            bundle=tmp_path, api_keys_file=tmp_path / "k", allow_unauthenticated=True
        ).check()


@pytest.mark.parametrize("origin", ["*", "example.com", "https://a.example/path"])
def test_cors_wildcards_and_junk_refused(tmp_path: Path, origin: str) -> None:
    with pytest.raises(UsageError, match="CORS"):
        ServeConfig(bundle=tmp_path, allow_unauthenticated=True, cors_origins=(origin,)).check()


def test_bad_model_name_and_limits_refused(tmp_path: Path) -> None:
    base = {"bundle": tmp_path, "allow_unauthenticated": True}
    with pytest.raises(UsageError):
        ServeConfig(**base, model_name="../etc").check()  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        ServeConfig(**base, limits=Limits(max_texts=0)).check()  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        ServeConfig(**base, batching=BatchSettings(min_fill=1.5)).check()  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="never be queued"):
        ServeConfig(**base, batching=BatchSettings(queue_size=10)).check()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.4", False),
        ("example.com", False),
    ],
)
def test_loopback_detection(tmp_path: Path, host: str, loopback: bool) -> None:
    assert ServeConfig(bundle=tmp_path, host=host).loopback is loopback
