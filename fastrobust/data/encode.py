"""Tokenization of sentence pairs and right-padding dynamic batching.

Works for any Hugging Face tokenizer: BERT-style ones return ``token_type_ids`` (segment 0 for
sentence1, 1 for sentence2), XLM-R-style ones do not, and the batch simply omits them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import datasets
import torch

from fastrobust.errors import DataError

if TYPE_CHECKING:  # annotations only
    from transformers import PreTrainedTokenizerBase

TEXT_COLUMNS = ("sentence1", "sentence2", "label")
REQUIRED_COLUMNS = ("sentence1", "label")  # sentence2 only for pair tasks

# Each sentence is cut to CHARS_PER_TOKEN * max_length characters before tokenizing: a text longer
# than that has more tokens than any input keeps (real tokens average 1-6 characters), so the cut
# changes nothing the model sees, while the tokenizer's time and memory become proportional to
# max_length instead of to the longest input. (Fast tokenizers also build every "overflowing"
# window of a truncated pair, quadratic in its length: a pair of two 10k-word sentences took 95 s
# and 12.7 GB.) Where a cut side was kept whole, the cut may have bound: that input is encoded
# again with four times the budget, so the result equals tokenizing the full texts.
CHARS_PER_TOKEN = 12


def char_budget(max_length: int) -> int:
    """The number of characters of one sentence kept before tokenizing (see ``CHARS_PER_TOKEN``)."""
    return CHARS_PER_TOKEN * max_length


def _encode(
    tokenizer: PreTrainedTokenizerBase, s1: list[str], s2: list[str] | None, max_length: int, budget: int
) -> tuple[dict[str, list], list[bool]]:
    """Encodes inputs (pairs, or single sentences when ``s2`` is None) whose sentences are cut to
    ``budget`` characters; returns (columns, truncated flags)."""
    sides = [s1] if s2 is None else [s1, s2]
    cut_texts = [[t[:budget] for t in side] for side in sides]
    second = cut_texts[1] if s2 is not None else None
    out = tokenizer(cut_texts[0], second, truncation="longest_first", max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in out]
    cols = {k: list(out[k]) for k in keys}
    cut = [tuple(len(side[i]) > budget for side in sides) for i in range(len(s1))]
    if out.encodings is None:  # a slow tokenizer: compare the untruncated lengths of the cut texts
        full = tokenizer(cut_texts[0], second, truncation=False, padding=False)["input_ids"]
        return cols, [any(c) or len(ids) > max_length for c, ids in zip(cut, full)]
    truncated = [bool(e.overflowing) or any(c) for e, c in zip(out.encodings, cut)]
    suspect = [i for i, c in enumerate(cut) if any(c)]
    if suspect:
        # kept tokens per side vs. all tokens of the cut text: a cut side kept whole means the cut,
        # not the token budget, decided its length
        alone = [
            tokenizer([texts[i] for i in suspect], add_special_tokens=False)["input_ids"]
            for texts in cut_texts
        ]
        redo = []
        for j, i in enumerate(suspect):
            seq = out.encodings[i].sequence_ids
            if any(cut[i][side] and seq.count(side) >= len(alone[side][j]) for side in range(len(sides))):
                redo.append(i)
        if redo:
            again, again_truncated = _encode(
                tokenizer,
                [s1[i] for i in redo],
                None if s2 is None else [s2[i] for i in redo],
                max_length,
                4 * budget,
            )
            for j, i in enumerate(redo):
                truncated[i] = again_truncated[j]
                for k in keys:
                    cols[k][i] = again[k][j]
    return cols, truncated


def encode_dataset(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    *,
    stats: dict[str, int] | None = None,
) -> datasets.Dataset:
    """Tokenize each (sentence1, sentence2) pair — or each sentence1 of a single-sentence task
    (no ``sentence2`` column) — into one model input of at most ``max_length`` tokens.

    Each sentence is first cut to :func:`char_budget` characters (memory and time stay proportional
    to ``max_length`` whatever the input; the tokens are those of the full texts), then pairs are
    truncated with ``longest_first`` (tokens are removed from the longer sentence first) and not
    padded (the collator pads per batch). Returns a Dataset with columns ``input_ids``,
    ``attention_mask``, ``[token_type_ids]`` (each a list of length L_i <= max_length) and ``labels``
    (int); the text columns are dropped so that batches hold only tensors. ``stats``, when given,
    gets ``examples`` and ``truncated`` (inputs that did not fit in ``max_length`` tokens) added to it.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise DataError(f"encode_dataset: dataset lacks column(s) {missing}; has {dataset.column_names}")
    if max_length < 2:
        raise DataError(f"encode_dataset: max_length must be >= 2, got {max_length}")
    budget = char_budget(max_length)
    counts = {"examples": 0, "truncated": 0}
    pair = "sentence2" in dataset.column_names

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        second = batch["sentence2"] if pair else None
        enc, truncated = _encode(tokenizer, batch["sentence1"], second, max_length, budget)
        counts["examples"] += len(truncated)
        counts["truncated"] += sum(truncated)
        enc["labels"] = list(batch["label"])
        return enc

    encoded = dataset.map(
        tokenize,
        batched=True,
        remove_columns=dataset.column_names,
        desc="tokenize",
        load_from_cache_file=False,
    )
    if stats is not None:
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value
    return encoded


class RightPaddingCollator:
    """Pads a list of encoded examples to the longest one in the batch, on the right.

    Output: ``input_ids`` (B, L) long, ``attention_mask`` (B, L) with 1 = real token,
    ``token_type_ids`` (B, L) when the tokenizer produces them, ``labels`` (B,) long.
    Right padding is forced whatever the tokenizer's ``padding_side``: the methods' embedding
    perturbations and XLM-R's position ids with ``inputs_embeds`` assume real tokens come first.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None) -> None:
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


def make_collator(
    tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None
) -> Callable[[list], dict]:
    """The right-padding dynamic collator for batches of :func:`encode_dataset` rows."""
    return RightPaddingCollator(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
