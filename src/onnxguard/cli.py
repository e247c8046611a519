"""The ``onnxguard`` command: one typer app; errors are rendered here, in one place.

Each area registers its own commands (``register(app)`` in its ``commands`` module) so this file
stays small.  Heavy libraries (torch, transformers) are imported inside the build commands only,
so ``serve``, ``predict`` and ``scan`` start fast and never load them.
"""

from __future__ import annotations

import sys
from types import ModuleType

import typer
from rich.console import Console

from onnxguard.errors import OnnxGuardError

app = typer.Typer(
    name="onnxguard",
    help="Turn an unvetted Hugging Face transformer into a verified, optimized, signed ONNX "
    "bundle, and serve it securely and fast.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)
_state = {"verbose": False}


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
) -> None:
    _state["verbose"] = verbose


def _command_modules() -> list[ModuleType]:
    from onnxguard import commands

    modules: list[ModuleType] = [commands]
    modules.append(__import__("onnxguard.integrity.commands", fromlist=["register"]))
    modules.append(__import__("onnxguard.bench.commands", fromlist=["register"]))
    modules.append(__import__("onnxguard.scan.commands", fromlist=["register"]))
    modules.append(__import__("onnxguard.serve.commands", fromlist=["register"]))
    return modules


for _module in _command_modules():
    _module.register(app)


def render_error(exc: OnnxGuardError) -> None:
    """Print what is wrong and how to fix it; the traceback only with --verbose."""
    err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[bold yellow]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point: run the app and turn onnxguard errors into exit codes."""
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except OnnxGuardError as exc:
        if _state["verbose"]:
            err_console.print_exception()
        render_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]: nothing half-written was left behind")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[bold red]interrupted[/]: nothing half-written was left behind")
        sys.exit(130)
    except Exception as exc:  # click usage errors (typer bundles its own click copy)
        if isinstance(exc, _click_exceptions()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        raise


def _click_exceptions() -> tuple[type[Exception], ...]:
    import click

    types: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        types.append(TyperClickException)
    except ImportError:  # older typer uses click itself
        pass
    return tuple(types)
