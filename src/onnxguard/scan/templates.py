"""Chat-template checks: server-side template injection in Jinja2 (CVE-2024-34359 family).

A tokenizer's ``chat_template`` is a Jinja2 program that every server renders for every request,
and onnxguard copies ``tokenizer_config.json`` into the bundle it signs.  A template that walks
``__class__.__mro__[1].__subclasses__()`` or ``cycler.__init__.__globals__`` runs code wherever
the renderer's sandbox is weaker than Jinja's own (llama-cpp-python rendered with a plain
Environment).  Templates are analysed with Jinja2's own parser — the AST it would compile — and
never rendered: every node, name, attribute, filter, test and call is checked against what chat
templates need (message loops, role/content access, ``raise_exception``, ``strftime_now``,
``namespace``, filters like ``trim``/``tojson``).  Strings are folded where they are built from
constant pieces (``~``, ``+``, ``*``, ``%``, ``format``, ``join``, ``reverse``, ``lower``...), so a
dunder spelled in pieces, hex escapes or reverse is still seen.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

from onnxguard.scan._context import Sink, join_location


def _words(text: str) -> list[str]:
    return text.split()


# Jinja2 AST nodes a chat template may contain; anything else (Include, Import, Extends,
# CallBlock, EvalContextModifier, ...) is reported.
_NODES = frozenset(
    _words(
        """
    Template Output TemplateData For If Assign AssignBlock Macro Call Break Continue Scope With
    ExprStmt FilterBlock Const Name Tuple List Dict Pair Keyword CondExpr And Or Not Neg Pos Add
    Sub Mul Div FloorDiv Mod Pow Concat Compare Operand Getattr Getitem Slice Filter Test NSRef
    """
    )
)
# Variables renderers pass to chat templates (transformers, vLLM, TGI, llama.cpp).
_KNOWN_NAMES = frozenset(
    _words(
        """
    messages tools documents add_generation_prompt continue_final_message bos_token eos_token
    pad_token unk_token sep_token cls_token mask_token raise_exception strftime_now namespace
    range dict loop true false none True False None date_string tools_in_user_message
    custom_tools builtin_tools enable_thinking add_vision_id reasoning_effort xml_tools
    python_tools system_message tool_choice response_format chat_template_kwargs
    """
    )
)
_CALLABLE_NAMES = frozenset({"raise_exception", "strftime_now", "namespace", "range", "dict"})
# Globals of Jinja and of web frameworks that lead to Python objects: injection gadgets.
_GADGET_NAMES = frozenset(
    _words(
        """
    self cycler joiner lipsum request config session g url_for get_flashed_messages
    application environment context __builtins__ os
    """
    )
)
_FILTERS = frozenset(
    _words(
        """
    abs batch capitalize center count d default dictsort e escape first float format groupby
    indent int items join last length list lower map max min reject rejectattr replace reverse
    round safe select selectattr slice sort string striptags sum title tojson trim truncate
    unique upper wordcount wordwrap
    """
    )
)
_TESTS = frozenset(
    _words(
        """
    boolean defined divisibleby eq equalto even false float ge greaterthan gt in integer
    iterable le lessthan lower lt mapping ne none number odd sameas sequence string true
    undefined upper == != < <= > >=
    """
    )
)
# Methods chat templates call on strings, dicts and lists.
_METHODS = frozenset(
    _words(
        """
    strip lstrip rstrip split rsplit splitlines startswith endswith lower upper title
    capitalize replace items keys values get count find rfind index join isdigit isalpha
    isspace isalnum format append cycle changed
    """
    )
)
# Attributes that reach frames, code, globals or loaders without a leading underscore.
_GADGET_ATTRS = frozenset(
    _words(
        """
    gi_frame gi_code f_globals f_locals f_back f_builtins cr_frame ag_frame tb_frame
    func_globals func_code co_code mro im_func popen system eval exec import_module
    subprocess builtins modules getattr load loads environment globals
    """
    )
)
_SUSPICIOUS_TEXT = re.compile(
    r"__\w+__|\bPopen\b|\bos\.(?:system|popen)\b|\bsubprocess\b|\b__import__\b|\bimportlib\b"
)
_MAX_FOLD = 4096


@dataclass
class _Issues:
    """Findings of one template, one per (rule, subject)."""

    items: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)

    def add(self, rule: str, subject: str, line: int, message: str) -> None:
        self.items.setdefault((rule, subject), (line, message))


def check_template(source: str, sink: Sink, file: str, location: str) -> None:
    """Parse one template with Jinja2 and report what a chat template has no business doing."""
    from jinja2 import TemplateSyntaxError

    try:
        tree = _environment().parse(source)
    except TemplateSyntaxError as exc:
        sink.add(
            "TPL003",
            file,
            join_location(location, f"line {exc.lineno}"),
            f"Jinja2 cannot parse the template: {exc.message}",
        )
        return
    except (RecursionError, MemoryError) as exc:
        sink.add("TPL003", file, location, f"template too deeply nested to parse ({exc!r})")
        return
    issues = _Issues()
    try:
        _Walker(issues).visit_template(tree)
    except RecursionError:
        sink.add("TPL003", file, location, "template nests too deeply to be checked")
        return
    for (rule, _subject), (line, message) in sorted(
        issues.items.items(), key=lambda item: item[1][0]
    ):
        sink.add(rule, file, join_location(location, f"line {line}"), message)


def _environment() -> Any:
    """A sandboxed environment shaped like transformers' (loop controls, ``generation`` tag)."""
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """transformers' ``{% generation %}...{% endgeneration %}`` marker (AssistantTracker)."""

        tags = {"generation"}  # noqa: RUF012 - Extension declares it a set

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", GenerationTag],
    )


class _Walker:
    """Visits every node once; tracks names the template defines and strings it builds."""

    def __init__(self, issues: _Issues) -> None:
        self.issues = issues
        self.defined: set[str] = set()
        self.macros: set[str] = set()
        self.strings: dict[str, str] = {}  # variables assigned a foldable string

    def visit_template(self, tree: Any) -> None:
        from jinja2 import nodes

        for node in tree.find_all((nodes.Macro,)):
            self.macros.add(node.name)
            self.defined.update(arg.name for arg in node.args)
        for node in tree.find_all((nodes.Name,)):
            if node.ctx in ("store", "param"):
                self.defined.add(node.name)
        self.visit(tree)

    def visit(self, node: Any) -> None:
        kind = type(node).__name__
        line = getattr(node, "lineno", 0) or 0
        if kind not in _NODES:
            self.issues.add(
                "TPL002",
                f"node {kind}",
                line,
                f"template uses {{% {kind.lower()} %}}-style "
                f"construct {kind}, which chat templates do not need (it loads or alters "
                "templates or the evaluation context)",
            )
        handler = getattr(self, f"_{kind.lower()}", None)
        if handler is not None:
            handler(node, line)
        for child in node.iter_child_nodes():
            self.visit(child)

    # --- names and strings -----------------------------------------------------------------------
    def _name(self, node: Any, line: int) -> None:
        if node.ctx != "load":
            return
        name = node.name
        if name in _GADGET_NAMES or name.startswith("_"):
            self.issues.add(
                "TPL001",
                f"name {name}",
                line,
                f"template reads the global {name!r}, a known route to Python objects "
                "(server-side template injection)",
            )

    def _const(self, node: Any, line: int) -> None:
        if isinstance(node.value, str):
            self._text(node.value, line, "string literal")

    def _assign(self, node: Any, line: int) -> None:
        from jinja2 import nodes

        value = self.fold(node.node)
        if isinstance(node.target, nodes.Name) and value is not None:
            self.strings[node.target.name] = value

    def _text(self, text: str, line: int, what: str) -> None:
        match = _SUSPICIOUS_TEXT.search(text)
        if match:
            self.issues.add(
                "TPL001",
                f"text {match.group(0)}",
                line,
                f"{what} {match.group(0)!r}: templates name Python internals only to escape "
                "the sandbox",
            )

    # --- attribute and item access ---------------------------------------------------------------
    def _getattr(self, node: Any, line: int) -> None:
        from jinja2 import nodes

        self._attribute(node.attr, line, "attribute")
        base = node.node
        if (
            isinstance(base, nodes.Name)
            and base.name not in self.defined
            and base.name not in _KNOWN_NAMES
            and base.name not in _GADGET_NAMES
        ):
            self.issues.add(
                "TPL002",
                f"global {base.name}",
                line,
                f"reads attribute {node.attr!r} of {base.name!r}, a global that no chat-template "
                "renderer provides (renderers that inject objects expose them this way)",
            )

    def _getitem(self, node: Any, line: int) -> None:
        from jinja2 import nodes

        key = node.arg
        if isinstance(key, nodes.Const | nodes.Slice) or (
            isinstance(key, nodes.Name) and key.name not in self.strings
        ):
            if isinstance(key, nodes.Const) and isinstance(key.value, str):
                self._attribute(key.value, line, "subscript")
            return
        value = self.fold(key)
        if value is not None:
            self._attribute(value, line, "subscript built from strings")
        elif _builds_string(key):
            self.issues.add(
                "TPL002",
                "computed subscript",
                line,
                "subscript with a key built at render time from strings (attribute names are "
                "assembled this way to dodge filters)",
            )

    def _nsref(self, node: Any, line: int) -> None:
        self._attribute(node.attr, line, "namespace attribute")

    def _attribute(self, name: str, line: int, what: str) -> None:
        if name.startswith("_") or name in _GADGET_ATTRS:
            self.issues.add(
                "TPL001",
                f"attr {name}",
                line,
                f"{what} {name!r}: reaches Python internals (e.g. __class__, __globals__, "
                "__subclasses__) from template data",
            )
        else:
            self._text(name, line, what)

    # --- filters, tests, calls -------------------------------------------------------------------
    def _filter(self, node: Any, line: int) -> None:
        name = node.name
        if name == "attr":
            arg = self.fold(node.args[0]) if node.args else None
            self.issues.add(
                "TPL001" if arg is None or arg.startswith("_") else "TPL002",
                f"filter attr {arg}",
                line,
                f"|attr({arg!r}) reads attributes by name: the classic way around attribute "
                "filters in template injection",
            )
        elif name not in _FILTERS:
            self.issues.add(
                "TPL002",
                f"filter {name}",
                line,
                f"filter {name!r} is not a Jinja2 or transformers filter a chat template uses",
            )
        for value in self._attribute_args(node):
            self._attribute(value, line, f"|{name} attribute")

    def _attribute_args(self, node: Any) -> list[str]:
        """The folded arguments of a filter that name attributes or apply other filters."""
        name = node.name
        named = [kw.value for kw in node.kwargs if kw.key == "attribute"]
        if name in ("selectattr", "rejectattr", "groupby") and node.args:
            named.append(node.args[0])
        if name == "map" and node.args:  # map('filter', *args): the filter is checked too
            inner = self.fold(node.args[0])
            if inner is not None and inner not in _FILTERS:
                line = getattr(node, "lineno", 0) or 0
                rule = "TPL001" if inner == "attr" else "TPL002"
                self.issues.add(
                    rule,
                    f"map filter {inner}",
                    line,
                    f"|map({inner!r}, ...) applies a filter chat templates do not use",
                )
            named.extend(node.args[1:])
        values = [self.fold(arg) for arg in named]
        return [v for v in values if v is not None]

    def _test(self, node: Any, line: int) -> None:
        if node.name not in _TESTS:
            self.issues.add(
                "TPL002",
                f"test {node.name}",
                line,
                f"test {node.name!r} is not one chat templates use",
            )

    def _call(self, node: Any, line: int) -> None:
        from jinja2 import nodes

        callee = node.node
        if isinstance(callee, nodes.Name):
            if callee.name in _CALLABLE_NAMES or callee.name in self.macros:
                return
            self.issues.add(
                "TPL002",
                f"call {callee.name}",
                line,
                f"calls {callee.name!r}, which is neither a chat-template helper nor a macro "
                "the template defines",
            )
        elif isinstance(callee, nodes.Getattr):
            if callee.attr not in _METHODS:
                self.issues.add(
                    "TPL002",
                    f"method {callee.attr}",
                    line,
                    f"calls method {callee.attr!r}, outside the string/dict/list methods chat "
                    "templates use",
                )
            elif callee.attr == "format":
                self._format_call(node, line)
        else:
            self.issues.add(
                "TPL002",
                "computed call",
                line,
                "calls the result of an expression (gadget chains call what they dug out)",
            )

    def _format_call(self, node: Any, line: int) -> None:
        """``"{0.__class__}".format(x)`` traverses attributes inside the format string."""
        receiver = self.fold(node.node.node)
        if receiver is None:
            return
        for _text, field_name, _spec, _conv in _safe_format_parse(receiver):
            if field_name and re.search(r"[.\[]", field_name):
                self.issues.add(
                    "TPL001",
                    f"format field {field_name}",
                    line,
                    f"format string field {{{field_name}}} walks attributes of its argument",
                )

    # --- constant folding ------------------------------------------------------------------------
    def fold(self, node: Any) -> str | None:
        """The string an expression always evaluates to, when it is built from constants."""
        value = _Folder(self.strings).value(node)
        if isinstance(value, str):
            self._text(value, getattr(node, "lineno", 0) or 0, "string built from pieces")
            return value
        return None


def _builds_string(node: Any) -> bool:
    """Is this key assembled from string pieces (not ``loop.index0 + 1``)?"""
    from jinja2 import nodes

    if isinstance(node, nodes.Concat):
        return True
    if isinstance(node, nodes.Add | nodes.Mod | nodes.Mul):
        return any(
            (isinstance(side, nodes.Const) and isinstance(side.value, str)) or _builds_string(side)
            for side in (node.left, node.right)
        )
    return isinstance(node, nodes.Filter) and node.name in ("join", "format", "replace", "reverse")


def _safe_format_parse(text: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(text))
    except ValueError:
        return []


class _Folder:
    """Evaluate string-building expressions over constants only (no rendering, no objects)."""

    def __init__(self, strings: dict[str, str]) -> None:
        self.strings = strings

    def value(self, node: Any, depth: int = 0) -> Any:
        from jinja2 import nodes

        if depth > 32:
            return None
        if isinstance(node, nodes.Const):
            return node.value if isinstance(node.value, str | int) else None
        if isinstance(node, nodes.Name):
            return self.strings.get(node.name)
        if isinstance(node, nodes.List | nodes.Tuple):
            items = [self.value(item, depth + 1) for item in node.items]
            return items if all(isinstance(i, str | int) for i in items) else None
        if isinstance(node, nodes.Concat):
            parts = [self.value(n, depth + 1) for n in node.nodes]
            return _limit("".join(map(str, parts))) if None not in parts else None
        if isinstance(node, nodes.BinExpr):
            return self._binary(node, depth)
        if isinstance(node, nodes.Filter):
            return self._filter(node, depth)
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            return self._method(node, depth)
        return None

    def _binary(self, node: Any, depth: int) -> Any:
        left, right = self.value(node.left, depth + 1), self.value(node.right, depth + 1)
        if left is None or right is None:
            return None
        op = type(node).__name__
        if op == "Add" and isinstance(left, str) and isinstance(right, str):
            return _limit(left + right)
        if op == "Mul" and isinstance(left, str) and isinstance(right, int) and right < 64:
            return _limit(left * right)
        if op == "Mod" and isinstance(left, str):
            return _printf(left, right if isinstance(right, list) else [right])
        return None

    def _filter(self, node: Any, depth: int) -> Any:
        base = self.value(node.node, depth + 1) if node.node is not None else None
        args = [self.value(a, depth + 1) for a in node.args]
        if base is None or None in args:
            return None
        name = node.name
        if name == "join" and isinstance(base, list):
            sep = args[0] if args else ""
            return _limit(str(sep).join(map(str, base)))
        if not isinstance(base, str):
            return None
        if name == "format":
            return _printf(base, args)
        if name in ("lower", "upper", "title", "capitalize", "trim", "string"):
            return {"trim": base.strip(), "string": base}.get(name) or getattr(base, name)()
        if name == "reverse":
            return base[::-1]
        if name == "replace" and len(args) >= 2:
            return _limit(base.replace(str(args[0]), str(args[1])))
        return None

    def _method(self, node: Any, depth: int) -> Any:
        receiver = self.value(node.node.node, depth + 1)
        args = [self.value(a, depth + 1) for a in node.args]
        if None in args or node.kwargs:
            return None
        attr = node.node.attr
        if attr == "join" and isinstance(receiver, str) and len(args) == 1:
            seq = args[0]
            return _limit(receiver.join(map(str, seq))) if isinstance(seq, list) else None
        if attr == "format" and isinstance(receiver, str):
            fields = _safe_format_parse(receiver)
            if any(f and not re.fullmatch(r"\d*", f) for _t, f, _s, _c in fields):
                return None  # attribute fields are reported by the caller, never evaluated
            try:
                return _limit(receiver.format(*args))
            except (IndexError, ValueError, KeyError):
                return None
        if attr in ("replace",) and isinstance(receiver, str) and len(args) == 2:
            return _limit(receiver.replace(str(args[0]), str(args[1])))
        if attr in ("lower", "upper", "strip") and isinstance(receiver, str) and not args:
            return str(getattr(receiver, attr)())
        return None


def _printf(fmt: str, args: list[Any]) -> str | None:
    """``"%c%c" % (95, 95)`` for plain %s/%c/%d/%x conversions only (no widths: no blow-up)."""
    if re.search(r"%[^scdx%]", fmt):
        return None
    try:
        return _limit(fmt % tuple(args))
    except (TypeError, ValueError, OverflowError):
        return None


def _limit(text: str) -> str | None:
    return text if len(text) <= _MAX_FOLD else None
