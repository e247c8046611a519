"""Pickle checks: opcode-level stack simulation against an allowlist, nothing is ever unpickled.

The simulator walks the opcode stream the way ``pickle.load`` would and tracks, symbolically,
which strings, globals and call results sit on the stack and in the memo.  That resolves
``STACK_GLOBAL`` names built from memoised strings, sees calls whatever opcode makes them
(REDUCE, INST, OBJ, NEWOBJ, BUILD), and keeps going across the tricks that break blocklist
scanners: protocol-0 text pickles, several pickles in one file (legacy ``torch.save``), a payload
followed by a broken stream (nullifAI), dotted names that walk attributes (protocol 4).

Policy: a global on the PyTorch state-dict allowlist (what ``torch.load(weights_only=True)``
accepts, plus numpy's array reconstruction) is fine; a known code-execution gadget is critical;
anything else is high, because importing it already runs module code.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from onnxguard.scan._context import Sink, join_location
from onnxguard.scan._pickle_policy import is_dangerous_global, is_safe_global


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


class _Opaque:
    """A value whose content does not matter to the policy (numbers, containers, call results)."""


class _Called(_Opaque):
    """The result of calling something."""


_OPAQUE = _Opaque()
_MARK = object()
_MAX_INLINE = 1 << 20  # byte/str arguments above this are skipped, not read into memory
_MAX_LINE = 1 << 16
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C

_OPS = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_BIG_ARGS = {  # argument name -> (length prefix size, struct format)
    "bytes4": (4, "<I"),
    "unicodestring4": (4, "<I"),
    "string4": (4, "<i"),
    "bytes8": (8, "<Q"),
    "bytearray8": (8, "<Q"),
    "unicodestring8": (8, "<Q"),
}


class PickleError(Exception):
    """The stream is not a valid pickle at ``pos`` (what pickle.load would raise there)."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


class _Reader:
    """Bounded readline/read over a seekable stream, for pickletools' argument readers."""

    def __init__(self, fh: BinaryIO, end: int) -> None:
        self.fh = fh
        self.end = end

    def read(self, n: int = -1) -> bytes:
        return self.fh.read(n)

    def readline(self, limit: int = _MAX_LINE) -> bytes:
        return self.fh.readline(limit)

    def tell(self) -> int:
        return self.fh.tell()


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


def _read_arg(reader: _Reader, op: pickletools.OpcodeInfo) -> Any:
    arg = op.arg
    if arg is None:
        return None
    if arg.name in _BIG_ARGS:
        width, fmt = _BIG_ARGS[arg.name]
        raw = reader.read(width)
        if len(raw) != width:
            raise ValueError("truncated length prefix")
        (length,) = struct.unpack(fmt, raw)
        if length < 0:
            raise ValueError("negative length")
        remaining = reader.end - reader.tell()
        if length > remaining:
            raise ValueError(f"argument of {length} bytes but only {remaining} remain")
        if length > _MAX_INLINE:
            reader.fh.seek(length, 1)
            return _OPAQUE
        data = reader.read(length)
        if arg.name.startswith("unicode"):
            return data.decode("utf-8", "surrogatepass")
        return data
    if arg.name in ("stringnl_noescape_pair", "stringnl_noescape"):
        parts = []
        for _ in range(2 if arg.name.endswith("pair") else 1):
            line = reader.readline()
            if not line.endswith(b"\n"):
                raise ValueError("no newline after a global name")
            parts.append(line[:-1].decode("utf-8"))
        return tuple(parts)
    return arg.reader(reader)  # type: ignore[arg-type]


def _normalize(module: str, name: str, protocol: int) -> tuple[str, str]:
    """Apply pickle's Python 2 name mapping (fix_imports) the way the unpickler does."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module, name


class _Machine:
    """One pickle's stack machine; symbolic, bounded, never imports or calls anything."""

    def __init__(self, reader: _Reader, problems: _Problems, max_opcodes: int) -> None:
        self.reader = reader
        self.problems = problems
        self.max_opcodes = max_opcodes
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

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

    def run(self, result: PickleResult) -> None:
        reader = self.reader
        while True:
            pos = reader.tell()
            code = reader.read(1)
            if not code:
                raise PickleError("stream ends before STOP", pos)
            op = _OPS.get(code)
            if op is None:
                raise PickleError(f"invalid opcode {code!r}", pos)
            result.opcodes += 1
            if result.opcodes > self.max_opcodes:
                raise _TooLong(pos)
            try:
                arg = _read_arg(reader, op)
                if self.step(op.name, arg, pos, result):
                    result.end = reader.tell()
                    result.complete = True
                    return
            except (ValueError, KeyError, IndexError, UnicodeDecodeError, struct.error) as exc:
                raise PickleError(f"{op.name}: {exc}", pos) from None

    def step(self, name: str, arg: Any, pos: int, result: PickleResult) -> bool:
        push = self.push
        if name == "STOP":
            result.value = self.pop()
            return True
        if name == "PROTO":
            result.protocol = int(arg)
        elif name in ("FRAME", "READONLY_BUFFER"):
            pass
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            push(_Str(arg) if isinstance(arg, str) else _OPAQUE)
        elif name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            # Python 3 decodes py2 str as ASCII by default: it can name a module.
            if isinstance(arg, bytes):
                push(_Str(arg.decode("latin-1")))
            elif isinstance(arg, str):
                push(_Str(arg))
            else:
                push(_OPAQUE)
        elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
            push(_Int(int(arg)))
        elif name in (
            "BINBYTES",
            "SHORT_BINBYTES",
            "BINBYTES8",
            "BYTEARRAY8",
            "NONE",
            "NEWTRUE",
            "NEWFALSE",
            "FLOAT",
            "BINFLOAT",
            "NEXT_BUFFER",
            "EMPTY_LIST",
            "EMPTY_DICT",
            "EMPTY_SET",
            "EMPTY_TUPLE",
        ):
            push(_OPAQUE)
        elif name == "MARK":
            self.metastack.append(self.stack)
            self.stack = []
        elif name in ("APPEND",):
            self.pop()
            self._need(1)
        elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
            self.pop_mark()
            self._need(1)
        elif name == "SETITEM":
            self.pop()
            self.pop()
            self._need(1)
        elif name in ("LIST", "DICT", "FROZENSET"):
            self.pop_mark()
            push(_OPAQUE)
        elif name == "TUPLE":
            push(tuple(self.pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self.pop() for _ in range(n)][::-1]
            push(tuple(items))
        elif name == "POP":
            if self.stack:
                self.stack.pop()
            else:
                self.pop_mark()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            self._need(1)
            push(self.stack[-1])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self._need(1)
            self.memo[int(arg)] = self.stack[-1]
        elif name == "MEMOIZE":
            self._need(1)
            self.memo[len(self.memo)] = self.stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise ValueError(f"memo key {arg} missing")
            push(self.memo[int(arg)])
        elif name == "GLOBAL":
            module, gname = arg
            push(self._global(module, gname, pos, result))
        elif name == "STACK_GLOBAL":
            gname, module = self.pop(), self.pop()
            if isinstance(module, _Str) and isinstance(gname, _Str):
                push(self._global(module.value, gname.value, pos, result))
            else:
                self.problems.add(
                    "PKL003",
                    f"computed@{pos}",
                    pos,
                    "STACK_GLOBAL takes its module or name from a computed value, so the import "
                    "cannot be known before it runs",
                )
                push(_Global("?", "?"))
        elif name == "INST":
            module, gname = arg
            target = self._global(module, gname, pos, result)
            self.pop_mark()
            self._call(target, pos, result)
            push(_Called())
        elif name == "OBJ":
            items = self.pop_mark()
            if not items:
                raise ValueError("OBJ without a class")
            self._call(items[0], pos, result)
            push(_Called())
        elif name == "REDUCE" or name == "NEWOBJ":
            self.pop()
            self._call(self.pop(), pos, result)
            push(_Called())
        elif name == "NEWOBJ_EX":
            self.pop()
            self.pop()
            self._call(self.pop(), pos, result)
            push(_Called())
        elif name == "BUILD":
            self.pop()
            self._need(1)
            target = self.stack[-1]
            result.calls += 1
            if isinstance(target, _Global):
                self.problems.add(
                    "PKL008",
                    f"{target.module}.{target.name}",
                    pos,
                    f"BUILD sets attributes on the imported object {target.module}.{target.name} "
                    "(it patches a class or module in the loading process)",
                )
        elif name in ("EXT1", "EXT2", "EXT4"):
            self.problems.add(
                "PKL005",
                f"ext{arg}",
                pos,
                f"{name} {arg} loads whatever the loading process registered as extension {arg}",
            )
            push(_Global("copyreg", f"_extension_registry[{arg}]"))
        elif name == "PERSID":
            push(_OPAQUE)
        elif name == "BINPERSID":
            self.pop()
            push(_OPAQUE)
        else:  # pragma: no cover - every opcode of pickletools is handled above
            raise ValueError(f"unhandled opcode {name}")
        return False

    def _need(self, n: int) -> None:
        if len(self.stack) < n:
            raise ValueError("stack underflow")

    def _global(self, module: str, name: str, pos: int, result: PickleResult) -> _Global:
        module, name = _normalize(module, name, result.protocol)
        result.globals.setdefault((module, name), pos)
        if is_safe_global(module, name):
            pass
        elif is_dangerous_global(module, name):
            self.problems.add(
                "PKL001",
                f"{module}.{name}",
                pos,
                f"imports {module}.{name}, a code-execution gadget",
            )
        else:
            self.problems.add(
                "PKL002",
                f"{module}.{name}",
                pos,
                f"imports {module}.{name}, which is not on the state-dict allowlist "
                "(loading it runs that module's import code and whatever it is called with)",
            )
        return _Global(module, name)

    def _call(self, target: Any, pos: int, result: PickleResult) -> None:
        result.calls += 1
        if isinstance(target, _Global):
            return  # the global itself was judged when it was imported
        self.problems.add(
            "PKL004",
            f"call@{pos}",
            pos,
            "calls an object that is itself the result of a call or a computed value "
            "(gadget chains such as getattr(module, name)(...))",
        )


class _TooLong(Exception):
    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def parse_pickle(
    fh: BinaryIO, end: int, problems: _Problems, max_opcodes: int = 50_000_000
) -> PickleResult:
    """Simulate one pickle from the current position; errors end up in ``result.error``."""
    start = fh.tell()
    result = PickleResult(start=start)
    machine = _Machine(_Reader(fh, end), problems, max_opcodes)
    try:
        machine.run(result)
    except PickleError as exc:
        result.error = exc
    return result


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
    (legacy storages, numpy buffers) is not interpreted.
    """
    results: list[PickleResult] = []
    problems = _Problems()
    while True:
        try:
            result = parse_pickle(fh, end, problems, max_opcodes)
        except _TooLong as exc:
            _report(problems, sink, file, location)
            from onnxguard.scan._context import Unscannable

            raise Unscannable(
                f"pickle has more than {max_opcodes:,} opcodes (limit max_pickle_opcodes, "
                f"stopped at byte {exc.pos})"
            ) from None
        results.append(result)
        if result.error is not None:
            err = result.error
            where = join_location(location, f"byte {err.pos}")
            if result.globals or result.calls:
                sink.add(
                    "PKL006",
                    file,
                    where,
                    f"pickle breaks after importing "
                    f"{_names(result)}: {err}; a loader runs everything before the error",
                )
            else:
                sink.add("PKL007", file, where, f"pickle is malformed: {err}")
            break
        if legacy_torch and len(results) == 1:
            value = result.value
            if not (isinstance(value, _Int) and value.value == _LEGACY_TORCH_MAGIC):
                legacy_torch = False
        if legacy_torch:
            if len(results) == 5:  # magic, protocol, sys_info, object, storage keys
                break
            continue
        # Several pickles back to back: keep going while the next one starts with PROTO.
        if len(results) >= 64 or fh.read(1) != b"\x80":
            break
        fh.seek(-1, 1)
    _report(problems, sink, file, location)
    return results


def _names(result: PickleResult) -> str:
    names = [f"{m}.{n}" for (m, n) in result.globals]
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _report(problems: _Problems, sink: Sink, file: str, location: str) -> None:
    for (rule, _subject), (pos, message) in problems.items.items():
        sink.add(rule, file, join_location(location, f"byte {pos}"), message)
