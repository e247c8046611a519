"""The catalogue of scan rules: one id per kind of problem, with its default severity and a fix.

Ids are stable (they appear in SARIF output, in the bundle manifest and in suppressions users
write), so a rule is never renumbered; retired ids are not reused.  Prefixes: ``FILE`` file
identification and layout, ``CFG`` configuration and custom code, ``TPL`` chat templates,
``PKL`` pickles, ``ARC`` archives, ``SFT`` safetensors, ``ONNX`` ONNX graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    """How bad a finding is; ``fail_on`` compares against this order."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def parse(cls, value: str | Severity) -> Severity:
        """Accept ``"High"``, ``"high"`` or a Severity; raise ValueError otherwise."""
        if isinstance(value, Severity):
            return value
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown severity {value!r} (choose from {choices})") from None


_RANK = {s: i for i, s in enumerate(Severity)}


@dataclass(frozen=True)
class Rule:
    """One kind of problem the scanner reports."""

    id: str
    name: str
    severity: Severity
    title: str
    help: str


_C, _H, _M, _L, _I = (
    Severity.CRITICAL,
    Severity.HIGH,
    Severity.MEDIUM,
    Severity.LOW,
    Severity.INFO,
)

_CATALOGUE = [
    # --- files ------------------------------------------------------------------------------
    Rule(
        "FILE001",
        "symlink-outside-root",
        _H,
        "Symbolic link points outside the scanned directory",
        "Replace the link with the file it points to, or scan the target directory itself.",
    ),
    Rule(
        "FILE002",
        "symlink",
        _I,
        "Symbolic link inside the scanned directory",
        "The link target is scanned under its own name; nothing to do.",
    ),
    Rule(
        "FILE003",
        "symlink-dangling",
        _M,
        "Symbolic link whose target does not exist",
        "Remove the broken link.",
    ),
    Rule(
        "FILE004",
        "special-file",
        _H,
        "Device, FIFO or socket in the model directory",
        "Model directories hold regular files only; remove it (it was not opened).",
    ),
    Rule(
        "FILE005",
        "executable-code",
        _H,
        "Native executable, compiled Python or script file",
        "A model never needs executables; remove the file.",
    ),
    Rule(
        "FILE006",
        "zip-polyglot",
        _H,
        "File also parses as a ZIP archive (polyglot)",
        "Tools disagree on what this file is; re-create it from a trusted source.",
    ),
    Rule(
        "FILE007",
        "hdf5-not-loaded",
        _I,
        "HDF5 (Keras/TensorFlow) file; onnxguard does not load this format",
        "Only checked for Keras Lambda layers; remove it if the build does not need it.",
    ),
    Rule(
        "FILE008",
        "keras-lambda-layer",
        _C,
        "Keras Lambda layer: marshalled Python code that runs "
        "when the model is loaded (CVE-2024-3660)",
        "Do not load this file with Keras; remove it.",
    ),
    Rule(
        "FILE010",
        "keras-external-code",
        _H,
        "Keras v3 model config references code outside Keras (`module`/`registered_name`)",
        "Loading imports that module (and deserialises its objects); use a model without "
        "custom objects or review them.",
    ),
    Rule(
        "FILE011",
        "tensorflow-saved-model",
        _I,
        "TensorFlow SavedModel; onnxguard does not convert this format",
        "Its graph was checked for ops that run Python or touch files; remove it if the build "
        "does not need it.",
    ),
    Rule(
        "FILE012",
        "tensorflow-unsafe-op",
        _H,
        "TensorFlow graph op that runs Python or reads/writes files (PyFunc, ReadFile, ...)",
        "Loading and running the graph executes it; re-export the model without it.",
    ),
    Rule(
        "FILE009",
        "pickle-checkpoint",
        _I,
        "Pickle-based checkpoint (only safe-listed globals)",
        "Prefer model.safetensors; loading a pickle requires --allow-pickle.",
    ),
    # --- configuration / custom code ----------------------------------------------------------
    Rule(
        "CFG001",
        "remote-code-auto-map",
        _H,
        "Configuration maps classes to custom code "
        "(`auto_map`): loading it needs trust_remote_code",
        "onnxguard never runs remote code; "
        "use a checkpoint of a built-in architecture or remove `auto_map`.",
    ),
    Rule(
        "CFG002",
        "custom-code-file",
        _H,
        "Python source file in the model directory",
        "onnxguard never runs code shipped with a model; remove the file.",
    ),
    Rule(
        "CFG003",
        "custom-pipeline",
        _H,
        "Configuration registers a custom pipeline (remote code)",
        "Remove `custom_pipelines`; onnxguard never runs remote code.",
    ),
    # --- chat templates (Jinja2) ----------------------------------------------------------------
    Rule(
        "TPL001",
        "template-injection",
        _C,
        "Chat template reaches Python internals (server-side template injection, CVE-2024-34359)",
        "This template runs code where it is rendered; do not use this tokenizer config.",
    ),
    Rule(
        "TPL002",
        "template-unreviewed",
        _H,
        "Chat template uses a name, filter, test or construct outside the chat-template allowlist",
        "Chat templates need message loops, role/content access and a few filters; review or "
        "replace the template.",
    ),
    Rule(
        "TPL003",
        "template-unparseable",
        _H,
        "Chat template does not parse as Jinja2",
        "Renderers with other Jinja dialects may read it differently; fix the template.",
    ),
    # --- pickles -------------------------------------------------------------------------------
    Rule(
        "PKL001",
        "pickle-code-execution",
        _C,
        "Pickle imports a known code-execution gadget",
        "This file runs code when loaded: do not load it anywhere; report it to the model host.",
    ),
    Rule(
        "PKL002",
        "pickle-unknown-global",
        _H,
        "Pickle imports a global outside the PyTorch state-dict allowlist",
        "Loading imports (and may call) this object; convert the "
        "checkpoint to safetensors in a sandbox, or use a trusted source.",
    ),
    Rule(
        "PKL003",
        "pickle-computed-global",
        _C,
        "Pickle resolves a global from computed names (STACK_GLOBAL on non-literal strings)",
        "Obfuscated import: do not load this file.",
    ),
    Rule(
        "PKL004",
        "pickle-computed-call",
        _H,
        "Pickle calls an object that is not an imported global (call chain)",
        "Typical of gadget chains (getattr(...)(...)); do not load it.",
    ),
    Rule(
        "PKL005",
        "pickle-extension-registry",
        _H,
        "Pickle uses the copyreg extension registry (EXT1/EXT2/EXT4)",
        "The callable depends on the loading process; do not load it.",
    ),
    Rule(
        "PKL006",
        "pickle-malformed-after-global",
        _H,
        "Pickle stream is malformed after it imported a global",
        "Loaders execute everything before the error (nullifAI); do not load it.",
    ),
    Rule(
        "PKL007",
        "pickle-malformed",
        _H,
        "Pickle stream is malformed or truncated: the walk could not reach STOP",
        "What a loader does with the rest cannot be known; download the file again from a "
        "trusted source.",
    ),
    Rule(
        "PKL008",
        "pickle-build-on-global",
        _H,
        "Pickle sets attributes on an imported class or module (BUILD on a global)",
        "Monkey-patching gadget: do not load it.",
    ),
    Rule(
        "PKL009",
        "torchscript-program",
        _H,
        "TorchScript archive: torch.jit.load compiles and runs the code it contains",
        "Provide a plain state dict (safetensors) instead.",
    ),
    Rule(
        "PKL010",
        "pickle-frame-mismatch",
        _H,
        "Pickle FRAME length disagrees with the opcodes (C/Python unpickler differential)",
        "Scanners and loaders read different opcodes from this stream; do not load it.",
    ),
    # --- archives ------------------------------------------------------------------------------
    Rule(
        "ARC001",
        "archive-path-traversal",
        _H,
        "Archive member name is absolute or contains `..` (zip slip, CVE-2007-4559)",
        "Never extract this archive; re-create it.",
    ),
    Rule(
        "ARC002",
        "archive-duplicate-member",
        _H,
        "Archive holds two members with the same name",
        "Readers disagree on which member they load; re-create the archive.",
    ),
    Rule(
        "ARC003",
        "zip-header-mismatch",
        _H,
        "ZIP local header disagrees with the central directory (CVE-2025-1944)",
        "Scanners and loaders read different data; re-create the archive.",
    ),
    Rule(
        "ARC004",
        "zip-encrypted-flag",
        _H,
        "ZIP member flagged as encrypted (CVE-2025-1945)",
        "PyTorch ignores the flag, scanners choke on it; re-create the archive.",
    ),
    Rule(
        "ARC005",
        "zip-crc-mismatch",
        _M,
        "ZIP member CRC-32 does not match its data (CVE-2025-10156)",
        "The archive was modified after it was written; re-create it.",
    ),
    Rule(
        "ARC006",
        "archive-bomb",
        _H,
        "Archive expands beyond the size limit (decompression bomb)",
        "Raise the limit only for a trusted archive.",
    ),
    Rule(
        "ARC007",
        "archive-link-member",
        _H,
        "Archive holds a symbolic/hard link or device member (CVE-2007-4559)",
        "Never extract this archive; re-create it without links.",
    ),
    Rule(
        "ARC008",
        "archive-malformed",
        _H,
        "File has an archive's magic number but does not parse as that archive",
        "Lenient readers may still extract content the scanner never saw; re-create the file.",
    ),
    # --- safetensors ---------------------------------------------------------------------------
    Rule(
        "SFT001",
        "safetensors-header-size",
        _H,
        "safetensors header length is out of bounds",
        "The file is corrupt or crafted; re-create it with the safetensors library.",
    ),
    Rule(
        "SFT002",
        "safetensors-header-json",
        _H,
        "safetensors header is not a valid JSON object",
        "The file is corrupt or crafted; re-create it.",
    ),
    Rule(
        "SFT003",
        "safetensors-duplicate-key",
        _H,
        "safetensors header repeats a key",
        "JSON parsers keep different copies: tools would load different tensors.",
    ),
    Rule(
        "SFT004",
        "safetensors-bad-entry",
        _H,
        "safetensors tensor entry is malformed (dtype, shape, offsets or unknown fields)",
        "Re-create the file with the safetensors library.",
    ),
    Rule(
        "SFT005",
        "safetensors-span-size",
        _H,
        "safetensors tensor span does not match dtype × shape",
        "Readers would interpret the bytes differently; re-create the file.",
    ),
    Rule(
        "SFT006",
        "safetensors-span-outside",
        _H,
        "safetensors tensor data lies outside the file",
        "The file is truncated or crafted.",
    ),
    Rule(
        "SFT007",
        "safetensors-overlap",
        _H,
        "safetensors tensors share bytes",
        "Re-create the file; spans must not overlap.",
    ),
    Rule(
        "SFT008",
        "safetensors-gap",
        _H,
        "safetensors data has unused bytes between tensors",
        "Hidden bytes can carry a second payload; re-create the file.",
    ),
    Rule(
        "SFT009",
        "safetensors-trailing-bytes",
        _H,
        "Bytes after the last safetensors tensor (polyglot)",
        "Other tools may read the trailing payload; re-create the file.",
    ),
    Rule(
        "SFT010",
        "safetensors-metadata",
        _M,
        "safetensors `__metadata__` is not a string→string map",
        "Re-create the file with the safetensors library.",
    ),
    # --- ONNX ----------------------------------------------------------------------------------
    Rule(
        "ONNX001",
        "external-data-absolute",
        _C,
        "External data location is an absolute path (CVE-2022-25882)",
        "External data must be a relative path inside the model directory.",
    ),
    Rule(
        "ONNX002",
        "external-data-traversal",
        _C,
        "External data location escapes the model directory (CVE-2022-25882, CVE-2024-27318)",
        "Remove `..` from the location.",
    ),
    Rule(
        "ONNX003",
        "external-data-symlink",
        _H,
        "External data is reached through a symbolic link",
        "Replace the link with the data file itself.",
    ),
    Rule(
        "ONNX004",
        "external-data-hardlink",
        _H,
        "External data file has other hard links",
        "A hard link can alias any file on the volume; copy the data file instead.",
    ),
    Rule(
        "ONNX005",
        "external-data-missing",
        _H,
        "External data file is missing or not a regular file",
        "Ship the data file next to the model.",
    ),
    Rule(
        "ONNX006",
        "external-data-range",
        _H,
        "External data offset/length does not fit the tensor or the file",
        "The model reads bytes that are not its tensor; re-export it.",
    ),
    Rule(
        "ONNX007",
        "external-data-key",
        _M,
        "Unknown or repeated key in a tensor's external_data",
        "Only location, offset, length and checksum are defined; re-export the model.",
    ),
    Rule(
        "ONNX008",
        "external-data-memory-address",
        _C,
        "External data uses ONNX Runtime's in-memory "
        "address tag: the offset is read as a raw pointer",
        "Never load this model.",
    ),
    Rule(
        "ONNX010",
        "custom-op-domain",
        _H,
        "Node from an operator domain outside ONNX and ONNX "
        "Runtime's built-in domains (needs a custom-op library)",
        "Custom ops load native code; re-export the model with standard operators.",
    ),
    Rule(
        "ONNX011",
        "unknown-standard-op",
        _H,
        "Operator not defined in its ONNX domain",
        "Re-export the model; the runtime cannot execute it.",
    ),
    Rule(
        "ONNX012",
        "unreviewed-contrib-op",
        _M,
        "com.microsoft operator outside the set that ONNX Runtime's optimizer and quantizer emit",
        "Review where the model comes from.",
    ),
    Rule(
        "ONNX013",
        "ep-context-node",
        _H,
        "EPContext node: precompiled, execution-provider specific binary that cannot be inspected",
        "Build the model from its ONNX graph instead.",
    ),
    Rule(
        "ONNX014",
        "code-executing-op",
        _H,
        "Operator that runs host code (ATen/PythonOp fallback)",
        "Re-export without the fallback operator.",
    ),
    Rule(
        "ONNX015",
        "unused-domain-import",
        _I,
        "Opset import for a domain no node uses",
        "Harmless; ONNX Runtime's optimizer adds these.",
    ),
    Rule(
        "ONNX020",
        "tensor-multiple-data",
        _H,
        "Tensor stores its data in more than one field",
        "Different tools read different fields; re-export the model.",
    ),
    Rule(
        "ONNX021",
        "tensor-size-mismatch",
        _H,
        "Tensor dims disagree with the amount of data",
        "Different tools pad, truncate or reject it; re-export the model.",
    ),
    Rule(
        "ONNX022",
        "tensor-too-large",
        _H,
        "Tensor larger than the element limit",
        "Raise ScanConfig.max_tensor_elements only for a model you trust.",
    ),
    Rule(
        "ONNX023",
        "model-too-large",
        _H,
        "Total tensor data above the byte limit",
        "Raise ScanConfig.max_total_bytes only for a model you trust.",
    ),
    Rule(
        "ONNX024",
        "resource-exhaustion",
        _H,
        "Operator output larger than the element limit (ConstantOfShape/Expand/Tile/Range/...)",
        "A crafted shape exhausts memory at run time.",
    ),
    Rule(
        "ONNX025",
        "loop-trip-count",
        _H,
        "Loop trip count above the limit or unbounded",
        "A crafted loop exhausts CPU at run time.",
    ),
    Rule(
        "ONNX026",
        "loop-dynamic",
        _M,
        "Loop whose trip count is only known at run time",
        "Expected in generative models, not in encoders; review it.",
    ),
    Rule(
        "ONNX027",
        "nesting-depth",
        _H,
        "Subgraphs nested deeper than the limit",
        "Deep nesting exhausts parser stacks.",
    ),
    Rule(
        "ONNX028",
        "function-recursion",
        _H,
        "Model-local functions call each other recursively",
        "Inlining never terminates; re-export the model.",
    ),
    Rule(
        "ONNX029",
        "too-many-nodes",
        _H,
        "More nodes than the limit",
        "Raise ScanConfig.max_nodes only for a model you trust.",
    ),
    Rule(
        "ONNX030",
        "runtime-metadata",
        _H,
        "Metadata key that changes ONNX Runtime's behaviour (`ort_config`)",
        "Remove the key; session options belong to the deployment.",
    ),
    Rule(
        "ONNX031",
        "backdoor-trigger",
        _M,
        "If/Where switched by comparing a model input with a "
        "constant (ShadowLogic-style backdoor pattern)",
        "Check that the branch is part of the "
        "architecture; a trigger token or value that changes the output is a backdoor.",
    ),
    Rule(
        "ONNX032",
        "onnx-checker",
        _H,
        "onnx.checker full check failed",
        "The model is not valid ONNX; re-export it.",
    ),
    Rule(
        "ONNX033",
        "shape-inference-failed",
        _M,
        "Shape inference failed: resource bounds were checked on declared shapes only",
        "Re-export the model; valid models infer.",
    ),
    Rule(
        "ONNX034",
        "training-info",
        _L,
        "Model carries training_info graphs",
        "Inference ignores them; strip them to keep the model minimal.",
    ),
]

RULES: dict[str, Rule] = {rule.id: rule for rule in _CATALOGUE}
