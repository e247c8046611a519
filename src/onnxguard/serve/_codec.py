"""Content-Encoding (gzip/deflate) decoding, bounded in output bytes, members and CPU.

A gzip body may hold many members; each one restarts the decoder, and a body of 50,000 empty
members (under 1 MiB) once cost a second of event-loop time.  Decoding here stops after
``MAX_MEMBERS`` members and ``limit`` output bytes, walks the input by offset (no copy of the
rest per member), and the guard runs it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import zlib

from onnxguard.serve._http import ApiError

MAX_MEMBERS = 16
"""Real clients send one gzip member; a few concatenated ones are allowed, thousands are not."""
MAX_CODINGS = 2


def decode_body(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo gzip/deflate content codings, never producing more than ``limit`` bytes."""
    codings = [c.strip() for c in encoding.split(",") if c.strip() and c.strip() != "identity"]
    if len(codings) > MAX_CODINGS:
        raise ApiError(415, "too many content codings")
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, limit, members=MAX_MEMBERS)
        elif coding == "deflate":
            try:
                body = _inflate(body, zlib.MAX_WBITS, limit)
            except ApiError as err:
                if err.status != 400:
                    raise
                body = _inflate(body, -zlib.MAX_WBITS, limit)  # raw deflate, as some clients send
        else:
            raise ApiError(415, "unsupported Content-Encoding: use gzip or deflate")
    return body


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"decompressed request body exceeds the limit of {limit} bytes", outcome="too_large"
    )


def _inflate(data: bytes, wbits: int, limit: int, members: int = 1) -> bytes:
    out = bytearray()
    view = memoryview(data)
    offset = 0
    for _ in range(members):
        decoder = zlib.decompressobj(wbits)
        pending = view[offset:]
        try:
            while True:
                out += decoder.decompress(pending, limit + 1 - len(out))
                if len(out) > limit:
                    raise _too_large(limit)
                if decoder.eof or not decoder.unconsumed_tail:
                    break
                pending = memoryview(decoder.unconsumed_tail)
        except zlib.error:
            raise ApiError(400, "compressed request body is corrupt") from None
        if not decoder.eof:
            raise ApiError(400, "compressed request body is truncated")
        offset = len(data) - len(decoder.unused_data)
        if offset >= len(data):
            return bytes(out)
    raise ApiError(400, f"compressed request body has more than {members} member(s)")
