"""Tiny random models of every registered architecture, saved like real checkpoints.

Made from transformers configs and saved with ``save_pretrained`` (safetensors) so the real
loading code runs; the tokenizer is a real WordPiece ``tokenizers`` tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "not",
    "no",
    "is",
    "was",
    "are",
    "were",
    "be",
    "been",
    "it",
    "this",
    "that",
    "movie",
    "film",
    "good",
    "bad",
    "great",
    "terrible",
    "awful",
    "wonderful",
    "love",
    "hate",
    "like",
    "plot",
    "acting",
    "story",
    "time",
    "day",
    "night",
    "food",
    "service",
    "slow",
    "fast",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
    "my",
    "your",
    "very",
    "really",
    "so",
    "too",
    "just",
    "more",
    "most",
    "less",
    "best",
    "worst",
    "of",
    "to",
    "in",
    "on",
    "at",
    "for",
    "with",
    "from",
    "by",
    "as",
    "about",
    "into",
    "over",
    "after",
    "before",
    "!",
    "?",
    ".",
    ",",
    ";",
    ":",
    "'",
    "-",
    "(",
    ")",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "##s",
    "##ed",
    "##ing",
    "##ly",
    "##er",
]
TINY_MAX_LENGTH = 64


def make_tokenizer_json(max_length: int = TINY_MAX_LENGTH) -> str:
    """A real BERT-style WordPiece tokenizer over a small vocabulary (letters as fallback)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(specials + _WORDS + letters))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    tok.enable_truncation(max_length=max_length)
    return tok.to_str()


def tiny_config(model_type: str, vocab_size: int, task: str) -> Any:
    import transformers

    common = {"vocab_size": vocab_size, "pad_token_id": 0, "max_position_embeddings": 128}
    labels = {
        "text-classification": ["NEG", "POS"],
        "token-classification": ["O", "B-X", "I-X"],
    }.get(task)
    if task == "reranking":
        common |= {"num_labels": 1}  # a CrossEncoder's single relevance logit
    if labels:
        common |= {
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    small = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
    }
    if model_type == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, **common)
    if model_type == "albert":
        return transformers.AlbertConfig(embedding_size=16, **small, **common)
    if model_type == "electra":
        return transformers.ElectraConfig(embedding_size=32, **small, **common)
    if model_type == "deberta-v2":
        return transformers.DebertaV2Config(
            **small,
            **common,
            type_vocab_size=0,
            relative_attention=True,
            position_buckets=32,
            pos_att_type=["p2c", "c2p"],
        )
    config_class = transformers.AutoConfig.for_model(model_type).__class__
    return config_class(**small, **common)


def make_tiny_model(
    directory: Path,
    model_type: str,
    task: str,
    *,
    seed: int = 0,
    sentence_transformers: bool = False,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> Path:
    """Save a tiny random model of ``model_type`` for ``task`` (safetensors) + tokenizer.json.

    ``prompts`` (with ``sentence_transformers``) writes config_sentence_transformers.json as
    sentence-transformers saves it.
    """
    import torch
    import transformers
    from tokenizers import Tokenizer

    tokenizer_json = make_tokenizer_json()
    vocab_size = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    config = tiny_config(model_type, vocab_size, task)
    auto = {
        "text-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
        "feature-extraction": transformers.AutoModel,
        "reranking": transformers.AutoModelForSequenceClassification,
        "question-answering": transformers.AutoModelForQuestionAnswering,
    }[task]
    torch.manual_seed(seed)
    model = auto.from_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "tokenizer.json").write_text(tokenizer_json)
    if task == "reranking":  # what sentence-transformers' CrossEncoder.save writes
        saved = json.loads((directory / "config.json").read_text())
        saved["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
        (directory / "config.json").write_text(json.dumps(saved))
    if sentence_transformers:
        (directory / "modules.json").write_text(
            json.dumps(
                [
                    {
                        "idx": 0,
                        "name": "0",
                        "path": "",
                        "type": "sentence_transformers.models.Transformer",
                    },
                    {
                        "idx": 1,
                        "name": "1",
                        "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling",
                    },
                    {
                        "idx": 2,
                        "name": "2",
                        "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize",
                    },
                ]
            )
        )
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": 32,
                    "pooling_mode_cls_token": False,
                    "pooling_mode_mean_tokens": True,
                    "pooling_mode_max_tokens": False,
                }
            )
        )
    if prompts is not None:
        (directory / "config_sentence_transformers.json").write_text(json.dumps({
            "model_type": "SentenceTransformer",
            "prompts": prompts,
            "default_prompt_name": default_prompt_name,
            "similarity_fn_name": "cosine",
        }))
    return directory


def tampered_copy(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` with one byte of its model flipped (for verification tests)."""
    import shutil

    shutil.copytree(bundle, dest)
    model = dest / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return dest
