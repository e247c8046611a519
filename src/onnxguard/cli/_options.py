"""Every option that more than one command takes, defined once.

A command declares ``public_key: PublicKey = None`` and gets the same flag, env fallback, help
text and path check as every other command.  Paths that must exist are checked here, while the
command line is parsed, so a missing file is the same usage error (exit 2) for every command and
nothing slow has started yet.  Hidden aliases of old names (``--pub``, ``--cert``, ``--out``,
``--key``) are rewritten by the root group (``cli.OnnxGuardGroup``), so help shows one name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from onnxguard.errors import PathNotFoundError

PUBLIC_KEY_ENV = "ONNXGUARD_PUBLIC_KEY"
KEY_SOURCE_ENV = "ONNXGUARD_KEY_SOURCE"

HIDDEN_ALIASES: dict[str, str] = {
    "--pub": "--public-key",
    "--cert": "--certificate",
    "--out": "--output",
    "--key": "--sign-key",
}
"""Old option names, still accepted where the new name exists (shown nowhere in help)."""


def must_exist(value: Path | None) -> Path | None:
    if value is not None and not value.exists():
        raise PathNotFoundError(
            f"{value} does not exist", hint="check the path (relative paths start in the "
            "current directory)")
    return value


def _existing_list(values: list[Path]) -> list[Path]:
    for value in values:
        must_exist(value)
    return values


def output_option(what: str) -> Any:
    """``-o/--output``: where a command writes (the help says what); typed Any for a default."""
    return typer.Option(..., "--output", "-o", metavar="PATH", help=what)


BundleDir = Annotated[Path, typer.Argument(
    callback=must_exist, metavar="BUNDLE", help="Bundle directory written by `onnxguard build`.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Force = Annotated[bool, typer.Option("--force", help="Replace existing output (see the help).")]
PublicKey = Annotated[Path | None, typer.Option(
    "--public-key", envvar=PUBLIC_KEY_ENV, callback=must_exist, metavar="PUB.pem",
    help="Require a valid signature by this EC public key (PEM).")]
SignKey = Annotated[Path | None, typer.Option(
    "--sign-key", callback=must_exist, metavar="KEY.pem",
    help="EC private key (PEM) to sign with (see `onnxguard keygen`).")]
PasswordEnv = Annotated[str | None, typer.Option(
    "--password-env", metavar="NAME", help="Env var holding --sign-key's password.")]
KeySource = Annotated[str | None, typer.Option(
    "--key-source", envvar=KEY_SOURCE_ENV, metavar="env:NAME|file:PATH",
    help="Key-encryption key of an encrypted bundle: env:NAME (hex/base64 in an env var) or "
    "file:PATH.")]
Providers = Annotated[str | None, typer.Option(
    "--providers", help="Comma-separated execution providers (default: TensorRT → CUDA → CPU, "
    "whichever onnxruntime reports available).")]
Threads = Annotated[int | None, typer.Option(
    "--threads", min=1, help="ONNX Runtime intra-op threads (default: the cores available).")]
Calibration = Annotated[Path | None, typer.Option(
    "--calibration", callback=must_exist, metavar="FILE",
    help="Text file (one input per line): calibrates static int8 (QDQ).")]
TrustConfig = Annotated[Path | None, typer.Option(
    "--trust-config", callback=must_exist, metavar="FILE",
    help="Sigstore: custom trust configuration (private instance or offline root).")]
SigstoreStaging = Annotated[bool, typer.Option(
    "--sigstore-staging", help="Sigstore: use the staging instance (testing only).")]
CertChain = Annotated[list[Path], typer.Option(
    "--cert-chain", callback=_existing_list, metavar="CA.pem",
    help="Certificate mode: intermediate/root certificates (repeatable).")]
