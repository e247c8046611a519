"""``onnxguard predict`` and ``onnxguard inspect``: use and look at a built bundle."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from onnxguard.bundle import SIGNATURE_NAME, Manifest
from onnxguard.cli._options import BundleDir, Json, KeySource, Providers, PublicKey, Threads
from onnxguard.cli._output import console, print_fields
from onnxguard.errors import UsageError

ECHO_CHARS = 200
"""``predict`` echoes at most this many characters of each text (a 1 MB input is not echoed)."""
_STDIN_HINT = 'send one text per line: plain text, a JSON string, or {"text": "..."}'


def inspect_command(
    bundle: BundleDir,
    as_json: Json = False,
) -> None:
    """Show a bundle's manifest, whether it is signed or encrypted, and check every file hash.

    Exit 7 when a file does not match its manifest hash.  The signature itself is checked by
    `onnxguard verify BUNDLE --public-key PUB.pem`.
    """
    from onnxguard.bundle import read_manifest, verify_bundle_files

    manifest = read_manifest(bundle)
    signed = (bundle / SIGNATURE_NAME).is_file()
    if as_json:
        typer.echo(json.dumps(manifest.to_dict() | {"signed": signed}, indent=2))
    else:
        render_manifest(manifest, signed=signed)
    verify_bundle_files(bundle, manifest)
    if not as_json:
        console().print(f"hashes: all {len(manifest.files)} files match the manifest",
                        markup=False)


def render_manifest(manifest: Manifest, *, signed: bool | None = None) -> None:
    """The human report of a bundle (shared by `build` and `inspect`)."""
    rows = [("task", manifest.task.value),
            ("source", f"{manifest.source.get('kind', '?')}: {manifest.source.get('id', '?')}")]
    if manifest.source.get("revision"):
        rows.append(("revision", str(manifest.source["revision"])))
    rows += [("model", f"{manifest.model_file} ({manifest.precision})"),
             ("inputs", ", ".join(manifest.inputs)), ("outputs", ", ".join(manifest.outputs))]
    if manifest.labels:
        rows.append(("labels", ", ".join(manifest.labels)))
    if manifest.pooling:
        rows.append(("pooling", json.dumps(manifest.pooling.to_dict())))
    rows.append(("max length", str(manifest.max_length)))
    rows += [(f"stage: {name}", _summarize_stage(result))
             for name, result in manifest.stages.items()]
    if manifest.drift_reference is not None:
        rows.append(("drift reference", manifest.drift_reference.summary()))
    rows += [(f"file: {name}", f"{entry['size']:,} B  sha256 {entry['sha256'][:16]}…")
             for name, entry in manifest.files.items()]
    if signed is not None:
        rows.append(("signed", f"yes ({SIGNATURE_NAME}; check it with `onnxguard verify "
                     "--public-key`)" if signed else "no"))
    encryption = manifest.encryption
    rows.append(("encrypted", f"yes ({encryption.get('algorithm')}, key "
                 f"{encryption.get('key_id')})" if encryption else "no"))
    print_fields(f"bundle {manifest.name}", rows)


def _summarize_stage(result: object) -> str:
    if isinstance(result, dict):
        if "summary" in result:
            return str(result["summary"])
        return ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list)))
    return str(result)


def predict_command(
    bundle: BundleDir,
    texts: Annotated[list[str] | None, typer.Argument(
        metavar="TEXT",
        help="Texts to run. Without any, reads one text per line from stdin: plain text, a "
        'JSON string, or {"text": ...}.')] = None,
    providers: Providers = None,
    public_key: PublicKey = None,
    key_source: KeySource = None,
    threads: Threads = None,
    input_file: Annotated[Path | None, typer.Option(
        "--input", "-i", metavar="FILE", help="Bulk mode: a .jsonl, .csv or .parquet file with "
        "a text column; results go to --output in input order.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", help="Bulk mode: where results go (.jsonl, .csv or "
        ".parquet); a rerun resumes from OUTPUT.parts/.")] = None,
    text_column: Annotated[str, typer.Option(help="Bulk mode: the text column.")] = "text",
    id_column: Annotated[str | None, typer.Option(
        help="Bulk mode: a column copied to each result's id (default: the row number).")] = None,
    part_size: Annotated[int, typer.Option(
        help="Bulk mode: rows per restartable part.")] = 4096,
    use_ray: Annotated[bool, typer.Option(
        "--ray", help="Bulk mode on Ray Data: an actor pool, each actor verifies the bundle.")
    ] = False,
    address: Annotated[str | None, typer.Option(
        metavar="auto|ray://HOST:PORT", help="Ray cluster to join (default: start a local one).")
    ] = None,
    actors: Annotated[int, typer.Option(help="--ray: actors in the pool.")] = 2,
    prompt_name: Annotated[str | None, typer.Option(
        metavar="NAME", help="Embedding models: the sentence-transformers prompt put before "
        "each text (e.g. query); without it the model's default prompt, if any.")] = None,
    question: Annotated[str | None, typer.Option(
        help="Question answering: the question (with --context). Without it, reads JSON lines "
        '{"question": ..., "context": ...} from stdin.')] = None,
    context: Annotated[str | None, typer.Option(
        help="Question answering: the text the answer is taken from.")] = None,
    top_k: Annotated[int, typer.Option(
        min=1, max=20, help="Question answering: answers per question.")] = 1,
) -> None:
    """Run a bundle on texts; prints one JSON result per line (long texts echoed shortened).

    A question-answering bundle takes `--question Q --context C` (or JSON lines with
    "question" and "context" on stdin) and prints the answers with character offsets.
    Bulk mode (`--input FILE --output FILE`, optionally `--ray`) runs a whole file, in parts
    that a rerun skips once written.
    """
    from onnxguard.runtime import Engine, check_texts

    if (question is not None or context is not None) and (
            question is None or context is None or texts or input_file is not None):
        raise UsageError("--question and --context go together, without TEXT or --input",
                             hint='e.g. --question "who?" --context "Ada wrote it."')
    if input_file is not None or output is not None:
        if texts:
            raise UsageError("TEXT arguments and --input exclude each other",
                             hint="put the texts in the input file")
        if prompt_name is not None:
            raise UsageError("--prompt-name applies to TEXT arguments and stdin, not to "
                             "--input files", hint="bulk mode applies the model's default "
                             "prompt; prefix the texts in the file for another one")
        _predict_file(bundle, input_file, output, text_column, id_column, part_size, use_ray,
                      address, actors, public_key, key_source, threads)
        return
    if use_ray:
        raise UsageError("--ray runs files", hint="add --input FILE --output FILE")
    if question is not None or _bundle_task(bundle) == "question-answering":
        _answer_questions(bundle, question, context, texts, top_k, public_key, key_source,
                          providers, threads)
        return
    inputs = list(texts or [])
    if not inputs:
        if sys.stdin.isatty():
            raise UsageError("no texts given", hint="pass TEXT arguments, or " + _STDIN_HINT)
        inputs = read_stdin_texts(sys.stdin)
        if not inputs:
            raise UsageError("stdin held no texts", hint=_STDIN_HINT)
    check_texts(inputs)
    engine = Engine.from_bundle(
        bundle, public_key=public_key, key_source=key_source,
        providers=providers.split(",") if providers else None, intra_op_threads=threads,
    )
    err = console(stderr=True)
    err.print(f"{engine.name}: {engine.task.value}, {engine.manifest.precision}, providers "
              f"{', '.join(engine.providers)}, {engine.threads} threads", markup=False)
    results = engine.predict(inputs, prompt_name=prompt_name)
    for number, (text, result) in enumerate(zip(inputs, results, strict=True), 1):
        if result.get("truncated"):
            err.print(f"note: text {number} was cut at {engine.max_length} tokens "
                      "(the model's maximum length); the result covers only that part",
                      markup=False)
        typer.echo(json.dumps(echo_of(text) | result, ensure_ascii=False))


def _bundle_task(bundle: Path) -> str | None:
    """The task the manifest names (unverified: only to choose the input form; the engine
    verifies the bundle before anything runs)."""
    try:
        data = json.loads((bundle / "onnxguard.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("task")) if isinstance(data, dict) else None


def _answer_questions(
    bundle: Path, question: str | None, context: str | None, texts: list[str] | None,
    top_k: int, public_key: Path | None, key_source: str | None, providers: str | None,
    threads: int | None,
) -> None:
    from onnxguard.runtime import Engine

    if texts:
        raise UsageError("a question-answering bundle answers a question from a context, "
                         "not TEXT arguments", hint=_QA_HINT)
    if question is not None and context is not None:
        items = [(question, context)]
    elif sys.stdin.isatty():
        raise UsageError("no question given", hint=_QA_HINT)
    else:
        items = read_stdin_questions(sys.stdin)
    engine = Engine.from_bundle(
        bundle, public_key=public_key, key_source=key_source,
        providers=providers.split(",") if providers else None, intra_op_threads=threads,
    )
    if engine.task.value != "question-answering":
        raise UsageError(f"--question needs a question-answering bundle; this one is "
                         f"{engine.task.value}", hint="pass texts as TEXT arguments")
    for asked, text in items:
        answers = engine.answer(asked, text, top_k=top_k)
        typer.echo(json.dumps({"question": asked} | {"context": echo_of(text)["text"]}
                              | {"answers": answers}, ensure_ascii=False))


_QA_HINT = ('pass --question Q --context C, or JSON lines {"question": ..., "context": ...} '
            "on stdin")


def read_stdin_questions(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(question, context) from JSON lines with string "question" and "context" fields."""
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item: Any = json.loads(line)
        except ValueError:
            item = None
        if not (isinstance(item, dict) and isinstance(item.get("question"), str)
                and isinstance(item.get("context"), str)):
            raise UsageError(f'stdin line {number} is not a JSON object with "question" and '
                             '"context" strings', hint=_QA_HINT)
        items.append((item["question"], item["context"]))
    if not items:
        raise UsageError("stdin held no questions", hint=_QA_HINT)
    return items


def _predict_file(bundle: Path, input_file: Path | None, output: Path | None,
                  text_column: str, id_column: str | None, part_size: int, use_ray: bool,
                  address: str | None, actors: int, public_key: Path | None,
                  key_source: str | None, threads: int | None) -> None:
    from onnxguard.bulk import BulkConfig, run_bulk

    if input_file is None or output is None:
        raise UsageError("bulk mode needs both --input and --output",
                         hint="e.g. --input texts.jsonl --output predictions.jsonl")
    config = BulkConfig(bundle=bundle, input=input_file, output=output, text_column=text_column,
                        id_column=id_column, part_size=part_size, public_key=public_key,
                        key_source=key_source, threads=threads, use_ray=use_ray,
                        ray_address=address, actors=actors)
    err = console(stderr=True)
    result = run_bulk(config, progress=lambda line: err.print(line, markup=False))
    for note in result.notes:
        err.print(note, markup=False)
    if result.errors:
        err.print(f"{result.errors} row(s) had no text and carry an error field", markup=False)


def echo_of(text: str) -> dict[str, Any]:
    """The text as echoed in a result: in full, or its start and its length when long."""
    if len(text) <= ECHO_CHARS:
        return {"text": text}
    return {"text": text[:ECHO_CHARS] + "…", "text_chars": len(text)}


def read_stdin_texts(lines: Iterable[str]) -> list[str]:
    """One text per non-blank line: a JSON string, {"text": ...}, or else the line as is."""
    texts = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        try:
            item: Any = json.loads(line)
        except ValueError:
            item = line
        if isinstance(item, dict):
            item = item.get("text")
            if not isinstance(item, str):
                raise UsageError(f'stdin line {number} is a JSON object without a "text" string',
                                 hint=_STDIN_HINT)
        texts.append(item if isinstance(item, str) else line)
    return texts


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
    app.command("inspect")(inspect_command)
