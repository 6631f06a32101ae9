"""Tokenization of sentence pairs and right-padding dynamic batching.

Works for any Hugging Face tokenizer: BERT-style ones return ``token_type_ids`` (segment 0 for
sentence1, 1 for sentence2), XLM-R-style ones do not, and the batch simply omits them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import datasets
import torch

from fastrobust.errors import DataError

TEXT_COLUMNS = ("sentence1", "sentence2", "label")
REQUIRED_COLUMNS = ("sentence1", "label")  # sentence2 only for pair tasks


def encode_dataset(dataset: datasets.Dataset, tokenizer: Any, max_length: int) -> datasets.Dataset:
    """Tokenize each (sentence1, sentence2) pair — or each sentence1 of a single-sentence task
    (no ``sentence2`` column) — into one model input of at most ``max_length`` tokens.

    Pairs are truncated with ``longest_first`` (tokens are removed from the longer sentence first)
    and not padded (the collator pads per batch). Returns a Dataset with columns ``input_ids``,
    ``attention_mask``, ``[token_type_ids]`` (each a list of length L_i <= max_length) and
    ``labels`` (int); the text columns are dropped so that batches hold only tensors.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise DataError(f"encode_dataset: dataset lacks column(s) {missing}; has {dataset.column_names}")
    if max_length < 2:
        raise DataError(f"encode_dataset: max_length must be >= 2, got {max_length}")

    pair = "sentence2" in dataset.column_names

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        out = tokenizer(
            batch["sentence1"],
            batch["sentence2"] if pair else None,
            truncation="longest_first",
            max_length=max_length,
            padding=False,
        )
        enc = {k: out[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in out}
        enc["labels"] = list(batch["label"])
        return enc

    return dataset.map(
        tokenize,
        batched=True,
        remove_columns=dataset.column_names,
        desc="tokenize",
        load_from_cache_file=False,
    )


class RightPaddingCollator:
    """Pads a list of encoded examples to the longest one in the batch, on the right.

    Output: ``input_ids`` (B, L) long, ``attention_mask`` (B, L) with 1 = real token,
    ``token_type_ids`` (B, L) when the tokenizer produces them, ``labels`` (B,) long.
    Right padding is forced whatever the tokenizer's ``padding_side``: the methods' embedding
    perturbations and XLM-R's position ids with ``inputs_embeds`` assume real tokens come first.
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("collator: empty batch")
        labels = [f["labels"] for f in features]
        inputs = [{k: v for k, v in f.items() if k != "labels"} for f in features]
        batch = self.tokenizer.pad(
            inputs,
            padding=True,
            pad_to_multiple_of=self.pad_to_multiple_of,
            padding_side="right",
            return_tensors="pt",
        )
        out = dict(batch)
        out["labels"] = torch.as_tensor(labels, dtype=torch.long)
        return out


def make_collator(tokenizer: Any, pad_to_multiple_of: int | None = None) -> Callable[[list], dict]:
    """The right-padding dynamic collator for batches of :func:`encode_dataset` rows."""
    return RightPaddingCollator(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
