"""Configuration and custom-code checks: onnxguard never runs code that ships with a model.

Transformers runs Python from the model repository when a config maps classes to it
(``auto_map``, ``custom_pipelines``) and the caller passes ``trust_remote_code=True``; we never
do, so such a config is a finding (the model cannot be built as intended), and so is any Python,
compiled Python or native code file in the directory.
"""

from __future__ import annotations

import json
from typing import Any

from onnxguard.scan._context import Blob, Sink

_MAX_JSON_BYTES = 256 << 20
_REMOTE_CODE_KEYS = {"auto_map": "CFG001", "custom_pipelines": "CFG003"}


def scan_text(blob: Blob, sink: Sink, file: str, location: str = "") -> str:
    """Check a text file; JSON configs are parsed.  Returns ``"json"`` or ``"text"``."""
    head = blob.head(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith((b"{", b"[")) or blob.size > _MAX_JSON_BYTES:
        return "text"
    with blob.open() as fh:
        try:
            data = json.loads(fh.read().decode("utf-8-sig"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return "text"  # not JSON after all: nothing loads it as a config
    if isinstance(data, dict):
        check_config(data, sink, file, location)
    return "json"


def check_config(data: dict[str, Any], sink: Sink, file: str, location: str = "") -> None:
    """Report keys that make transformers import code from the repository."""
    for key, rule in _REMOTE_CODE_KEYS.items():
        value = data.get(key)
        if not value:
            continue
        targets = _code_refs(value)
        shown = ", ".join(targets[:4]) + (" ..." if len(targets) > 4 else "")
        sink.add(
            rule,
            file,
            f"{location}, key {key}" if location else f"key {key}",
            f"`{key}` points to code in the repository ({shown or value!r}); loading "
            "needs trust_remote_code=True",
        )


def _code_refs(value: Any) -> list[str]:
    """Flatten the module.Class strings of an auto_map / custom_pipelines value."""
    refs: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            refs.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return sorted(set(refs))
