"""Keys: signing key pairs, and key providers that hold the key-encryption key (KEK).

Two kinds of keys, kept apart on purpose (key separation):

* a **signing key pair** (EC P-256, PEM): the private half signs bundles (``onnxguard sign``), the
  public half verifies them (``onnxguard verify``, ``--public-key`` on load);
* a **key-encryption key** (256-bit AES): it never encrypts model files itself; it only wraps the
  random data key that each bundle gets (envelope encryption, see ``encryption.py``).

The KEK lives outside the bundle and is reached through a *key source* string, ``SCHEME:REST``
(``env:NAME``, ``file:PATH``).  Each scheme maps to a :class:`KeyProvider`: an object that wraps and
unwraps data keys.  A KMS or Vault provider implements the same two methods by calling the remote
service (the KEK then never leaves it) and registers itself with :func:`register_key_provider`, or
from another package through the ``onnxguard.key_providers`` entry-point group.  Key material is
never logged, never put in an error message and never written into a bundle.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from onnxguard._files import atomic_write
from onnxguard.errors import DecryptionError, KeySourceError, OutputExistsError, UsageError

PRIVATE_KEY_NAME = "private.pem"
PUBLIC_KEY_NAME = "public.pem"
KEK_NAME = "kek.key"
KEK_BYTES = 32
ENTRY_POINT_GROUP = "onnxguard.key_providers"
LOCAL_WRAP_ALGORITHM = "AES-256-GCM"
_WRAP_AAD_PREFIX = b"onnxguard/wrap/v1\x00"
_KEY_ID_LABEL = b"onnxguard/key-id/v1"
_NONCE_BYTES = 12


# --- signing key pairs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyPairPaths:
    """Where ``keygen`` wrote a signing key pair (and the KEK, when asked for one)."""

    private_key: Path
    public_key: Path
    fingerprint: str
    kek: Path | None = None


def generate_signing_keypair(
    out_dir: Path,
    *,
    password: bytes | None = None,
    force: bool = False,
    with_kek: bool = False,
) -> KeyPairPaths:
    """Write a fresh EC P-256 key pair (``private.pem`` mode 0600, ``public.pem``) into ``out_dir``.

    The private key is PKCS#8 PEM, encrypted with ``password`` when one is given.  With
    ``with_kek`` a separate random 256-bit key-encryption key is written to ``kek.key`` (base64,
    mode 0600) for ``--key-source file:...``: signing and encryption never share a key.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / PRIVATE_KEY_NAME, out_dir / PUBLIC_KEY_NAME]
    if with_kek:
        targets.append(out_dir / KEK_NAME)
    if not force and (existing := [p.name for p in targets if p.exists()]):
        raise OutputExistsError(
            f"{out_dir} already holds {', '.join(existing)}; refusing to overwrite keys",
            hint="choose another --out directory, or pass --force to replace them",
        )
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_secret_file(targets[0], private_pem)
    atomic_write(targets[1], public_pem, mode=0o644)
    kek_path = None
    if with_kek:
        kek_path = targets[2]
        write_secret_file(kek_path, base64.b64encode(os.urandom(KEK_BYTES)) + b"\n")
    return KeyPairPaths(
        private_key=targets[0],
        public_key=targets[1],
        fingerprint=public_key_fingerprint(public_pem),
        kek=kek_path,
    )


def public_key_fingerprint(public_pem: bytes) -> str:
    """sha256 of the PEM public key: the ``hint`` model-signing records in its signatures."""
    key = serialization.load_pem_public_key(public_pem)
    canonical = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(canonical).hexdigest()


def load_public_key_pem(path: Path) -> bytes:
    """Read an EC public key (PEM) and return its canonical PEM, with a clear error if unusable."""
    data = _read_key_file(Path(path), "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeySourceError(
            f"{path} is not a PEM public key",
            hint="pass the public.pem written by `onnxguard keygen` (not the private key)",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeySourceError(
            f"{path} is not an elliptic-curve public key",
            hint="onnxguard signs with EC keys (P-256, P-384, P-521); see `onnxguard keygen`",
        )
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_pem_from_private(path: Path, password: bytes | None = None) -> bytes:
    """The public half of a private signing key, as canonical PEM."""
    key = load_private_key(path, password)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: Path, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Load an EC private key (PEM), translating every failure into a KeySourceError."""
    data = _read_key_file(Path(path), "private key")
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError as exc:
        raise KeySourceError(
            f"private key {path} is encrypted and no password was given"
            if password is None
            else f"private key {path} is not encrypted but a password was given",
            hint="pass the key's password with --password-env NAME (an env var holding it)",
        ) from exc
    except ValueError as exc:
        raise KeySourceError(
            f"{path} is not a usable PEM private key (or the password is wrong)",
            hint="pass the private.pem written by `onnxguard keygen`",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeySourceError(
            f"{path} is not an elliptic-curve private key",
            hint="onnxguard signs with EC keys (P-256, P-384, P-521); see `onnxguard keygen`",
        )
    return key


def _read_key_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise KeySourceError(
            f"{what} file {path} does not exist", hint="check the path, or run `onnxguard keygen`"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeySourceError(
            f"cannot read {what} {path}: {exc.strerror}", hint="check permissions"
        ) from exc


def write_secret_file(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600 from the start (never readable by others, not even briefly)."""
    atomic_write(path, data, mode=0o600)


# --- key providers -------------------------------------------------------------------------------
@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps a bundle's data key with a key-encryption key it holds.

    ``context`` is associated data that must be the same to unwrap as it was to wrap (onnxguard
    passes the manifest digest, so a wrapped key cannot be moved to another bundle); a KMS provider
    passes it as the KMS "encryption context".  ``key_id`` names the KEK without revealing it; it
    is recorded in the manifest and compared before unwrapping, so a wrong key gets a clear error.
    """

    @property
    def key_id(self) -> str:
        """A stable, non-secret name of the KEK (a fingerprint, a KMS key ARN...)."""
        ...

    @property
    def wrap_algorithm(self) -> str:
        """How data keys are wrapped, recorded in the manifest (e.g. ``AES-256-GCM``)."""
        ...

    @property
    def description(self) -> str:
        """Where the key comes from, for messages (``env:NAME``); never the key itself."""
        ...

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        """Encrypt ``data_key`` under the KEK, authenticating ``context``."""
        ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """Recover the data key; raise DecryptionError when it does not authenticate."""
        ...


class LocalKeyProvider:
    """A KEK held in this process (from an env var or a file): wraps with AES-256-GCM."""

    wrap_algorithm = LOCAL_WRAP_ALGORITHM

    def __init__(self, kek: bytes, description: str) -> None:
        if len(kek) != KEK_BYTES:
            raise KeySourceError(
                f"key from {description} is {len(kek) * 8} bits; a 256-bit key is required",
                hint=_KEK_FORMAT_HINT,
            )
        self._aead = AESGCM(kek)
        self._key_id = "kek-" + hmac.new(kek, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:32]
        self._description = description

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def description(self) -> str:
        return self._description

    def __repr__(self) -> str:  # never show key material, even in a debugger or traceback
        return f"{type(self).__name__}({self._description!r}, key_id={self._key_id!r})"

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, _WRAP_AAD_PREFIX + context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(wrapped) < _NONCE_BYTES + 16:
            raise DecryptionError(
                "the wrapped data key is too short", hint="the manifest was damaged; rebuild"
            )
        try:
            return self._aead.decrypt(
                wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], _WRAP_AAD_PREFIX + context
            )
        except InvalidTag as exc:
            raise DecryptionError(
                "the wrapped data key does not authenticate",
                hint="the manifest or its wrapped key was changed after encryption",
            ) from exc


_KEK_FORMAT_HINT = (
    "a key-encryption key is 32 random bytes, given as 64 hex characters or base64 "
    "(e.g. `openssl rand -base64 32`, or `onnxguard keygen --kek`)"
)


def parse_kek(text: bytes, description: str, *, allow_raw: bool = False) -> bytes:
    """Decode a 256-bit key from hex or base64 (standard or URL-safe); files may hold raw bytes.

    Raw bytes are refused for env vars: a 32-character passphrase would pass as a weak key.
    """
    if allow_raw and len(text) == KEK_BYTES:
        return text
    stripped = text.strip()
    if len(stripped) == 2 * KEK_BYTES:
        try:
            return bytes.fromhex(stripped.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            padded = stripped + b"=" * (-len(stripped) % 4)
            key = decode(padded, validate=True) if decode is base64.b64decode else decode(padded)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEK_BYTES:
            return key
    # Never echo the value: it may be a (mis-encoded) secret.
    raise KeySourceError(f"{description} does not hold a 256-bit key", hint=_KEK_FORMAT_HINT)


class EnvKeyProvider(LocalKeyProvider):
    """``env:NAME``: the KEK is in environment variable NAME (hex or base64)."""

    def __init__(self, name: str) -> None:
        if not name:
            raise KeySourceError(
                "key source `env:` names no variable", hint="use env:NAME, e.g. env:ONNXGUARD_KEK"
            )
        value = os.environ.get(name)
        if not value:
            raise KeySourceError(
                f"environment variable {name} is not set or empty",
                hint=f"export {name} with the key-encryption key (hex or base64 of 32 bytes)",
            )
        description = f"env:{name}"
        super().__init__(parse_kek(value.encode(), description), description)


class FileKeyProvider(LocalKeyProvider):
    """``file:PATH``: the KEK is in a file (32 raw bytes, hex or base64) readable by owner only."""

    def __init__(self, path: str) -> None:
        if not path:
            raise KeySourceError(
                "key source `file:` names no file", hint="use file:PATH, e.g. file:/run/kek.key"
            )
        file = Path(path)
        description = f"file:{path}"
        try:
            st = file.stat()
            if not stat.S_ISREG(st.st_mode):
                raise KeySourceError(
                    f"key file {path} is not a regular file", hint="point to the key file itself"
                )
            # Group-read is tolerated (secrets mounted with fsGroup), anything wider is not.
            if st.st_mode & 0o037:
                raise KeySourceError(
                    f"key file {path} is accessible by other users "
                    f"(mode {stat.S_IMODE(st.st_mode):04o})",
                    hint=f"restrict it: chmod 600 {path}",
                )
            data = file.read_bytes()
        except FileNotFoundError as exc:
            raise KeySourceError(
                f"key file {path} does not exist",
                hint="check the path, or create one with `onnxguard keygen --kek`",
            ) from exc
        except OSError as exc:
            raise KeySourceError(
                f"cannot read key file {path}: {exc.strerror}", hint="check permissions"
            ) from exc
        super().__init__(parse_kek(data, description, allow_raw=True), description)


ProviderFactory = Callable[[str], KeyProvider]
_PROVIDERS: dict[str, ProviderFactory] = {"env": EnvKeyProvider, "file": FileKeyProvider}


def register_key_provider(scheme: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Make ``SCHEME:REST`` key sources resolve to ``factory(REST)``."""
    if not scheme.isidentifier():
        raise UsageError(f"key provider scheme {scheme!r} must be an identifier")
    if scheme in _PROVIDERS and not replace:
        raise UsageError(
            f"a key provider for {scheme!r} is already registered",
            hint="pass replace=True to override it",
        )
    _PROVIDERS[scheme] = factory


def key_provider_schemes() -> list[str]:
    """Registered schemes plus those installed packages offer through entry points."""
    names = set(_PROVIDERS)
    names.update(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve_key_source(source: str | KeyProvider) -> KeyProvider:
    """Turn ``env:NAME`` / ``file:PATH`` (or a provider object) into a KeyProvider."""
    if isinstance(source, KeyProvider):
        return source
    scheme, sep, rest = source.partition(":")
    if not sep:
        raise KeySourceError(
            f"key source {source!r} has no scheme",
            hint="use env:NAME or file:PATH (e.g. --key-source env:ONNXGUARD_KEK)",
        )
    factory = _PROVIDERS.get(scheme)
    if factory is None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=scheme):
            factory = ep.load()
            break
    if factory is None:
        raise KeySourceError(
            f"unknown key source scheme {scheme!r} (known: {', '.join(key_provider_schemes())})",
            hint="use env:NAME or file:PATH; other providers register through the "
            f"{ENTRY_POINT_GROUP!r} entry-point group (see docs/SECURITY.md)",
        )
    provider = factory(rest)
    if not isinstance(provider, KeyProvider):
        raise KeySourceError(
            f"the key provider for {scheme!r} returned {type(provider).__name__}, "
            "which does not implement KeyProvider",
            hint="a provider needs key_id, wrap_algorithm, description, wrap() and unwrap()",
        )
    return provider
