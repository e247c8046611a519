"""Fixtures for the integrity tests: a real (tiny) bundle, signing keys and key-encryption keys.

The bundle is made by hand, the way the build pipeline will make it: a tiny random BERT
classifier exported with the legacy exporter, a WordPiece tokenizer.json and a manifest written
with ``bundle.Manifest`` + ``file_entries`` + ``write_manifest``.  It is exported once per session
and copied for each test, so tests may tamper with their copy freely.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from onnxguard.bundle import (
    MODEL_NAME,
    TOKENIZER_NAME,
    Manifest,
    file_entries,
    write_manifest,
)
from onnxguard.integrity.keys import generate_signing_keypair

WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "was",
    "is",
    "great",
    "good",
    "bad",
    "awful",
    "terrible",
    "wonderful",
    "boring",
    "fun",
    "plot",
    "acting",
    "story",
    "not",
    "very",
    "really",
    "i",
    "it",
    "this",
    "and",
    "but",
    "love",
    "hate",
]


def _make_tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=64)
    return str(tok.to_str())


def _export_tiny_bert(path: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config).eval()
    ids = torch.ones((2, 8), dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "token_type_ids": {0: "batch", 1: "seq"},
                "logits": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )


@pytest.fixture(scope="session")
def _bundle_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template") / "tiny-bert"
    root.mkdir()
    _export_tiny_bert(root / MODEL_NAME)
    (root / TOKENIZER_NAME).write_text(_make_tokenizer_json())
    manifest = Manifest(
        name="tiny-bert",
        task="text-classification",
        inputs=("input_ids", "attention_mask", "token_type_ids"),
        outputs=("logits",),
        max_length=64,
        labels=("NEGATIVE", "POSITIVE"),
        source={"kind": "test", "id": "tiny-bert"},
        files=file_entries(root, [MODEL_NAME, TOKENIZER_NAME]),
        created="2025-01-01T00:00:00Z",
    )
    write_manifest(root, manifest)
    return root


@pytest.fixture
def bundle_dir(_bundle_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the plain (unsigned, unencrypted) tiny bundle."""
    dest = tmp_path / "bundle"
    shutil.copytree(_bundle_template, dest)
    return dest


@pytest.fixture(scope="session")
def _keypairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    out: dict[str, tuple[Path, Path]] = {}
    for name in ("alice", "mallory"):
        pair = generate_signing_keypair(tmp_path_factory.mktemp(f"keys-{name}"))
        out[name] = (pair.private_key, pair.public_key)
    return out


@pytest.fixture
def signing_key(_keypairs: dict[str, tuple[Path, Path]]) -> tuple[Path, Path]:
    """(private.pem, public.pem) of the legitimate signer."""
    return _keypairs["alice"]


@pytest.fixture
def other_signing_key(_keypairs: dict[str, tuple[Path, Path]]) -> tuple[Path, Path]:
    """(private.pem, public.pem) of someone else."""
    return _keypairs["mallory"]


@pytest.fixture
def kek_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Put a fresh random 256-bit KEK (base64) in an env var; returns the key-source string."""

    def make(name: str = "ONNXGUARD_TEST_KEK") -> str:
        monkeypatch.setenv(name, base64.b64encode(os.urandom(32)).decode())
        return f"env:{name}"

    return make


def _encode(tokenizer_json: bytes, texts: list[str]) -> dict[str, np.ndarray]:
    """Encode texts with a tokenizer.json held in memory, as the model's three inputs."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json.decode())
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }


def _predict(model_bytes: bytes, tokenizer_json: bytes, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], _encode(tokenizer_json, texts))
    return np.asarray(logits)


@pytest.fixture
def predict_logits() -> Callable[[bytes, bytes, list[str]], np.ndarray]:
    """Logits from onnxruntime, with the model handed over as bytes (never a path)."""
    return _predict


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., CliResult]:
    """Run ``onnxguard ARGS`` in-process through ``cli.main`` (real error rendering, exit codes)."""
    from onnxguard import cli as cli_module

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr("sys.argv", ["onnxguard", *map(str, args)])
        cli_module._state["verbose"] = False
        code = 0
        try:
            cli_module.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
