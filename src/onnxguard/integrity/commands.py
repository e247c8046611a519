"""Commands: ``keygen``, ``sign``, ``verify``, ``encrypt``, ``decrypt``.

Options map 1:1 to the library functions; ``--pub`` falls back to ``ONNXGUARD_PUBLIC_KEY`` and
``--key-source`` to ``ONNXGUARD_KEY_SOURCE``.  Secrets are never taken on the command line (they
would land in shell history and ``ps``): passwords and tokens come from env vars named by
``--password-env`` / ``--identity-token-env``.  Errors are raised, and rendered by ``cli.main``.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from onnxguard.errors import KeySourceError, UsageError

console = Console()

PUBLIC_KEY_ENV = "ONNXGUARD_PUBLIC_KEY"
KEY_SOURCE_ENV = "ONNXGUARD_KEY_SOURCE"


def _secret_from_env(name: str | None, what: str) -> str | None:
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise KeySourceError(
            f"environment variable {name} (the {what}) is not set or empty",
            hint=f"export {name} before running the command",
        )
    return value


def keygen_command(
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the keys into."),
    kek: bool = typer.Option(
        False,
        "--kek",
        help="Also write kek.key: a random 256-bit key-encryption key for "
        "`encrypt --key-source file:DIR/kek.key` (separate from the signing key).",
    ),
    password_env: str | None = typer.Option(
        None,
        "--password-env",
        metavar="NAME",
        help="Encrypt private.pem with the password held in env var NAME.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing key files."),
) -> None:
    """Generate an EC P-256 signing key pair (private.pem mode 0600, public.pem)."""
    from onnxguard.integrity.keys import generate_signing_keypair

    password = _secret_from_env(password_env, "private key password")
    paths = generate_signing_keypair(
        out, password=password.encode() if password else None, force=force, with_kek=kek
    )
    console.print(f"private key  {paths.private_key}  (keep it secret; mode 0600)")
    console.print(f"public key   {paths.public_key}  (fingerprint {paths.fingerprint[:16]}…)")
    if paths.kek is not None:
        console.print(f"KEK          {paths.kek}  (use --key-source file:{paths.kek}; mode 0600)")


def sign_command(
    bundle: Path = typer.Argument(..., help="Bundle directory to sign."),
    key: Path | None = typer.Option(None, "--key", help="EC private key (PEM) to sign with."),
    password_env: str | None = typer.Option(
        None, "--password-env", metavar="NAME", help="Env var holding the key's password."
    ),
    cert: Path | None = typer.Option(
        None, "--cert", help="Certificate mode: X.509 signing certificate for --key."
    ),
    cert_chain: list[Path] = typer.Option(
        [], "--cert-chain", help="Certificate mode: intermediate/root certificates (repeatable)."
    ),
    sigstore: bool = typer.Option(
        False, "--sigstore", help="Keyless Sigstore signing (needs network access and OIDC)."
    ),
    identity_token_env: str | None = typer.Option(
        None, "--identity-token-env", metavar="NAME", help="Sigstore: env var with an OIDC token."
    ),
    oidc_issuer: str | None = typer.Option(None, "--oidc-issuer", help="Sigstore: OIDC issuer."),
    sigstore_staging: bool = typer.Option(
        False, "--sigstore-staging", help="Sigstore: use the staging instance (testing only)."
    ),
    trust_config: Path | None = typer.Option(
        None, "--trust-config", help="Sigstore: custom trust configuration (private instance)."
    ),
) -> None:
    """Sign every file of a bundle (manifest included) into model.sig (OpenSSF Model Signing)."""
    from onnxguard.integrity.signing import sign_bundle, sign_bundle_sigstore

    if sigstore == (key is not None):
        raise UsageError(
            "choose one signing mode: --key KEY.pem (offline), or --sigstore (keyless, network)",
            hint="create a key pair with `onnxguard keygen --out keys/`",
        )
    if key is None:
        token = _secret_from_env(identity_token_env, "OIDC identity token")
        sign_bundle_sigstore(
            bundle,
            identity_token=token,
            oidc_issuer=oidc_issuer,
            use_staging=sigstore_staging,
            trust_config=trust_config,
        )
        console.print(f"signed {bundle} with Sigstore (keyless)")
        return
    if cert_chain and cert is None:
        raise UsageError("--cert-chain needs --cert", hint="pass the signing certificate too")
    password = _secret_from_env(password_env, "private key password")
    sign_bundle(
        bundle,
        key,
        password=password.encode() if password else None,
        certificate=cert,
        certificate_chain=cert_chain,
    )
    mode = "certificate" if cert else "key"
    console.print(f"signed {bundle} ({mode} mode): {bundle / 'model.sig'}")


def verify_command(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., help="Bundle directory to verify."),
    pub: Path | None = typer.Option(
        None, "--pub", envvar=PUBLIC_KEY_ENV, help="EC public key (PEM) of the signer."
    ),
    cert_chain: list[Path] = typer.Option(
        [],
        "--cert-chain",
        help="Certificate mode: trusted certificate chain (repeatable).",
    ),
    cert_mode: bool = typer.Option(
        False, "--certificate", help="Certificate mode with the OS trust store (no --cert-chain)."
    ),
    sigstore_identity: str | None = typer.Option(
        None, "--sigstore-identity", help="Sigstore: expected signer identity (e.g. an e-mail)."
    ),
    sigstore_issuer: str | None = typer.Option(
        None, "--sigstore-issuer", help="Sigstore: expected OIDC issuer URL."
    ),
    sigstore_staging: bool = typer.Option(
        False, "--sigstore-staging", help="Sigstore: use the staging instance (testing only)."
    ),
    trust_config: Path | None = typer.Option(
        None, "--trust-config", help="Sigstore: custom trust configuration (offline root)."
    ),
) -> None:
    """Verify a bundle's signature: every file, nothing added or removed, the right signer."""
    from onnxguard.integrity.signing import (
        SignatureInfo,
        verify_signature,
        verify_signature_certificate,
        verify_signature_sigstore,
    )

    certificate = cert_mode or bool(cert_chain)
    sigstore = sigstore_identity is not None or sigstore_issuer is not None
    # A key from the environment yields to a mode chosen explicitly on the command line.
    source = ctx.get_parameter_source("pub")
    if (certificate or sigstore) and source is not None and source.name == "ENVIRONMENT":
        pub = None
    if sum((pub is not None, certificate, sigstore)) != 1:
        raise UsageError(
            "choose one verification mode: --pub PUB.pem, --cert-chain CA.pem, or "
            "--sigstore-identity ID --sigstore-issuer URL",
            hint=f"with a key pair from `onnxguard keygen`, pass --pub public.pem "
            f"(or set {PUBLIC_KEY_ENV})",
        )
    info: SignatureInfo
    if pub is not None:
        info = verify_signature(bundle, pub)
    elif certificate:
        info = verify_signature_certificate(bundle, cert_chain)
    else:
        if not (sigstore_identity and sigstore_issuer):
            raise UsageError(
                "Sigstore verification needs both --sigstore-identity and --sigstore-issuer"
            )
        info = verify_signature_sigstore(
            bundle,
            identity=sigstore_identity,
            oidc_issuer=sigstore_issuer,
            use_staging=sigstore_staging,
            trust_config=trust_config,
        )
    who = f"key {info.key_fingerprint[:16]}…" if info.key_fingerprint else info.method
    enc = " (encrypted)" if info.manifest.encryption else ""
    console.print(
        f"[green]verified[/]: {bundle}{enc}: {len(info.files)} files signed by {who}, "
        "none added, removed or changed",
        highlight=False,
    )


_KEY_SOURCE_HELP = (
    "Where the key-encryption key is: env:NAME (hex/base64 in an env var) or file:PATH."
)


def encrypt_command(
    bundle: Path = typer.Argument(..., help="Bundle directory to encrypt in place."),
    key_source: str = typer.Option(
        ..., "--key-source", envvar=KEY_SOURCE_ENV, help=_KEY_SOURCE_HELP
    ),
    sign_key: Path | None = typer.Option(
        None,
        "--sign-key",
        help="Re-sign after encrypting (needed for a signed bundle; its signature must verify "
        "with this key).",
    ),
    password_env: str | None = typer.Option(
        None, "--password-env", metavar="NAME", help="Env var holding --sign-key's password."
    ),
) -> None:
    """Encrypt a bundle's files at rest (AES-256-GCM envelope); the manifest stays readable."""
    from onnxguard.integrity.encryption import encrypt_bundle

    password = _secret_from_env(password_env, "private key password")
    result = encrypt_bundle(
        bundle, key_source, sign_key=sign_key, sign_password=password.encode() if password else None
    )
    signed = ", re-signed" if result.resigned else ""
    console.print(
        f"encrypted {bundle}: {', '.join(result.files)} with key {result.key_id}{signed}",
        highlight=False,
    )


def decrypt_command(
    bundle: Path = typer.Argument(..., help="Encrypted bundle directory to decrypt in place."),
    key_source: str = typer.Option(
        ..., "--key-source", envvar=KEY_SOURCE_ENV, help=_KEY_SOURCE_HELP
    ),
    sign_key: Path | None = typer.Option(
        None,
        "--sign-key",
        help="Re-sign after decrypting (needed for a signed bundle; its signature must verify "
        "with this key).",
    ),
    password_env: str | None = typer.Option(
        None, "--password-env", metavar="NAME", help="Env var holding --sign-key's password."
    ),
) -> None:
    """Decrypt a bundle to plaintext on disk (serving never needs this: it decrypts in memory)."""
    from onnxguard.integrity.encryption import decrypt_bundle

    password = _secret_from_env(password_env, "private key password")
    result = decrypt_bundle(
        bundle, key_source, sign_key=sign_key, sign_password=password.encode() if password else None
    )
    signed = ", re-signed" if result.resigned else ""
    console.print(f"decrypted {bundle}: {', '.join(result.files)}{signed}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen_command)
    app.command("sign")(sign_command)
    app.command("verify")(verify_command)
    app.command("encrypt")(encrypt_command)
    app.command("decrypt")(decrypt_command)
