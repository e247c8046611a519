"""Configuration, chat-template and custom-code checks: onnxguard never runs code that ships
with a model.

Transformers runs Python from the model repository when a config maps classes to it
(``auto_map``, ``custom_pipelines``) and the caller passes ``trust_remote_code=True``; we never
do, so such a config is a finding (the model cannot be built as intended), and so is any Python,
compiled Python or native code file in the directory.  Chat templates are code of another kind:
every ``chat_template`` in a JSON or YAML config, and every standalone ``.jinja`` file, goes
through :mod:`onnxguard.scan.templates`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from onnxguard.scan._context import Blob, Sink, join_location
from onnxguard.scan.templates import check_template

_MAX_JSON_BYTES = 256 << 20
_REMOTE_CODE_KEYS = {"auto_map": "CFG001", "custom_pipelines": "CFG003"}
TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2", ".template")
_YAML_SUFFIXES = (".yaml", ".yml")
_MAX_DEPTH = 64


def scan_text(blob: Blob, sink: Sink, file: str, location: str = "", name: str = "") -> str:
    """Check a text file; JSON and YAML configs are parsed, templates analysed.

    Returns the label recorded for the file: ``"json"``, ``"yaml"``, ``"jinja"`` or ``"text"``.
    """
    lower = (name or file).lower()
    if lower.endswith(TEMPLATE_SUFFIXES):
        check_template(_read_text(blob), sink, file, location)
        return "jinja"
    if lower.endswith(_YAML_SUFFIXES):
        return _scan_yaml(blob, sink, file, location)
    head = blob.head(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith((b"{", b"[")) or blob.size > _MAX_JSON_BYTES:
        return "text"
    try:
        data = json.loads(_read_text(blob))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "text"  # not JSON after all: nothing loads it as a config
    if isinstance(data, dict):
        check_config(data, sink, file, location)
    check_templates_in(data, sink, file, location)
    return "json"


def _read_text(blob: Blob) -> str:
    with blob.open() as fh:
        return fh.read(_MAX_JSON_BYTES).decode("utf-8-sig", "replace")


def _scan_yaml(blob: Blob, sink: Sink, file: str, location: str) -> str:
    import yaml

    if blob.size > _MAX_JSON_BYTES:
        return "text"
    try:
        documents = list(yaml.safe_load_all(_read_text(blob)))
    except (yaml.YAMLError, RecursionError):
        return "text"  # nothing loads it as YAML either
    for document in documents:
        check_templates_in(document, sink, file, location)
    return "yaml"


def check_templates_in(data: Any, sink: Sink, file: str, location: str = "") -> None:
    """Analyse every chat template in a parsed config (a string, or a list of named ones)."""
    for key_path, template in _templates(data, "", 0, set()):
        check_template(template, sink, file, join_location(location, f"key {key_path}"))


def _templates(data: Any, path: str, depth: int, seen: set[int]) -> Iterator[tuple[str, str]]:
    """Walk dicts and lists once each: YAML aliases make a "billion laughs" graph, not a tree."""
    if depth > _MAX_DEPTH or not isinstance(data, dict | list) or id(data) in seen:
        return
    seen.add(id(data))
    if isinstance(data, list):
        for i, value in enumerate(data):
            yield from _templates(value, f"{path}[{i}]", depth + 1, seen)
        return
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if _is_template_key(key) and isinstance(value, str):
            yield where, value
        elif key == "chat_template" and isinstance(value, list):
            for i, entry in enumerate(value):
                if isinstance(entry, dict) and isinstance(entry.get("template"), str):
                    yield f"{where}[{entry.get('name', i)!s}]", entry["template"]
        else:
            yield from _templates(value, where, depth + 1, seen)


def _is_template_key(key: Any) -> bool:
    return isinstance(key, str) and (key == "chat_template" or key.endswith("_template"))


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
