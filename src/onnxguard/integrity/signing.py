"""Sign and verify bundles with OpenSSF Model Signing (the ``model-signing`` library).

The signature (``model.sig``, a Sigstore bundle holding a DSSE envelope) covers every file of the
bundle, the manifest included: one sha256 per file, no file ignored but ``model.sig`` itself (git
paths are *not* ignored, unlike the library's default).  Modes:

===========  ====================================  ============================================
mode         sign                                  verify
===========  ====================================  ============================================
key          offline: EC private key (PEM)         offline: EC public key (PEM)
certificate  offline: key + X.509 signing cert     offline: certificate chain to a trusted root
sigstore     **network**: OIDC login, Fulcio,      **network**: Sigstore trust root (TUF) unless
             Rekor (keyless)                       ``trust_config`` points to a local one
===========  ====================================  ============================================

Verification is decided by the library; onnxguard only reads the (then authentic) signed file list
to say precisely what differs (a file added, removed or changed, another key, a forged signature)
and to bind the manifest bytes it parses to the signature.  ``model_signing`` is imported lazily: it
costs ~0.4 s and loading an unsigned bundle does not need it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from onnxguard._files import atomic_write
from onnxguard.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    parse_manifest,
    read_manifest_bytes,
    require_bundle_dir,
    sha256_file,
)
from onnxguard.errors import (
    HashMismatchError,
    OnnxGuardError,
    SignatureError,
    SignatureInvalidError,
    SignatureKeyMismatchError,
    SignatureMissingError,
    SignedFileAddedError,
    SignedFileChangedError,
    SignedFileRemovedError,
)
from onnxguard.integrity.keys import (
    load_private_key,
    load_public_key_pem,
    public_key_fingerprint,
)

if TYPE_CHECKING:
    from model_signing import hashing as ms_hashing
    from model_signing import signing as ms_signing
    from model_signing import verifying as ms_verifying

_HASH: Final = "sha256"
_IGNORED = frozenset({SIGNATURE_NAME})


@dataclass(frozen=True)
class SignatureInfo:
    """A verified signature: who signed, and the sha256 of every signed file (manifest included)."""

    bundle: Path
    method: str
    files: Mapping[str, str]
    manifest: Manifest
    key_fingerprint: str | None = None
    signed_name: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _ParsedSignature:
    files: dict[str, str]
    key_hint: str | None
    signed_name: str


# --- signing -------------------------------------------------------------------------------------
def sign_bundle(
    bundle_dir: Path,
    private_key: Path,
    *,
    password: bytes | None = None,
    certificate: Path | None = None,
    certificate_chain: Sequence[Path] = (),
) -> None:
    """Sign every file of a bundle into ``model.sig`` (offline), replacing any older signature.

    With ``certificate`` the signature carries that X.509 signing certificate (and the chain), for
    verification against a PKI instead of a bare public key.  The bundle must be consistent with
    its manifest first: onnxguard never signs files that do not match what was built.
    """
    key_path = Path(private_key)
    load_private_key(key_path, password)  # clear errors before the library sees the key

    def configure(cfg: ms_signing.Config) -> ms_signing.Config:
        if certificate is None:
            # The library annotates the password as str but hands it to cryptography, which
            # needs bytes (a str raises TypeError): pass the bytes.
            return cfg.use_elliptic_key_signer(
                private_key=key_path,
                password=password,  # type: ignore[arg-type]
            )
        if password:
            raise SignatureError(
                "certificate signing does not support password-protected keys",
                hint="use an unencrypted key file with restricted permissions (chmod 600)",
            )
        return cfg.use_certificate_signer(
            private_key=key_path,
            signing_certificate=Path(certificate),
            certificate_chain=[Path(c) for c in certificate_chain],
        )

    _sign(Path(bundle_dir), configure, method="certificate" if certificate else "key")


def sign_bundle_sigstore(
    bundle_dir: Path,
    *,
    identity_token: str | None = None,
    oidc_issuer: str | None = None,
    use_staging: bool = False,
    use_ambient_credentials: bool = False,
    trust_config: Path | None = None,
) -> None:
    """Keyless signing with Sigstore: **needs the network** (OIDC, Fulcio, Rekor).

    Without ``identity_token`` or ambient credentials the library starts an interactive OIDC
    login (browser or out-of-band code).
    """

    def configure(cfg: ms_signing.Config) -> ms_signing.Config:
        return cfg.use_sigstore_signer(
            oidc_issuer=oidc_issuer,
            use_ambient_credentials=use_ambient_credentials,
            use_staging=use_staging,
            identity_token=identity_token,
            force_oob=True,
            trust_config=trust_config,
        )

    _sign(Path(bundle_dir), configure, method="sigstore")


def _hashing_config() -> ms_hashing.Config:
    from model_signing import hashing

    return (
        hashing.Config()  # type: ignore[no-untyped-call]
        .use_file_serialization(hashing_algorithm=_HASH, allow_symlinks=False)
        .set_ignored_paths(paths=sorted(_IGNORED), ignore_git_paths=False)
    )


def _sign(
    bundle_dir: Path,
    configure: Callable[[ms_signing.Config], ms_signing.Config],
    *,
    method: str,
) -> None:
    from onnxguard.bundle import verify_bundle_files

    manifest_bytes = read_manifest_bytes(bundle_dir)
    manifest = verify_bundle_files(bundle_dir, parse_manifest(manifest_bytes, bundle_dir))
    from model_signing import signing

    config = configure(signing.Config())  # type: ignore[no-untyped-call]
    config = config.set_hashing_config(_hashing_config())
    with tempfile.TemporaryDirectory(prefix="onnxguard-sig-") as tmp:
        out = Path(tmp) / SIGNATURE_NAME
        try:
            config.sign(bundle_dir, out)
        except OnnxGuardError:
            raise
        except Exception as exc:  # the library raises ValueError, OSError, network errors...
            raise SignatureError(
                f"signing {bundle_dir} with {method} mode failed: {exc}",
                hint="check the key/certificate; sigstore mode also needs network access",
            ) from exc
        data = out.read_bytes()
    # Close the window between the consistency check and the library's hashing: what was signed
    # must be exactly the manifest we checked and the files it lists.
    signed = _parse_signature(data).files
    expected = {name: entry.get("sha256") for name, entry in manifest.files.items()}
    expected[MANIFEST_NAME] = hashlib.sha256(manifest_bytes).hexdigest()
    if signed != expected:
        raise SignatureError(
            f"bundle {bundle_dir} changed while it was being signed; no signature was written",
            hint="make sure nothing else writes to the bundle, then sign again",
        )
    atomic_write(bundle_dir / SIGNATURE_NAME, data)


# --- verification --------------------------------------------------------------------------------
def verify_bundle(bundle_dir: Path, public_key: Path) -> None:
    """Verify ``model.sig`` with an EC public key; raises a SignatureError subclass on failure."""
    verify_signature(bundle_dir, public_key)


def verify_signature(bundle_dir: Path, public_key: Path) -> SignatureInfo:
    """Verify the signature offline with a public key and return what it covers.

    Checked before anything in the bundle is parsed: the signature's key hint against the given
    key, the signature itself, every file's hash (no file added, removed or changed), and that
    the manifest lists exactly the signed files with the signed hashes.
    """
    public_key = Path(public_key)
    pem = load_public_key_pem(public_key)
    fingerprint = public_key_fingerprint(pem)

    def configure(cfg: ms_verifying.Config) -> ms_verifying.Config:
        return cfg.use_elliptic_key_verifier(public_key=public_key)

    return _verify(
        Path(bundle_dir),
        configure,
        method="key",
        key_fingerprint=fingerprint,
        key_label=str(public_key),
    )


def verify_signature_certificate(
    bundle_dir: Path, certificate_chain: Sequence[Path] = ()
) -> SignatureInfo:
    """Verify a certificate-mode signature offline against a chain (empty: the OS trust store)."""

    def configure(cfg: ms_verifying.Config) -> ms_verifying.Config:
        return cfg.use_certificate_verifier(certificate_chain=[Path(c) for c in certificate_chain])

    return _verify(Path(bundle_dir), configure, method="certificate")


def verify_signature_sigstore(
    bundle_dir: Path,
    *,
    identity: str,
    oidc_issuer: str,
    use_staging: bool = False,
    trust_config: Path | None = None,
) -> SignatureInfo:
    """Verify a Sigstore keyless signature: **needs the network** unless ``trust_config`` is set."""

    def configure(cfg: ms_verifying.Config) -> ms_verifying.Config:
        return cfg.use_sigstore_verifier(
            identity=identity,
            oidc_issuer=oidc_issuer,
            use_staging=use_staging,
            trust_config=trust_config,
        )

    return _verify(Path(bundle_dir), configure, method="sigstore", extra={"identity": identity})


def _verify(
    bundle_dir: Path,
    configure: Callable[[ms_verifying.Config], ms_verifying.Config],
    *,
    method: str,
    key_fingerprint: str | None = None,
    key_label: str = "",
    extra: Mapping[str, Any] | None = None,
) -> SignatureInfo:
    require_bundle_dir(bundle_dir)
    sig_path = bundle_dir / SIGNATURE_NAME
    if sig_path.is_symlink() or not sig_path.is_file():
        raise SignatureMissingError(
            f"bundle {bundle_dir} is not signed: {SIGNATURE_NAME} is missing",
            hint="sign it with `onnxguard sign BUNDLE --key private.pem`, or load it without "
            "a public key if unsigned bundles are acceptable here",
        )
    data = sig_path.read_bytes()
    parsed = _parse_signature(data)
    if key_fingerprint and parsed.key_hint and parsed.key_hint != key_fingerprint:
        raise SignatureKeyMismatchError(
            f"bundle {bundle_dir} was signed by another key (key {parsed.key_hint[:16]}…), "
            f"not by {key_label} (key {key_fingerprint[:16]}…)",
            hint="verify with the public key of whoever signed it; if you do not trust that key, "
            "do not use the bundle",
            signed_by=parsed.key_hint,
            expected=key_fingerprint,
        )

    from model_signing import verifying

    config = configure(verifying.Config())  # type: ignore[no-untyped-call]
    config = config.set_hashing_config(_hashing_config())
    # The library reads the signature from a path: give it a private in-memory copy of the bytes
    # parsed above, so the file list used below is exactly the one that was verified.
    try:
        with _private_copy(data) as sig_copy:
            config.verify(bundle_dir, sig_copy)
    except OnnxGuardError:
        raise
    except Exception as exc:  # ValueError, cryptography's InvalidSignature, protobuf errors...
        _raise_precise(bundle_dir, parsed, exc, method=method, key_label=key_label)

    manifest_bytes = read_manifest_bytes(bundle_dir)
    if hashlib.sha256(manifest_bytes).hexdigest() != parsed.files.get(MANIFEST_NAME):
        raise SignedFileChangedError(
            f"{MANIFEST_NAME} in {bundle_dir} changed after the signature was checked",
            hint="something is writing to the bundle; make it read-only and load again",
            files=[MANIFEST_NAME],
        )
    manifest = parse_manifest(manifest_bytes, bundle_dir)
    _check_manifest_matches(bundle_dir, manifest, parsed.files)
    return SignatureInfo(
        bundle=bundle_dir,
        method=method,
        files=dict(parsed.files),
        manifest=manifest,
        key_fingerprint=key_fingerprint or parsed.key_hint,
        signed_name=parsed.signed_name,
        extra=dict(extra or {}),
    )


@contextlib.contextmanager
def _private_copy(data: bytes) -> Iterator[Path]:
    """A path to a private copy of ``data``: an anonymous memory file on Linux, else a temp file."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("onnxguard-signature", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "wb") as fh:
                fh.write(data)
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    handle, name = tempfile.mkstemp(prefix="onnxguard-", suffix=".sig")
    try:
        with os.fdopen(handle, "wb") as fh:
            fh.write(data)
        yield Path(name)
    finally:
        os.unlink(name)


def _check_manifest_matches(
    bundle_dir: Path, manifest: Manifest, signed: Mapping[str, str]
) -> None:
    """The signer signed exactly the files the manifest lists, with the manifest's hashes."""
    listed = {name: str(entry.get("sha256")) for name, entry in manifest.files.items()}
    signed_files = {k: v for k, v in signed.items() if k != MANIFEST_NAME}
    if listed != signed_files:
        differ = sorted(set(listed) ^ set(signed_files)) or sorted(
            name for name in listed if listed[name] != signed_files.get(name)
        )
        raise HashMismatchError(
            f"bundle {bundle_dir} is signed, but its manifest does not match the signed files "
            f"({', '.join(differ)})",
            hint="the bundle was signed after being changed by hand; rebuild and sign it again",
            files=differ,
        )


def _raise_precise(
    bundle_dir: Path, parsed: _ParsedSignature, exc: Exception, *, method: str, key_label: str
) -> None:
    """Say what differs: the signed file list is compared with the files on disk."""
    actual = _actual_digests(bundle_dir)
    signed = parsed.files
    added = sorted(set(actual) - set(signed))
    removed = sorted(set(signed) - set(actual))
    changed = sorted(n for n in set(actual) & set(signed) if actual[n] != signed[n])
    fields: dict[str, Any] = {"added": added, "removed": removed, "changed": changed}
    detail = "; ".join(
        f"{label}: {', '.join(names)}"
        for label, names in (("added", added), ("removed", removed), ("changed", changed))
        if names
    )
    if added:
        raise SignedFileAddedError(
            f"bundle {bundle_dir} holds files that were not signed ({detail})",
            hint="someone added files after signing; remove them or rebuild and sign again",
            **fields,
        ) from exc
    if removed:
        raise SignedFileRemovedError(
            f"bundle {bundle_dir} is missing signed files ({detail})",
            hint="the bundle is incomplete; copy it again from its source or rebuild it",
            **fields,
        ) from exc
    if changed:
        raise SignedFileChangedError(
            f"bundle {bundle_dir} was changed after signing ({detail})",
            hint="restore the original files from a trusted copy, or rebuild and sign again",
            **fields,
        ) from exc
    against = f" with {key_label}" if key_label else ""
    raise SignatureInvalidError(
        f"the signature of {bundle_dir} does not verify{against} ({method} mode): {_one_line(exc)}",
        hint=f"{SIGNATURE_NAME} is corrupted or forged; get the bundle again from a trusted source",
    ) from exc


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _actual_digests(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file under the bundle as the library sees them (symlinks flagged)."""
    out: dict[str, str] = {}
    for path in sorted(bundle_dir.rglob("*")):
        name = path.relative_to(bundle_dir).as_posix()
        if name in _IGNORED:
            continue
        if path.is_symlink():
            out[name] = "symlink"
        elif path.is_file():
            out[name] = sha256_file(path)
    return out


def _parse_signature(data: bytes) -> _ParsedSignature:
    """Read the signed file list from a model-signing bundle (authentic only once verified)."""
    try:
        bundle = json.loads(data)
        envelope = bundle["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
        predicate = statement["predicate"]
        serialization = predicate["serialization"]
        resources = predicate["resources"]
        files = {str(r["name"]): str(r["digest"]) for r in resources}
        algorithms = {str(r.get("algorithm", serialization.get("hash_type"))) for r in resources}
        hint = bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint")
        subject = statement.get("subject") or [{}]
        signed_name = str(subject[0].get("name", ""))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise SignatureInvalidError(
            f"{SIGNATURE_NAME} is not a readable OpenSSF model signature ({type(exc).__name__})",
            hint="the signature file is corrupted; get the bundle again or sign it again",
        ) from exc
    ignored = set(_as_list(serialization.get("ignore_paths")))
    if (
        serialization.get("method") != "files"
        or serialization.get("hash_type") != _HASH
        or algorithms - {_HASH}
        or serialization.get("allow_symlinks")
        or not ignored <= set(_IGNORED)
    ):
        raise SignatureInvalidError(
            f"{SIGNATURE_NAME} was not made the way onnxguard signs bundles "
            "(one sha256 per file, nothing ignored but the signature itself)",
            hint="sign the bundle with `onnxguard sign`",
        )
    return _ParsedSignature(
        files=files, key_hint=str(hint) if hint else None, signed_name=signed_name
    )


def _as_list(value: object) -> Iterable[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return []
