"""``keygen``, ``sign``, ``verify``, ``encrypt``, ``decrypt``: keys, signatures, encryption.

Options map 1:1 to the library functions.  Secrets are never taken on the command line (they
would land in shell history and ``ps``): passwords and tokens come from env vars named by
``--password-env`` / ``--identity-token-env``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from onnxguard.cli._options import (
    PUBLIC_KEY_ENV,
    BundleDir,
    CertChain,
    PasswordEnv,
    PublicKey,
    SignKey,
    SigstoreStaging,
    TrustConfig,
    must_exist,
    output_option,
)
from onnxguard.cli._output import console
from onnxguard.errors import KeySourceError, UsageError

_KEY_SOURCE_HELP = ("Where the key-encryption key is: env:NAME (hex/base64 in an env var) or "
                    "file:PATH.")
RequiredKeySource = Annotated[str, typer.Option(
    "--key-source", envvar="ONNXGUARD_KEY_SOURCE", metavar="env:NAME|file:PATH",
    help=_KEY_SOURCE_HELP)]
ResignKey = Annotated[Path | None, typer.Option(
    "--sign-key", callback=must_exist, metavar="KEY.pem",
    help="Re-sign afterwards (needed for a signed bundle; its signature must verify with this "
    "key).")]


def secret_from_env(name: str | None, what: str) -> str | None:
    """The value of env var ``name`` (None when no name was given); unset is an error."""
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise KeySourceError(
            f"environment variable {name} (the {what}) is not set or empty",
            hint=f"export {name} before running the command",
        )
    return value


def _password(name: str | None) -> bytes | None:
    password = secret_from_env(name, "private key password")
    return password.encode() if password else None


def keygen_command(
    output: Path = output_option("Directory to write the keys into."),
    kek: Annotated[bool, typer.Option(
        "--kek", help="Also write kek.key: a random 256-bit key-encryption key for "
        "`encrypt --key-source file:DIR/kek.key` (separate from the signing key).")] = False,
    password_env: Annotated[str | None, typer.Option(
        "--password-env", metavar="NAME",
        help="Encrypt private.pem with the password held in env var NAME.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing key files.")] = False,
) -> None:
    """Generate an EC P-256 signing key pair (private.pem mode 0600, public.pem)."""
    from onnxguard.integrity.keys import generate_signing_keypair

    paths = generate_signing_keypair(output, password=_password(password_env), force=force,
                                     with_kek=kek)
    out = console()
    out.print(f"private key  {paths.private_key}  (keep it secret; mode 0600)", markup=False)
    out.print(f"public key   {paths.public_key}  (fingerprint {paths.fingerprint[:16]}…)",
              markup=False)
    if paths.kek is not None:
        out.print(f"KEK          {paths.kek}  (use --key-source file:{paths.kek}; mode 0600)",
                  markup=False)


def sign_command(
    bundle: BundleDir,
    sign_key: SignKey = None,
    password_env: PasswordEnv = None,
    certificate: Annotated[Path | None, typer.Option(
        "--certificate", callback=must_exist,
        help="Certificate mode: X.509 signing certificate for --sign-key.")] = None,
    cert_chain: CertChain = [],  # noqa: B006 (typer copies the default)
    sigstore: Annotated[bool, typer.Option(
        "--sigstore", help="Keyless Sigstore signing (needs network access and OIDC).")] = False,
    identity_token_env: Annotated[str | None, typer.Option(
        "--identity-token-env", metavar="NAME",
        help="Sigstore: env var with an OIDC token.")] = None,
    oidc_issuer: Annotated[str | None, typer.Option(
        "--oidc-issuer", help="Sigstore: OIDC issuer.")] = None,
    sigstore_staging: SigstoreStaging = False,
    trust_config: TrustConfig = None,
) -> None:
    """Sign every file of a bundle (manifest included) into model.sig (OpenSSF Model Signing)."""
    from onnxguard.integrity.signing import sign_bundle, sign_bundle_sigstore

    if sigstore == (sign_key is not None):
        raise UsageError(
            "choose one signing mode: --sign-key KEY.pem (offline), or --sigstore (keyless, "
            "network)",
            hint="create a key pair with `onnxguard keygen -o keys/`",
        )
    if sign_key is None:
        token = secret_from_env(identity_token_env, "OIDC identity token")
        sign_bundle_sigstore(bundle, identity_token=token, oidc_issuer=oidc_issuer,
                             use_staging=sigstore_staging, trust_config=trust_config)
        console().print(f"signed {bundle} with Sigstore (keyless)", markup=False)
        return
    if cert_chain and certificate is None:
        raise UsageError("--cert-chain needs --certificate", hint="pass the signing certificate")
    sign_bundle(bundle, sign_key, password=_password(password_env), certificate=certificate,
                certificate_chain=cert_chain)
    mode = "certificate" if certificate else "key"
    console().print(f"signed {bundle} ({mode} mode): {bundle / 'model.sig'}", markup=False)


def verify_command(
    ctx: typer.Context,
    bundle: BundleDir,
    public_key: PublicKey = None,
    cert_chain: CertChain = [],  # noqa: B006 (typer copies the default)
    os_trust_store: Annotated[bool, typer.Option(
        "--os-trust-store",
        help="Certificate mode with the OS trust store (instead of --cert-chain).")] = False,
    sigstore_identity: Annotated[str | None, typer.Option(
        "--sigstore-identity", help="Sigstore: expected signer identity (e.g. an e-mail).")] = None,
    sigstore_issuer: Annotated[str | None, typer.Option(
        "--sigstore-issuer", help="Sigstore: expected OIDC issuer URL.")] = None,
    sigstore_staging: SigstoreStaging = False,
    trust_config: TrustConfig = None,
) -> None:
    """Check every file against the manifest's sha256; with a key (or certificate, or Sigstore
    identity) also the signature: the right signer, nothing added, removed or changed."""
    certificate = os_trust_store or bool(cert_chain)
    sigstore = sigstore_identity is not None or sigstore_issuer is not None
    # A key from the environment yields to a mode chosen explicitly on the command line.
    source = ctx.get_parameter_source("public_key")
    if (certificate or sigstore) and source is not None and source.name == "ENVIRONMENT":
        public_key = None
    modes = sum((public_key is not None, certificate, sigstore))
    if modes > 1:
        raise UsageError(
            "choose one verification mode: --public-key PUB.pem, --cert-chain CA.pem, or "
            "--sigstore-identity ID --sigstore-issuer URL",
            hint=f"with a key pair from `onnxguard keygen`, pass --public-key public.pem (or set "
            f"{PUBLIC_KEY_ENV})",
        )
    if modes == 0:
        _verify_hashes(bundle)
        return
    _verify_signature(bundle, public_key, cert_chain if certificate else None,
                      (sigstore_identity, sigstore_issuer), sigstore_staging, trust_config)


def _verify_hashes(bundle: Path) -> None:
    from onnxguard.bundle import SIGNATURE_NAME, verify_bundle_files

    manifest = verify_bundle_files(bundle)
    enc = " (encrypted)" if manifest.encryption else ""
    signed = ("; it is signed: pass --public-key PUB.pem to check the signature too"
              if (bundle / SIGNATURE_NAME).is_file() else "; it is not signed")
    console().print(f"verified: {bundle}{enc}: all {len(manifest.files)} files match their "
                    f"manifest hashes, none added or missing{signed}", markup=False)


def _verify_signature(
    bundle: Path,
    public_key: Path | None,
    cert_chain: list[Path] | None,
    sigstore: tuple[str | None, str | None],
    staging: bool,
    trust_config: Path | None,
) -> None:
    from onnxguard.integrity.signing import (
        SignatureInfo,
        verify_signature,
        verify_signature_certificate,
        verify_signature_sigstore,
    )

    info: SignatureInfo
    if public_key is not None:
        info = verify_signature(bundle, public_key)
    elif cert_chain is not None:
        info = verify_signature_certificate(bundle, cert_chain)
    else:
        identity, issuer = sigstore
        if not (identity and issuer):
            raise UsageError(
                "Sigstore verification needs both --sigstore-identity and --sigstore-issuer",
                hint="pass the signer's identity and its OIDC issuer URL")
        info = verify_signature_sigstore(bundle, identity=identity, oidc_issuer=issuer,
                                         use_staging=staging, trust_config=trust_config)
    who = f"key {info.key_fingerprint[:16]}…" if info.key_fingerprint else info.method
    enc = " (encrypted)" if info.manifest.encryption else ""
    console().print(f"verified: {bundle}{enc}: {len(info.files)} files signed by {who}, none "
                    "added, removed or changed", markup=False)


def encrypt_command(
    bundle: BundleDir,
    key_source: RequiredKeySource,
    sign_key: ResignKey = None,
    password_env: PasswordEnv = None,
) -> None:
    """Encrypt a bundle's files at rest (AES-256-GCM envelope); the manifest stays readable."""
    from onnxguard.integrity.encryption import encrypt_bundle

    result = encrypt_bundle(bundle, key_source, sign_key=sign_key,
                            sign_password=_password(password_env))
    signed = ", re-signed" if result.resigned else ""
    console().print(f"encrypted {bundle}: {', '.join(result.files)} with key {result.key_id}"
                    f"{signed}", markup=False)


def decrypt_command(
    bundle: BundleDir,
    key_source: RequiredKeySource,
    sign_key: ResignKey = None,
    password_env: PasswordEnv = None,
) -> None:
    """Decrypt a bundle to plaintext on disk (serving never needs this: it decrypts in memory)."""
    from onnxguard.integrity.encryption import decrypt_bundle

    result = decrypt_bundle(bundle, key_source, sign_key=sign_key,
                            sign_password=_password(password_env))
    signed = ", re-signed" if result.resigned else ""
    console().print(f"decrypted {bundle}: {', '.join(result.files)}{signed}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen_command)
    app.command("sign")(sign_command)
    app.command("verify")(verify_command)
    app.command("encrypt")(encrypt_command)
    app.command("decrypt")(decrypt_command)
