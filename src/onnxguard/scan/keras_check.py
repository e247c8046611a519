"""Keras v3 ``.keras`` archives: a ZIP of ``config.json``, ``metadata.json`` and weights.

Loading deserialises ``config.json``: a ``Lambda`` layer (or any ``__lambda__`` object) carries
marshalled Python bytecode that runs on load (CVE-2024-3660, and ``safe_mode`` bypasses since),
and every object names the module it is imported from (``module``) and the registry key of a
custom object (``registered_name`` ``"package>Name"``) — a module outside Keras is code that
loading imports.  The HDF5 weights member is handed to the HDF5 check like any other member.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from onnxguard.scan._context import Blob, Sink, Unscannable, join_location
from onnxguard.scan._pickle_policy import is_dangerous_global
from onnxguard.scan._rules import Severity

_KERAS_MODULES = ("keras", "tf_keras")
_MAX_CONFIG_BYTES = 64 << 20
_MAX_DEPTH = 200


def is_keras_archive(members: Mapping[str, Blob]) -> bool:
    """A Keras v3 archive has ``config.json`` next to ``metadata.json`` or the weights file."""
    return "config.json" in members and (
        "metadata.json" in members or "model.weights.h5" in members
    )


def check_keras_archive(members: Mapping[str, Blob], sink: Sink, file: str, location: str) -> None:
    """Parse ``config.json`` and report Lambda layers and objects imported from outside Keras."""
    blob = members["config.json"]
    where = join_location(location, "zip member config.json")
    if blob.size > _MAX_CONFIG_BYTES:
        raise Unscannable(f"{where}: Keras config of {blob.size:,} bytes")
    with blob.open() as fh:
        raw = fh.read()
    try:
        config = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Unscannable(f"{where}: Keras config is not JSON ({exc})") from exc
    for path, obj in _objects(config, "", 0):
        _check_object(obj, sink, file, join_location(where, path or "root"))


def _objects(data: Any, path: str, depth: int) -> Iterator[tuple[str, dict[str, Any]]]:
    if depth > _MAX_DEPTH:
        raise Unscannable("Keras config nests deeper than the scanner follows")
    if isinstance(data, dict):
        if "class_name" in data or "module" in data:
            yield path, data
        for key, value in data.items():
            yield from _objects(value, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _objects(value, f"{path}[{i}]", depth + 1)


def _check_object(obj: dict[str, Any], sink: Sink, file: str, where: str) -> None:
    class_name = obj.get("class_name")
    name = _layer_name(obj)
    if class_name in ("Lambda", "__lambda__"):
        sink.add(
            "FILE008",
            file,
            where,
            f"Keras {class_name} object{name}: marshalled Python code that runs on load",
        )
        return
    module = obj.get("module")
    if isinstance(module, str) and module and not _is_keras_module(module):
        target = obj.get("config") if isinstance(obj.get("config"), str) else class_name
        dangerous = is_dangerous_global(module, str(target or ""))
        sink.add(
            "FILE010",
            file,
            where,
            f"object{name} is imported from module {module!r} "
            f"({class_name!r}), outside Keras: loading imports it",
            severity=Severity.CRITICAL if dangerous else None,
        )
        return
    registered = obj.get("registered_name")
    if isinstance(registered, str) and ">" in registered:
        sink.add(
            "FILE010",
            file,
            where,
            f"object{name} is the custom registered object {registered!r}: loading needs "
            "and runs its code",
        )


def _is_keras_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _KERAS_MODULES)


def _layer_name(obj: dict[str, Any]) -> str:
    config = obj.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    return f" {name!r}" if isinstance(name, str) else ""
