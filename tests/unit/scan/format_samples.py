"""Generators for the formats beyond pickles: chat templates in configs, Keras v3, 7z, GGUF,
TensorFlow SavedModel, ZIP symlinks and encryption.  Written at test time, never loaded.

Benign counterparts (``make_clean_*``) are the false-alarm controls: real-world shapes of the
same formats that every scanner should pass.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

from unit.scan.chat_templates import LLAMA31_TOOLS, QWEN25_TOOLS, injections


def _write(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _payload_pickle() -> bytes:
    from unit.scan.attack_samples import payload_pickle

    return payload_pickle()


def _tokenizer_config(template: object) -> bytes:
    config = {
        "add_bos_token": True,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "model_max_length": 4096,
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": template,
    }
    return json.dumps(config, indent=2).encode()


# --- chat templates ------------------------------------------------------------------------------
def make_template_tokenizer_config(d: Path) -> Path:  # CVE-2024-34359
    template, _rule = injections()["cycler-init-globals"]
    return _write(d, "tokenizer_config.json", _tokenizer_config(template))


def make_template_named_list(d: Path) -> Path:
    template, _rule = injections()["attr-filter-chain"]
    named = [
        {"name": "default", "template": QWEN25_TOOLS},
        {"name": "tool_use", "template": template},
    ]
    return _write(d, "tokenizer_config.json", _tokenizer_config(named))


def make_template_obfuscated_attr(d: Path) -> Path:
    template, _rule = injections()["attr-name-printf-format"]
    return _write(d, "tokenizer_config.json", _tokenizer_config(template))


def make_template_jinja_file(d: Path) -> Path:
    template, _rule = injections()["subclasses-loop-popen"]
    return _write(d, "chat_template.jinja", template.encode())


def make_template_yaml(d: Path) -> Path:
    import yaml

    template, _rule = injections()["self-init-globals (CVE-2024-34359)"]
    text = yaml.safe_dump({"model": {"name": "demo", "chat_template": template}})
    return _write(d, "config.yaml", text.encode())


def gguf_bytes(metadata: dict[str, str]) -> bytes:
    """A GGUF v3 header with string metadata and no tensors."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata))
    for key, value in metadata.items():
        k, v = key.encode(), value.encode()
        out += struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v
    return out


def make_template_gguf(d: Path) -> Path:
    template, _rule = injections()["lipsum-globals"]
    meta = {"general.architecture": "llama", "tokenizer.chat_template": template}
    return _write(d, "model.gguf", gguf_bytes(meta))


def make_clean_tokenizer_config(d: Path) -> Path:
    return _write(d, "tokenizer_config.json", _tokenizer_config(LLAMA31_TOOLS))


def make_clean_gguf(d: Path) -> Path:
    meta = {"general.architecture": "qwen2", "tokenizer.chat_template": QWEN25_TOOLS}
    return _write(d, "model.gguf", gguf_bytes(meta))


# --- Keras v3 ------------------------------------------------------------------------------------
def _keras_zip(layers: list[dict[str, object]]) -> bytes:
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "sequential", "layers": layers},
        "registered_name": None,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.6.0"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    return buf.getvalue()


def _dense() -> dict[str, object]:
    return {
        "module": "keras.layers",
        "class_name": "Dense",
        "config": {
            "name": "dense",
            "units": 2,
            "kernel_initializer": {
                "module": "keras.initializers",
                "class_name": "GlorotUniform",
                "config": {"seed": None},
                "registered_name": None,
            },
        },
        "registered_name": None,
    }


def make_keras_v3_lambda(d: Path) -> Path:  # CVE-2024-3660 in the v3 format
    code = {"class_name": "__lambda__", "config": {"code": "4wEAAAAAAAAA", "defaults": None}}
    lam = {
        "module": "keras.layers",
        "class_name": "Lambda",
        "config": {"name": "lambda", "function": code},
        "registered_name": None,
    }
    return _write(d, "model.keras", _keras_zip([_dense(), lam]))


def make_keras_v3_external_module(d: Path) -> Path:
    evil = {
        "module": "os",
        "class_name": "function",
        "config": "system",
        "registered_name": "function",
    }
    layer = _dense()
    layer["config"] = {"name": "dense", "units": 2, "activation": evil}  # type: ignore[assignment]
    return _write(d, "model.keras", _keras_zip([layer]))


def make_clean_keras_v3(d: Path) -> Path:
    return _write(d, "model.keras", _keras_zip([_dense()]))


# --- ZIP links and encryption --------------------------------------------------------------------
def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = 0o120777 << 16
    return info


def make_zip_symlink_passwd(d: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README.txt", "weights inside")
        zf.writestr(_symlink_info("weights.bin"), "/etc/passwd")
    return _write(d, "weights.zip", buf.getvalue())


def make_torch_zip_symlink(d: Path) -> Path:
    from unit.scan.attack_samples import _checkpoint_entries, _state_dict_pickle

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in _checkpoint_entries(_state_dict_pickle()).items():
            zf.writestr(name, data)
        zf.writestr(_symlink_info("archive/data/1"), "../evil.txt")
    return _write(d, "pytorch_model.bin", buf.getvalue())


def encrypted_zip(members: dict[str, bytes], password: bytes = b"secret") -> bytes:
    """A ZipCrypto-encrypted ZIP (stored members), written the way zip -e does."""
    out = io.BytesIO()
    central = b""
    for name, data in members.items():
        crc = zlib.crc32(data)
        header = bytes(11) + bytes([(crc >> 24) & 0xFF])  # 12-byte encryption header
        body = _zipcrypto(header + data, password)
        offset = out.tell()
        fields = struct.pack("<HHHHHIII", 20, 1, 0, 0, 0, crc, len(body), len(data))
        out.write(b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name.encode())
        out.write(body)
        central += (
            b"PK\x01\x02"
            + struct.pack("<HHHHHHIII", 20, 20, 1, 0, 0, 0, crc, len(body), len(data))
            + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, offset)
            + name.encode()
        )
    start = out.tell()
    out.write(central)
    count = len(members)
    out.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, len(central), start, 0))
    return out.getvalue()


def _zipcrypto(data: bytes, password: bytes) -> bytes:
    keys = [0x12345678, 0x23456789, 0x34567890]

    def crc_byte(crc: int, byte: int) -> int:
        return zlib.crc32(bytes([byte]), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    def update(byte: int) -> None:
        keys[0] = crc_byte(keys[0], byte)
        keys[1] = (keys[1] + (keys[0] & 0xFF)) & 0xFFFFFFFF
        keys[1] = (keys[1] * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = crc_byte(keys[2], keys[1] >> 24)

    for byte in password:
        update(byte)
    out = bytearray()
    for byte in data:
        temp = (keys[2] | 2) & 0xFFFF
        out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(out)


def make_clean_encrypted_zip(d: Path) -> Path:
    return _write(d, "vocab.zip", encrypted_zip({"vocab.txt": b"hello\nworld\n" * 20}))


# --- 7z ------------------------------------------------------------------------------------------
def make_7z_pickle(d: Path) -> Path:  # nullifAI: a pickle inside 7z
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        archive.writestr(_payload_pickle(), "archive/data.pkl")
    return _write(d, "pytorch_model.bin", buf.getvalue())


def make_clean_7z(d: Path) -> Path:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        archive.writestr(b'{"vocab_size": 30522}', "config.json")
    return _write(d, "model.7z", buf.getvalue())


# --- TensorFlow SavedModel -----------------------------------------------------------------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _node(name: str, op: str) -> bytes:
    return _field(1, name.encode()) + _field(2, op.encode())


def saved_model_bytes(ops: list[tuple[str, str]], function_ops: list[tuple[str, str]]) -> bytes:
    graph = b"".join(_field(1, _node(n, o)) for n, o in ops)
    if function_ops:
        signature = _field(1, _field(1, b"__inference_fn"))
        function = signature + b"".join(_field(3, _node(n, o)) for n, o in function_ops)
        graph += _field(2, _field(1, function))
    meta = _field(2, graph)
    return _varint(1 << 3 | 0) + _varint(1) + _field(2, meta)


def _saved_model(d: Path, ops: list[tuple[str, str]], fn_ops: list[tuple[str, str]]) -> Path:
    _write(d, "saved_model.pb", saved_model_bytes(ops, fn_ops))
    _write(d, "fingerprint.pb", _varint(1 << 3) + _varint(12345) + _varint(2 << 3) + _varint(7))
    _write(d, "variables/variables.index", b"\x00\x01\x02\x03" * 8)
    _write(d, "variables/variables.data-00000-of-00001", bytes(range(256)))
    return d


def make_savedmodel_pyfunc(d: Path) -> Path:
    ops = [("x", "Placeholder"), ("call", "StatefulPartitionedCall")]
    return _saved_model(d, ops, [("py", "EagerPyFunc"), ("add", "AddV2")])


def make_savedmodel_readfile(d: Path) -> Path:
    ops = [("path", "Const"), ("read", "ReadFile"), ("out", "Identity")]
    return _saved_model(d, ops, [])


def make_savedmodel_keras_lambda(d: Path) -> Path:  # Keras 2 SavedModel, CVE-2024-3660
    _saved_model(d, [("x", "Placeholder"), ("y", "StatefulPartitionedCall")], [])
    layer = {"class_name": "Lambda", "config": {"name": "l", "function": ["4wEAAAAA", None]}}
    metadata = _field(1, _field(2, json.dumps({"class_name": "Functional", "layers": [layer]})
                                .encode()))  # fmt: skip
    _write(d, "keras_metadata.pb", metadata)
    return d


def make_clean_savedmodel(d: Path) -> Path:
    ops = [("x", "Placeholder"), ("w", "VarHandleOp"), ("y", "MatMul"), ("save", "SaveV2")]
    return _saved_model(d, ops, [("add", "AddV2")])
