"""The ``onnxguard`` command: one typer app, one module per command group, errors rendered once.

Modules: ``build`` (build), ``bundle`` (predict, inspect), ``integrity`` (keygen, sign, verify,
encrypt, decrypt), ``scan``, ``bench``, ``serve`` (with ``apikey`` and ``audit``).  Shared
options are defined once in ``_options``; what reaches
the terminal or a pipe, errors included, goes through ``_output``.  Heavy libraries (torch,
transformers) are imported inside the commands that need them, so ``serve``, ``predict`` and
``scan`` start fast and never load them.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer
from typer._click.core import Context
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup

from onnxguard.cli import bench, build, bundle, integrity, scan, serve
from onnxguard.cli._options import HIDDEN_ALIASES
from onnxguard.cli._output import (
    console,
    exit_code_table,
    is_terminal,
    quiet_progress_bars,
    render_error,
    render_usage_error,
)
from onnxguard.errors import OnnxGuardError

_GLOBAL_FLAGS = ("--verbose", "-v", "--version")
INTERRUPTED = 130
_state = {"verbose": False}


class OnnxGuardGroup(TyperGroup):
    """The root group: global flags are accepted anywhere; old option names still work."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize_args(self, args))


def normalize_args(group: TyperGroup, args: Sequence[str]) -> list[str]:
    """Move ``--verbose``/``--version`` to the front and rewrite hidden aliases."""
    head = list(args)
    tail: list[str] = []
    if "--" in head:
        index = head.index("--")
        head, tail = head[:index], head[index:]
    front = [a for a in head if a in _GLOBAL_FLAGS]
    rest = [a for a in head if a not in _GLOBAL_FLAGS]
    command = next((group.commands.get(a) for a in rest if a in group.commands), None)
    if command is not None and not isinstance(command, TyperGroup):
        own = {opt for param in command.params for opt in getattr(param, "opts", ())}
        rest = [_alias(a, own) for a in rest]
    return front + rest + tail


def _alias(arg: str, own: set[str]) -> str:
    """The name the command knows: an old name becomes the new one."""
    name, sep, value = arg.partition("=")
    target = HIDDEN_ALIASES.get(name)
    if target is None or name in own or target not in own:
        return arg
    return target + sep + value


def _version() -> str:
    from onnxguard import __version__

    return __version__


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"onnxguard {_version()}")
        raise typer.Exit(0)


app = typer.Typer(
    name="onnxguard",
    cls=OnnxGuardGroup,
    help="Turn an unvetted Hugging Face transformer into a verified, optimized, signed ONNX "
    "bundle, and serve it securely and fast.",
    epilog="Exit codes (every command):\n\n\b\n" + exit_code_table(),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show tracebacks on errors (accepted anywhere)."),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version,
        help="Print the version and exit (accepted anywhere)."),
) -> None:
    _state["verbose"] = _state["verbose"] or verbose


for _module in (build, bundle, integrity, scan, bench, serve):
    _module.register(app)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: run the app and turn every error into the exit-code table."""
    args = list(sys.argv[1:] if argv is None else argv)
    quiet_progress_bars()
    _state["verbose"] = any(a in ("--verbose", "-v") for a in args[: _end(args)])
    try:
        rc = app(args=args, prog_name="onnxguard", standalone_mode=False)
    except OnnxGuardError as exc:
        if _state["verbose"]:
            _print_traceback()
        render_error(exc)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        rc = INTERRUPTED
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClickException as exc:
        render_usage_error(exc.format_message(), _command_name(exc))
        sys.exit(exc.exit_code)
    if rc == INTERRUPTED:  # typer turns Ctrl-C into a silent Exit(130)
        console(stderr=True).print("interrupted: nothing half-written was left behind",
                                   markup=False)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


def _print_traceback() -> None:
    """The traceback: rich on a terminal, plain lines on a pipe."""
    if is_terminal(sys.stderr):
        console(stderr=True).print_exception()
    else:
        traceback.print_exc(file=sys.stderr)


def _end(args: Sequence[str]) -> int:
    return args.index("--") if "--" in args else len(args)


def _command_name(exc: Any) -> str | None:
    ctx = getattr(exc, "ctx", None)
    if ctx is None or ctx.parent is None:
        return None
    return str(ctx.command_path.removeprefix("onnxguard").strip()) or None


__all__ = ["app", "main"]
