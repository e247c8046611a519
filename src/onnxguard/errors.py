"""The one error hierarchy of onnxguard.

Every error carries a message (what is wrong), a ``hint`` (how to fix it) and an ``exit_code``
that the CLI uses.  Foreign exceptions are translated once, at the stage boundary, with
``raise ... from``.  ``EXIT_CODES`` below is the one exit-code table: the CLI prints it in
``onnxguard --help`` and a test keeps README.md's copy equal to it.
"""

from __future__ import annotations

from typing import Any

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "internal error (a bug; run with --verbose and report it)"),
    (2, "usage error: a bad option or argument, or a path that does not exist"),
    (3, "bad source: unreadable directory, missing tokenizer, corrupt or truncated weights, "
        "pickle checkpoint, unsupported architecture, checksum mismatch, Hub unreachable"),
    (4, "export, optimization or quantization failed"),
    (5, "validation failed: the ONNX graph does not match PyTorch"),
    (6, "security: scan findings at or above the threshold, or something could not be scanned"),
    (7, "integrity: hash, signature or decryption check failed"),
    (8, "bundle: output exists, bundle malformed, engine cannot load it, no space left"),
    (9, "server could not start"),
    (10, "bench: a benchmark engine failed to load or run"),
    (130, "interrupted; nothing half-written is left behind"),
)


class OnnxGuardError(Exception):
    """Base error: a message, a hint that says how to fix it, and structured fields."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.fields = fields

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form for ``--json`` output and HTTP error bodies."""
        data: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            data["hint"] = self.hint
        data.update({k: v for k, v in self.fields.items() if _jsonable(v)})
        return data


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


class UsageError(OnnxGuardError):
    """An option or argument is wrong."""

    exit_code = 2


class PathNotFoundError(UsageError):
    """A path given on the command line does not exist (exit 2 for every command)."""


class TaskMismatchError(UsageError):
    """``--task`` asks for a head the model does not have."""


class EmptyTextError(UsageError):
    """A text to predict on is empty or only whitespace: there is nothing to classify."""


class UnknownPromptError(UsageError):
    """A prompt name the model does not define (the message lists the ones it does)."""


class QuestionTooLongError(UsageError):
    """A question fills the model's window: no context token would fit beside it."""


# --- source --------------------------------------------------------------------------------------
class SourceError(OnnxGuardError):
    """The model source cannot be used as given."""

    exit_code = 3


class SourceNotFoundError(SourceError):
    """Directory, package or Hub id does not exist or cannot be read."""


class SourcePathNotFoundError(PathNotFoundError, SourceNotFoundError):
    """A local model directory that does not exist: a usage error like every missing path."""


class HubUnavailableError(SourceError):
    """The Hugging Face Hub could not be reached (offline, firewall, bad revision)."""


class ChecksumMismatchError(SourceError):
    """A file does not match its pinned sha256."""


class CorruptWeightsError(SourceError):
    """Weights are truncated or malformed."""


class UnsafeFormatError(SourceError):
    """A pickle checkpoint, remote code or other format we refuse to load."""


class UnsupportedModelError(SourceError):
    """Architecture or task is not in the registry."""


class MissingTokenizerError(SourceError):
    """No fast tokenizer (tokenizer.json) could be found or made."""


class PromptConfigError(SourceError):
    """``config_sentence_transformers.json`` declares prompts that cannot be honoured as given."""


# --- build stages --------------------------------------------------------------------------------
class ExportError(OnnxGuardError):
    """torch.onnx export failed with every exporter."""

    exit_code = 4


class ValidationFailedError(OnnxGuardError):
    """The ONNX graph does not match PyTorch within tolerance."""

    exit_code = 5


class OptimizationError(OnnxGuardError):
    """ONNX Runtime's transformer optimizer failed."""

    exit_code = 4


class QuantizationError(OnnxGuardError):
    """Quantization failed (not: missed the accuracy budget, which falls back to fp32)."""

    exit_code = 4


# --- security ------------------------------------------------------------------------------------
class SecurityError(OnnxGuardError):
    """A security check refused an artifact."""

    exit_code = 6


class ScanFindingsError(SecurityError):
    """The scanner found problems at or above the threshold."""


class ScanIncompleteError(SecurityError):
    """Something could not be scanned; unscanned is a failure, never a silent pass."""


class ModelRefusedError(SecurityError):
    """A bundle's manifest does not show a clean scan (missing summary, findings, unscanned)."""


class IntegrityError(OnnxGuardError):
    """A hash, signature or decryption check failed."""

    exit_code = 7


class HashMismatchError(IntegrityError):
    """A bundle file does not match the sha256 recorded in the manifest."""


class SignatureError(IntegrityError):
    """The bundle signature is missing, invalid, or from another key."""


class DecryptionError(IntegrityError):
    """An encrypted file could not be decrypted (wrong key, tampered, swapped or truncated)."""


class KeySourceError(IntegrityError):
    """A key could not be read from its source (env var unset, file missing, bad format)."""


class SignatureMissingError(SignatureError):
    """A public key is configured but the bundle has no model.sig."""


class SignatureInvalidError(SignatureError):
    """model.sig is malformed, corrupted or forged: it does not verify."""


class SignatureKeyMismatchError(SignatureError):
    """The bundle was signed, but by another key than the one configured."""


class SignedFileChangedError(SignatureError):
    """A file's content differs from what was signed."""


class SignedFileAddedError(SignatureError):
    """The bundle holds a file that was not signed."""


class SignedFileRemovedError(SignatureError):
    """A signed file is missing from the bundle."""


class WrongKeyError(DecryptionError):
    """The key source gives another key than the one the bundle was encrypted with."""


class CiphertextTruncatedError(DecryptionError):
    """An encrypted file is shorter than its ciphertext must be."""


class FileSwappedError(DecryptionError):
    """An encrypted file holds the ciphertext of another file of the bundle."""


class ManifestBindingError(DecryptionError):
    """The manifest or its wrapped data key was changed after encryption (they are bound)."""


# --- bundle / storage ----------------------------------------------------------------------------
class BundleError(OnnxGuardError):
    """The bundle directory is malformed or cannot be written."""

    exit_code = 8


class OutputExistsError(BundleError):
    """The output directory exists and is not empty."""


class OutputNotReplaceableError(OutputExistsError):
    """``--force`` was given, but the output is neither an onnxguard bundle nor empty."""


class BundleNotFoundError(PathNotFoundError, BundleError):
    """The bundle directory given does not exist: a usage error like every missing path."""


class EngineError(BundleError):
    """The model could not be loaded into ONNX Runtime."""


class DiskFullError(BundleError):
    """No space left on the device while writing."""


class SignedBundleError(BundleError):
    """Encrypting or decrypting would invalidate the bundle's signature; re-signing is needed."""


# --- serve ---------------------------------------------------------------------------------------
class ServeError(OnnxGuardError):
    """The server could not start as configured."""

    exit_code = 9


class AuditLogError(ServeError):
    """The audit log cannot be opened or written; the server refuses to serve unaudited."""


class RepositoryError(ServeError):
    """A model repository (``NAME/VERSION/`` bundles, ``repository.toml``) is malformed, or a
    repository action could not be done."""


class ModelNotFoundError(RepositoryError):
    """The repository has no model of that name."""


class RollbackError(RepositoryError):
    """No earlier version could be served."""


class AuditChainError(IntegrityError):
    """The audit log's hash chain does not verify: a record was edited, deleted or reordered."""


class RequestError(OnnxGuardError):
    """One request failed at serving time (an HTTP 4xx/5xx for that request, not a server
    failure); ``status`` is the HTTP status it is answered with."""

    exit_code = 9
    status = 500


class ApiError(RequestError):
    """A request answered with ``status`` and ``{"error": message}`` (and ``headers``); ``outcome``
    names it in the audit log and metrics (default: by status, see ``HTTP_OUTCOMES``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        outcome: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.outcome = outcome or HTTP_OUTCOMES.get(status, "ok" if status < 400 else "error")


HTTP_OUTCOMES = {
    200: "ok",
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "too_large",
    415: "unsupported_encoding",
    422: "invalid",
    429: "rate_limited",
    499: "client_disconnected",
    500: "error",
    503: "unavailable",
    504: "timeout",
}
"""Audit/metrics outcome of a response by HTTP status (499: the client went away first)."""


class OverloadedError(RequestError):
    """The batching queue is full: the request is refused at once (HTTP 503)."""

    status = 503


class RequestTimeoutError(RequestError):
    """The request did not get its result within the per-request timeout (HTTP 504)."""

    status = 504


class StoppedError(RequestError):
    """The batcher is shutting down and takes no new work (HTTP 503)."""

    status = 503


class InferenceFailedError(RequestError):
    """ONNX Runtime raised while running a batch (HTTP 500; a bug or a broken model)."""

    status = 500


class TokenLimitError(RequestError):
    """A request's texts tokenize to more tokens than allowed (HTTP 413)."""

    status = 413


class BuildInterruptedError(OnnxGuardError):
    """The user interrupted a build; temporary files were removed."""

    exit_code = 130


# --- bench ---------------------------------------------------------------------------------------
class BenchmarkError(OnnxGuardError):
    """A benchmark engine failed to load or run; its worker process says why."""

    exit_code = 10


class ScanTargetError(UsageError):
    """The path given to the scanner does not exist or is neither a file nor a directory."""


# --- bulk inference ------------------------------------------------------------------------------
class BulkInputError(UsageError):
    """The bulk input file cannot be read as a table with a text column."""


class BulkResumeError(UsageError):
    """The output's parts folder belongs to a different run (other input, bundle or settings)."""
