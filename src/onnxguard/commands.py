"""Core commands: ``build``, ``predict``, ``inspect``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from onnxguard.bundle import read_manifest

console = Console()


def inspect_command(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `onnxguard build`."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show a bundle's manifest: source, task, I/O, stage results and file hashes."""
    manifest = read_manifest(bundle)
    if as_json:
        typer.echo(json.dumps(manifest.to_dict(), indent=2))
        return
    render_manifest(manifest.to_dict())


def render_manifest(data: dict) -> None:  # type: ignore[type-arg]
    """The human report of a bundle (shared by `build` and `inspect`)."""
    table = Table(title=f"bundle {data['name']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    source = data.get("source", {})
    table.add_row("task", data["task"])
    table.add_row("source", f"{source.get('kind', '?')}: {source.get('id', '?')}")
    if source.get("revision"):
        table.add_row("revision", str(source["revision"]))
    table.add_row("model", f"{data['model']['file']} ({data['model']['precision']})")
    table.add_row("inputs", ", ".join(data["inputs"]))
    table.add_row("outputs", ", ".join(data["outputs"]))
    if data.get("labels"):
        table.add_row("labels", ", ".join(data["labels"]))
    if data.get("pooling"):
        table.add_row("pooling", json.dumps(data["pooling"]))
    table.add_row("max length", str(data["max_length"]))
    stages = data.get("stages", {})
    for name, result in stages.items():
        table.add_row(f"stage: {name}", _summarize_stage(result))
    for name, entry in data.get("files", {}).items():
        table.add_row(f"file: {name}", f"{entry['size']:,} B  sha256 {entry['sha256'][:16]}…")
    if data.get("encryption"):
        table.add_row("encryption", json.dumps({k: v for k, v in data["encryption"].items()
                                                 if k in ("algorithm", "key_id")}))
    console.print(table)


def _summarize_stage(result: object) -> str:
    if isinstance(result, dict):
        if "summary" in result:
            return str(result["summary"])
        return ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list)))
    return str(result)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
