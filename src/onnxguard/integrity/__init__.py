"""Integrity of bundles: signing/verification (OpenSSF Model Signing) and encryption at rest.

Heavy or optional libraries (``model_signing``) are imported lazily by the functions that need
them, so importing this package (the server does, through the loader) stays cheap.
"""

from __future__ import annotations

from onnxguard.integrity.encryption import decrypt_bundle, decrypt_files, encrypt_bundle
from onnxguard.integrity.keys import (
    KeyProvider,
    generate_signing_keypair,
    register_key_provider,
    resolve_key_source,
)
from onnxguard.integrity.loader import LoadedBundle, open_bundle
from onnxguard.integrity.signing import (
    SignatureInfo,
    sign_bundle,
    sign_bundle_sigstore,
    verify_bundle,
    verify_signature,
    verify_signature_certificate,
    verify_signature_sigstore,
)

__all__ = [
    "KeyProvider",
    "LoadedBundle",
    "SignatureInfo",
    "decrypt_bundle",
    "decrypt_files",
    "encrypt_bundle",
    "generate_signing_keypair",
    "open_bundle",
    "register_key_provider",
    "resolve_key_source",
    "sign_bundle",
    "sign_bundle_sigstore",
    "verify_bundle",
    "verify_signature",
    "verify_signature_certificate",
    "verify_signature_sigstore",
]
