"""Tokenization and padding shared by the build's validation and the runtime.

Serve-side only (tokenizers + numpy).  The tokenizer's own padding is switched off: many
tokenizer.json files pad every text to a fixed length (the default model's pads to 128), which
wastes ~5x compute on short texts.  We pad per batch instead, to the longest text in it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from onnxguard.errors import MissingTokenizerError


def load_tokenizer(tokenizer_json: bytes | str, max_length: int) -> Tokenizer:
    """A fast tokenizer that truncates at ``max_length`` and never pads by itself."""
    text = tokenizer_json.decode("utf-8") if isinstance(tokenizer_json, bytes) else tokenizer_json
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        raise MissingTokenizerError(
            f"tokenizer.json cannot be parsed: {exc}",
            hint="rebuild the bundle; the tokenizer must be a Hugging Face fast tokenizer",
        ) from exc
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def pad_id_of(tokenizer: Tokenizer) -> int:
    """The id used for padding: the tokenizer's [PAD]/<pad> token, else 0."""
    for token in ("[PAD]", "<pad>", "<PAD>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def unk_id_of(tokenizer: Tokenizer) -> int | None:
    """The unknown token's id (WordPiece/BPE/WordLevel ``unk_token``, Unigram ``<unk>``), or None
    when the tokenizer has none (byte-level BPE never produces an unknown token)."""
    names = [getattr(tokenizer.model, "unk_token", None), "[UNK]", "<unk>", "<UNK>"]
    for token in names:
        if isinstance(token, str) and token:
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id)
    return None


def pad_batch(
    encodings: Sequence[Encoding],
    input_names: Sequence[str],
    pad_id: int,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """int64 arrays for the model's inputs, padded to the longest row (or ``pad_to``)."""
    longest = max((len(e.ids) for e in encodings), default=1)
    width = max(pad_to or 0, longest, 1)
    batch = len(encodings)
    ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    types = np.zeros((batch, width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        types[row, :n] = enc.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: arrays[name] for name in input_names}
