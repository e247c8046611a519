"""The guard's pure parts: route classes, and gzip/deflate decoding bounded in bytes and members."""

from __future__ import annotations

import gzip
import zlib

import pytest

from onnxguard.serve._codec import MAX_MEMBERS
from onnxguard.serve._codec import decode_body as _decode
from onnxguard.serve._guard import classify
from onnxguard.serve._http import ApiError
from onnxguard.serve.settings import DocsMode

LIMIT = 1024


@pytest.mark.parametrize(
    ("path", "label", "scope", "audited"),
    [
        ("/v2/health/live", "/v2/health/live", None, False),
        ("/v2/health/ready", "/v2/health/ready", None, False),
        ("/metrics", "/metrics", "metrics", True),
        ("/v1/classify", "/v1/classify", "infer", True),
        ("/v2/models/m/infer", "/v2/models/{name}/infer", "infer", True),
        (
            "/v2/models/m/versions/1/ready",
            "/v2/models/{name}/versions/{version}/ready",
            "infer",
            True,
        ),
        ("/v2/models/anything-at-all", "/v2/models/{name}", "infer", True),
        ("/openapi.json", "/openapi.json", "infer", True),
        ("/../../etc/passwd", "other", "infer", True),
        ("/v2/models/a/b/c/d", "other", "infer", True),
    ],
)
def test_route_classes(path: str, label: str, scope: str | None, audited: bool) -> None:
    route = classify(path, DocsMode.ON)
    assert (route.label, route.scope, route.audited) == (label, scope, audited)


def test_public_docs_need_no_key() -> None:
    assert classify("/docs", DocsMode.PUBLIC).scope is None
    assert classify("/docs", DocsMode.ON).scope == "infer"


def test_identity_gzip_deflate_and_raw_deflate() -> None:
    data = b'{"texts": ["hello"]}'
    assert _decode(gzip.compress(data), "gzip", LIMIT) == data
    assert _decode(gzip.compress(data), "x-gzip", LIMIT) == data
    assert _decode(zlib.compress(data), "deflate", LIMIT) == data
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert _decode(raw.compress(data) + raw.flush(), "deflate", LIMIT) == data
    assert _decode(gzip.compress(data) + gzip.compress(data), "gzip", LIMIT) == data * 2
    assert _decode(gzip.compress(zlib.compress(data)), "deflate, gzip", LIMIT) == data


@pytest.mark.parametrize("size", [LIMIT + 1, 100 * 1024 * 1024])
def test_decompression_bombs_stop_at_the_limit(size: int) -> None:
    bomb = gzip.compress(b"\0" * size)
    with pytest.raises(ApiError) as caught:
        _decode(bomb, "gzip", LIMIT)
    assert caught.value.status == 413


def test_many_small_members_still_bounded() -> None:
    member = gzip.compress(b"a" * 100)
    with pytest.raises(ApiError) as caught:
        _decode(member * 20, "gzip", LIMIT)
    assert caught.value.status == 413


@pytest.mark.parametrize(
    ("body", "coding", "status"),
    [
        (b"not gzip at all", "gzip", 400),
        (gzip.compress(b"x" * 100)[:-12], "gzip", 400),
        (zlib.compress(b"x") + b"junk", "deflate", 400),
        (b"x", "br", 415),
        (b"x", "gzip, gzip, gzip", 415),
    ],
)
def test_bad_encodings(body: bytes, coding: str, status: int) -> None:
    with pytest.raises(ApiError) as caught:
        _decode(body, coding, LIMIT)
    assert caught.value.status == status


def test_a_body_of_empty_gzip_members_is_refused_after_the_member_cap() -> None:
    """50,000 empty members (under 1 MiB) once cost a second of event-loop time each."""
    body = gzip.compress(b"") * 50_000
    with pytest.raises(ApiError) as caught:
        _decode(body, "gzip", 1024 * 1024)
    assert caught.value.status == 400 and "member" in caught.value.message
    allowed = gzip.compress(b"ab") * MAX_MEMBERS
    assert _decode(allowed, "gzip", LIMIT) == b"ab" * MAX_MEMBERS
