"""Pickle checks: opcode-level stack simulation against an allowlist, nothing is ever unpickled.

The simulator walks the opcode stream the way ``pickle.load`` would and tracks, symbolically,
which strings, globals and call results sit on the stack and in the memo.  That resolves
``STACK_GLOBAL`` names built from memoised strings, sees calls whatever opcode makes them
(REDUCE, INST, OBJ, NEWOBJ, BUILD), and keeps going across the tricks that break blocklist
scanners: protocol-0 text pickles, several pickles in one file (legacy ``torch.save``), a payload
followed by a broken stream (nullifAI), dotted names that walk attributes (protocol 4).

Fail closed: a stream the walk cannot finish is high (PKL006/PKL007), never a pass, and the walk
itself has no limit a payload could hide behind — text arguments of any length are read to their
newline like ``pickle.load`` reads them (a 64 KiB line cap once stopped the walk in front of an
``os.system``), and FRAME lengths that disagree with the opcodes are reported (PKL010): the C and
Python unpicklers read such a stream differently.  joblib's uncompressed format interleaves raw
array bytes with the pickle; they are skipped exactly as joblib's reader skips them.

Policy: a global on the PyTorch state-dict allowlist (what ``torch.load(weights_only=True)``
accepts, plus numpy's array reconstruction) is fine; a known code-execution gadget is critical;
anything else is high, because importing it already runs module code.
"""

from __future__ import annotations

import _compat_pickle
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from onnxguard.scan._context import Sink, Unscannable, join_location
from onnxguard.scan._pickle_io import BIG_ARGS, NONE, OPAQUE, OPS, Opaque, Reader, read_arg
from onnxguard.scan._pickle_policy import (
    JOBLIB_ARRAY_WRAPPERS,
    is_dangerous_global,
    is_safe_global,
)


# --- symbolic values -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Str:
    value: str


@dataclass(frozen=True)
class _Int:
    value: int


@dataclass(eq=False)
class _Called(Opaque):
    """The result of calling something: the global called (when known) and its arguments."""

    target: _Global | None = None
    args: Any = None


@dataclass(eq=False)
class _Dict(Opaque):
    """A dict whose string keys are tracked (joblib's array wrapper state is one)."""

    items: dict[str, Any] = field(default_factory=dict)


_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPE = re.compile(r"[<>|=]?([a-zA-Z])(\d*)")
_DTYPE_SIZES = {"b": 1, "?": 1, "M": 8, "m": 8}
_SIZED_KINDS = frozenset("iufcSaVbBhHlLqQ")


class PickleError(Exception):
    """The stream is not a valid pickle at ``pos`` (what pickle.load would raise there)."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


class _TooLong(Exception):
    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def _normalize(module: str, name: str, protocol: int) -> tuple[str, str]:
    """Apply pickle's Python 2 name mapping (fix_imports) the way the unpickler does."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module, name


@dataclass
class PickleResult:
    """What one pickle (from PROTO/first opcode to STOP) contained."""

    start: int
    end: int = 0
    complete: bool = False
    protocol: int = 0
    opcodes: int = 0
    globals: dict[tuple[str, str], int] = field(default_factory=dict)
    calls: int = 0
    value: Any = None
    error: PickleError | None = None


@dataclass
class _Problems:
    """Findings of one pickle before they are reported (deduplicated by rule and subject)."""

    items: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)

    def add(self, rule: str, subject: str, pos: int, message: str) -> None:
        self.items.setdefault((rule, subject), (pos, message))


_LITERALS = frozenset(
    {
        "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "NEWTRUE", "NEWFALSE", "FLOAT",
        "BINFLOAT", "NEXT_BUFFER", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE", "PERSID",
    }
)  # fmt: skip
_INTS = frozenset(["INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"])
_UNICODE = frozenset(["SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"])
_STRINGS = frozenset(["STRING", "BINSTRING", "SHORT_BINSTRING"])
_NOOPS = frozenset(["PROTO", "FRAME", "READONLY_BUFFER"])


class _Machine:
    """One pickle's stack machine; symbolic, bounded, never imports or calls anything.

    ``step`` dispatches each opcode to a small handler: values, containers, memo, imports and
    calls are separate concerns, and each handler is what the unpickler does, minus the effect.
    """

    def __init__(self, reader: Reader, problems: _Problems, max_opcodes: int) -> None:
        self.reader = reader
        self.problems = problems
        self.max_opcodes = max_opcodes
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.result = PickleResult(start=reader.tell())
        self.frame_end: int | None = None
        self._handlers: dict[str, Callable[[Any, int], None]] = {
            "MARK": self._mark,
            "POP": self._pop_op,
            "POP_MARK": lambda _arg, _pos: self._pop_mark_op(),
            "DUP": self._dup,
            "NONE": lambda _arg, _pos: self.push(NONE),
            "EMPTY_DICT": lambda _arg, _pos: self.push(_Dict()),
            "DICT": self._dict,
            "SETITEM": self._setitem,
            "SETITEMS": self._setitems,
            "APPEND": self._append,
            "APPENDS": self._extend,
            "ADDITEMS": self._extend,
            "LIST": self._collection,
            "FROZENSET": self._collection,
            "TUPLE": lambda _arg, _pos: self.push(tuple(self.pop_mark())),
            "TUPLE1": self._tuple_n,
            "TUPLE2": self._tuple_n,
            "TUPLE3": self._tuple_n,
            "PUT": self._put,
            "BINPUT": self._put,
            "LONG_BINPUT": self._put,
            "MEMOIZE": self._memoize,
            "GET": self._get,
            "BINGET": self._get,
            "LONG_BINGET": self._get,
            "GLOBAL": self._global_op,
            "STACK_GLOBAL": self._stack_global,
            "INST": self._inst,
            "OBJ": self._obj,
            "REDUCE": self._reduce,
            "NEWOBJ": self._reduce,
            "NEWOBJ_EX": self._newobj_ex,
            "BUILD": self._build,
            "EXT1": self._ext,
            "EXT2": self._ext,
            "EXT4": self._ext,
            "BINPERSID": self._binpersid,
        }
        self._name = ""

    # --- stack primitives ------------------------------------------------------------------------
    def push(self, value: Any) -> None:
        self.stack.append(value)  # not a bound `self.stack.append`: MARK swaps the list

    def pop(self) -> Any:
        if not self.stack:
            raise ValueError("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise ValueError("MARK missing")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _need(self, n: int) -> None:
        if len(self.stack) < n:
            raise ValueError("stack underflow")

    # --- the walk --------------------------------------------------------------------------------
    def run(self) -> PickleResult:
        """Walk to STOP; a broken stream ends in ``result.error``, the opcode limit in _TooLong."""
        reader, result = self.reader, self.result
        while True:
            pos = reader.tell()
            if self.frame_end is not None and pos >= self.frame_end:
                self.frame_end = None
            code = reader.read(1)
            if not code:
                result.error = PickleError("stream ends before STOP", pos)
                return result
            op = OPS.get(code)
            if op is None:
                result.error = PickleError(f"invalid opcode {code!r}", pos)
                return result
            result.opcodes += 1
            if result.opcodes > self.max_opcodes:
                raise _TooLong(pos)
            try:
                arg = read_arg(reader, op)
                self._check_frame(op.name, pos)
                if self.step(op.name, arg, pos):
                    result.end = reader.tell()
                    result.complete = True
                    return result
            except (ValueError, KeyError, IndexError, UnicodeDecodeError, struct.error) as exc:
                result.error = PickleError(f"{op.name}: {exc}", pos)
                return result

    def step(self, name: str, arg: Any, pos: int) -> bool:
        """Apply one opcode to the symbolic state; True at STOP."""
        if name == "STOP":
            self.result.value = self.pop()
            return True
        self._name = name
        if name in _NOOPS:
            if name == "PROTO":
                self.result.protocol = int(arg)
            elif name == "FRAME":
                self._frame(int(arg), pos)
        elif name in _UNICODE:
            self.push(_Str(arg) if isinstance(arg, str) else OPAQUE)
        elif name in _STRINGS:  # Python 3 decodes py2 str as ASCII by default: it can name a module
            text = arg.decode("latin-1") if isinstance(arg, bytes) else arg
            self.push(_Str(text) if isinstance(text, str) else OPAQUE)
        elif name in _INTS:
            self.push(_Int(int(arg)) if isinstance(arg, int) else OPAQUE)
        elif name in _LITERALS:
            self.push(OPAQUE)
        else:
            self._handlers[name](arg, pos)
        return False

    # --- frames ----------------------------------------------------------------------------------
    def _frame(self, length: int, pos: int) -> None:
        here = self.reader.tell()
        if self.frame_end is not None and here <= self.frame_end:
            self._frame_problem(pos, "a FRAME starts before the previous frame ends")
        remaining = self.reader.end - here
        if length > remaining:
            self._frame_problem(pos, f"FRAME of {length:,} bytes but only {remaining:,} remain")
        self.frame_end = here + length

    def _check_frame(self, name: str, pos: int) -> None:
        end = self.reader.tell()
        if name != "FRAME" and self.frame_end is not None and pos < self.frame_end < end:
            self._frame_problem(
                pos, f"{name} at byte {pos} runs across the frame boundary at {self.frame_end}"
            )

    def _frame_problem(self, pos: int, detail: str) -> None:
        self.problems.add(
            "PKL010",
            f"frame@{pos}",
            pos,
            f"{detail}: the C and Python unpicklers read this stream differently "
            "(a parser differential that hides opcodes from scanners)",
        )

    # --- containers and memo ---------------------------------------------------------------------
    def _mark(self, _arg: Any, _pos: int) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _pop_op(self, _arg: Any, _pos: int) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def _pop_mark_op(self) -> None:
        self.pop_mark()

    def _dup(self, _arg: Any, _pos: int) -> None:
        self._need(1)
        self.push(self.stack[-1])

    def _dict(self, _arg: Any, _pos: int) -> None:
        items = self.pop_mark()
        target = _Dict()
        for key, value in zip(items[::2], items[1::2], strict=False):
            if isinstance(key, _Str):
                target.items[key.value] = value
        self.push(target)

    def _setitem(self, _arg: Any, _pos: int) -> None:
        value, key = self.pop(), self.pop()
        self._need(1)
        target = self.stack[-1]
        if isinstance(target, _Dict) and isinstance(key, _Str):
            target.items[key.value] = value

    def _setitems(self, _arg: Any, _pos: int) -> None:
        items = self.pop_mark()
        self._need(1)
        target = self.stack[-1]
        if isinstance(target, _Dict):
            for key, value in zip(items[::2], items[1::2], strict=False):
                if isinstance(key, _Str):
                    target.items[key.value] = value

    def _append(self, _arg: Any, _pos: int) -> None:
        self.pop()
        self._need(1)

    def _extend(self, _arg: Any, _pos: int) -> None:
        self.pop_mark()
        self._need(1)

    def _collection(self, _arg: Any, _pos: int) -> None:
        self.pop_mark()
        self.push(OPAQUE)

    def _tuple_n(self, _arg: Any, _pos: int) -> None:
        n = int(self._name[-1])
        items = [self.pop() for _ in range(n)][::-1]
        self.push(tuple(items))

    def _put(self, arg: Any, _pos: int) -> None:
        self._need(1)
        self.memo[int(arg)] = self.stack[-1]

    def _memoize(self, _arg: Any, _pos: int) -> None:
        self._need(1)
        self.memo[len(self.memo)] = self.stack[-1]

    def _get(self, arg: Any, _pos: int) -> None:
        if int(arg) not in self.memo:
            raise ValueError(f"memo key {arg} missing")
        self.push(self.memo[int(arg)])

    # --- imports ---------------------------------------------------------------------------------
    def _global_op(self, arg: Any, pos: int) -> None:
        if not isinstance(arg, tuple):
            self._computed_global(pos, "GLOBAL names a module longer than 1 MiB")
            return
        module, name = arg
        self.push(self._global(module, name, pos))

    def _stack_global(self, _arg: Any, pos: int) -> None:
        name, module = self.pop(), self.pop()
        if isinstance(module, _Str) and isinstance(name, _Str):
            self.push(self._global(module.value, name.value, pos))
        else:
            self._computed_global(
                pos,
                "STACK_GLOBAL takes its module or name from a computed value, so the import "
                "cannot be known before it runs",
            )

    def _computed_global(self, pos: int, message: str) -> None:
        self.problems.add("PKL003", f"computed@{pos}", pos, message)
        self.push(_Global("?", "?"))

    def _global(self, module: str, name: str, pos: int) -> _Global:
        module, name = _normalize(module, name, self.result.protocol)
        self.result.globals.setdefault((module, name), pos)
        if is_safe_global(module, name):
            pass
        elif is_dangerous_global(module, name):
            message = f"imports {module}.{name}, a code-execution gadget"
            self.problems.add("PKL001", f"{module}.{name}", pos, message)
        else:
            self.problems.add(
                "PKL002",
                f"{module}.{name}",
                pos,
                f"imports {module}.{name}, which is not on the state-dict allowlist "
                "(loading it runs that module's import code and whatever it is called with)",
            )
        return _Global(module, name)

    # --- calls -----------------------------------------------------------------------------------
    def _inst(self, arg: Any, pos: int) -> None:
        self._global_op(arg, pos)
        target = self.pop()
        args = self.pop_mark()
        self.push(self._call(target, tuple(args), pos))

    def _obj(self, _arg: Any, pos: int) -> None:
        items = self.pop_mark()
        if not items:
            raise ValueError("OBJ without a class")
        self.push(self._call(items[0], tuple(items[1:]), pos))

    def _reduce(self, _arg: Any, pos: int) -> None:
        args = self.pop()
        self.push(self._call(self.pop(), args, pos))

    def _newobj_ex(self, _arg: Any, pos: int) -> None:
        self.pop()
        args = self.pop()
        self.push(self._call(self.pop(), args, pos))

    def _call(self, target: Any, args: Any, pos: int) -> _Called:
        self.result.calls += 1
        if isinstance(target, _Global):
            return _Called(target, args)  # the global itself was judged when it was imported
        self.problems.add(
            "PKL004",
            f"call@{pos}",
            pos,
            "calls an object that is itself the result of a call or a computed value "
            "(gadget chains such as getattr(module, name)(...))",
        )
        return _Called(None, args)

    def _build(self, _arg: Any, pos: int) -> None:
        state = self.pop()
        self._need(1)
        target = self.stack[-1]
        self.result.calls += 1
        if isinstance(target, _Global):
            self.problems.add(
                "PKL008",
                f"{target.module}.{target.name}",
                pos,
                f"BUILD sets attributes on the imported object {target.module}.{target.name} "
                "(it patches a class or module in the loading process)",
            )
        elif isinstance(target, _Called) and target.target is not None:
            wrapped = (target.target.module, target.target.name)
            if wrapped in JOBLIB_ARRAY_WRAPPERS and isinstance(state, _Dict):
                self._skip_joblib_array(state, pos)

    def _ext(self, arg: Any, pos: int) -> None:
        self.problems.add(
            "PKL005",
            f"ext{arg}",
            pos,
            f"{self._name} {arg} loads whatever the loading process registered as extension {arg}",
        )
        self.push(_Global("copyreg", f"_extension_registry[{arg}]"))

    def _binpersid(self, _arg: Any, _pos: int) -> None:
        self.pop()
        self.push(OPAQUE)

    # --- joblib ----------------------------------------------------------------------------------
    def _skip_joblib_array(self, state: _Dict, pos: int) -> None:
        """joblib writes an array's bytes right after its wrapper's BUILD: step over them."""
        shape, dtype = state.items.get("shape"), state.items.get("dtype")
        if not (isinstance(shape, tuple) and all(isinstance(d, _Int) for d in shape)):
            raise ValueError("joblib array wrapper without a literal shape")
        count = math.prod(d.value for d in shape)
        if count < 0:
            raise ValueError("joblib array with a negative dimension")
        itemsize = _dtype_itemsize(dtype)
        if itemsize is None:  # object array: a nested pickle follows, walk it like joblib does
            inner = _Machine(self.reader, self.problems, self.max_opcodes).run()
            self.result.opcodes += inner.opcodes
            self.result.globals.update(inner.globals)
            if inner.error is not None:
                raise ValueError(f"object array pickle at byte {inner.start}: {inner.error}")
            return
        if state.items.get("numpy_array_alignment_bytes", NONE) is not NONE:
            padding = self.reader.read(1)
            if len(padding) != 1:
                raise ValueError("joblib array padding byte missing")
            self.reader.skip(padding[0])
        self.reader.skip(count * itemsize)


def _dtype_itemsize(dtype: Any) -> int | None:
    """Bytes per element of a pickled ``numpy.dtype('f4', ...)``; None for object arrays."""
    if not (
        isinstance(dtype, _Called)
        and dtype.target in (_Global("numpy", "dtype"), _Global("numpy.core.multiarray", "dtype"))
        and isinstance(dtype.args, tuple)
        and dtype.args
        and isinstance(dtype.args[0], _Str)
    ):
        raise ValueError("joblib array wrapper with a dtype that is not numpy.dtype(<literal>)")
    match = _DTYPE.fullmatch(dtype.args[0].value)
    if match is None:
        raise ValueError(f"joblib array of dtype {dtype.args[0].value!r}")
    kind, digits = match.group(1), match.group(2)
    if kind == "O":
        return None
    if kind in _DTYPE_SIZES and not digits:
        return _DTYPE_SIZES[kind]
    if not digits or kind not in _SIZED_KINDS | {"U", "M", "m"}:
        raise ValueError(f"joblib array of dtype {dtype.args[0].value!r}")
    return int(digits) * (4 if kind == "U" else 1)


def parse_pickle(
    fh: BinaryIO, end: int, problems: _Problems, max_opcodes: int = 50_000_000
) -> PickleResult:
    """Simulate one pickle from the current position; errors end up in ``result.error``."""
    return _Machine(Reader(fh, end), problems, max_opcodes).run()


def probe_pickle(fh: BinaryIO, end: int) -> bool:
    """Would ``pickle.load`` treat this (PROTO-less) stream as a pickle that does something?

    True when the stream parses up to STOP, or when it calls an imported global before it
    breaks (a protocol-0 payload in a ``.txt`` or ``.json`` file still runs).  Plain text
    fails within a few bytes, so this is cheap.
    """
    start = fh.tell()
    try:
        result = parse_pickle(fh, end, _Problems(), max_opcodes=1_000_000)
    except _TooLong:
        return True
    finally:
        fh.seek(start)
    if result.complete:
        return result.opcodes > 1
    return bool(result.globals) and result.calls > 0


def looks_truncated(head: bytes, size: int) -> bool:
    """Does the stream start with a length-prefixed pickle opcode whose length runs past the end?

    Such a file is a pickle cut short (or built to look like text): it must be scanned as one and
    reported, not passed as text.  The length bytes must not all be printable ASCII, so ordinary
    text starting with ``X`` or ``B`` is not mistaken for it.
    """
    if len(head) < 5:
        return False
    op = OPS.get(head[:1])
    if op is None or op.arg is None or op.arg.name not in BIG_ARGS:
        return False
    width, fmt = BIG_ARGS[op.arg.name]
    raw = head[1 : 1 + width]
    if len(raw) != width or all(0x20 <= b < 0x7F for b in raw):
        return False
    (length,) = struct.unpack(fmt, raw)
    return bool(length > size - 1 - width)


def scan_pickle_stream(
    fh: BinaryIO,
    end: int,
    sink: Sink,
    file: str,
    location: str,
    *,
    max_opcodes: int,
    legacy_torch: bool = False,
) -> list[PickleResult]:
    """Scan every pickle in a stream: one, the five of a legacy ``torch.save``, or a sequence.

    Reports findings to ``sink`` and returns the parsed pickles.  Data after the last pickle
    (legacy storages, numpy buffers) is not interpreted: ``pickle.load`` stops at STOP too.
    """
    results: list[PickleResult] = []
    problems = _Problems()
    while True:
        try:
            result = parse_pickle(fh, end, problems, max_opcodes)
        except _TooLong as exc:
            _report(problems, sink, file, location)
            raise Unscannable(
                f"pickle has more than {max_opcodes:,} opcodes (limit max_pickle_opcodes, "
                f"stopped at byte {exc.pos})"
            ) from None
        results.append(result)
        if result.error is not None:
            _report_error(result, sink, file, location)
            break
        if legacy_torch and len(results) == 1:
            value = result.value
            if not (isinstance(value, _Int) and value.value == _LEGACY_TORCH_MAGIC):
                legacy_torch = False
        if legacy_torch:
            if len(results) == 5:  # magic, protocol, sys_info, object, storage keys
                break
            continue
        # Several pickles back to back (a loader may call pickle.load again): go on while what
        # follows parses as a pickle that does something; other trailing bytes are data.
        if len(results) >= 64 or fh.tell() >= end or not _next_is_pickle(fh, end, max_opcodes):
            break
    _report(problems, sink, file, location)
    return results


def _next_is_pickle(fh: BinaryIO, end: int, max_opcodes: int) -> bool:
    start = fh.tell()
    try:
        nxt = parse_pickle(fh, end, _Problems(), max_opcodes)
    except _TooLong:
        return True
    finally:
        fh.seek(start)
    return nxt.complete or bool(nxt.globals)


def _report_error(result: PickleResult, sink: Sink, file: str, location: str) -> None:
    err = result.error
    assert err is not None
    where = join_location(location, f"byte {err.pos}")
    if result.globals or result.calls:
        sink.add(
            "PKL006",
            file,
            where,
            f"pickle breaks after importing {_names(result)}: {err}; a loader runs everything "
            "before the error",
        )
    else:
        sink.add(
            "PKL007",
            file,
            where,
            f"pickle is malformed or truncated: {err}; the walk could not reach STOP, so what a "
            "loader would do with the rest is not known",
        )


def _names(result: PickleResult) -> str:
    names = [f"{m}.{n}" for (m, n) in result.globals]
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _report(problems: _Problems, sink: Sink, file: str, location: str) -> None:
    for (rule, _subject), (pos, message) in problems.items.items():
        sink.add(rule, file, join_location(location, f"byte {pos}"), message)
