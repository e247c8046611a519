"""Where the CLI writes: terminals get rich output, pipes and files get plain lines.

Output for a pipe (a file, a CI log, ``| grep``) is never wrapped, never coloured and never
redrawn: rich would wrap at 80 columns when stdout is not a terminal and split a line a script
greps for.  Errors and the exit-code table are rendered here, in one place.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import IO

from rich.console import Console
from rich.table import Table

from onnxguard.errors import EXIT_CODES, OnnxGuardError

_PIPE_WIDTH = 100_000  # a pipe has no width: never wrap


def is_terminal(stream: IO[str]) -> bool:
    """True when ``stream`` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr): rich on a terminal, plain unwrapped lines on a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    if is_terminal(stream):
        return Console(file=stream, highlight=False)
    return Console(file=stream, width=_PIPE_WIDTH, soft_wrap=True, no_color=True,
                   highlight=False, color_system=None, emoji=False)


def quiet_progress_bars() -> None:
    """No tqdm bars (transformers' weight loading, the Hub) when stderr is not a terminal.

    Redrawn bars are carriage returns and escape codes in a log; onnxguard's own progress is
    one line per stage.  ``TQDM_DISABLE`` is read by every tqdm bar, also in libraries.
    """
    if not is_terminal(sys.stderr):
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def print_fields(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """A two-column report: a table on a terminal, one ``field: value`` line each on a pipe."""
    out = console()
    if not is_terminal(sys.stdout):
        out.print(title, markup=False)
        for field, value in rows:
            out.print(f"  {field}: {value}", markup=False)
        return
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for field, value in rows:
        table.add_row(field, value, end_section=False)
    out.print(table)


def render_error(exc: OnnxGuardError) -> None:
    """Print what is wrong and how to fix it (the traceback only with --verbose)."""
    err = console(stderr=True)
    err.print(f"[bold red]error:[/] {_escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(f"[bold yellow]hint:[/] {_escape(exc.hint)}", soft_wrap=True)


def render_usage_error(message: str, command: str | None) -> None:
    """A bad option or argument found by the parser: the same two lines as every error."""
    err = console(stderr=True)
    err.print(f"[bold red]error:[/] {_escape(message)}", soft_wrap=True)
    where = f"onnxguard {command} --help" if command else "onnxguard --help"
    err.print(f"[bold yellow]hint:[/] `{where}` lists the options and their values",
              soft_wrap=True)


def exit_code_table() -> str:
    """The exit-code table as plain lines (printed by ``onnxguard --help``)."""
    return "\n".join(f"{code:>3}  {meaning}" for code, meaning in EXIT_CODES)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
