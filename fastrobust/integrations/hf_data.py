"""Data pieces of the ``transformers.Trainer`` integration (:mod:`fastrobust.integrations.hf`).

- :class:`TextClassificationDataset`: a text dataset tokenized as ``fastrobust train`` does, with
  RS-DA's per-epoch re-draw behind ``set_epoch`` (which Trainer's data loader calls);
- :class:`RightPadding`: the right-padding collator, accepting ``label`` or ``labels``;
- :class:`EpochPermutationSampler`: ``fastrobust train``'s data order for Trainer's data loader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, Sampler

from fastrobust.data import encode_dataset, make_collator
from fastrobust.errors import DataError
from fastrobust.methods import RobustMethod

if TYPE_CHECKING:  # annotations only
    import datasets
    from transformers import PreTrainedTokenizerBase

_TEXT = ("sentence1", "sentence2", "label")
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def redraws_per_epoch(method: RobustMethod | None) -> bool:
    """True when ``method`` changes the training text every epoch (RS-DA)."""
    return method is not None and type(method).epoch_train_dataset is not RobustMethod.epoch_train_dataset


class TextClassificationDataset(Dataset):
    """A text dataset (sentence1, [sentence2], label) tokenized as ``fastrobust train`` does.

    With a method that re-draws the training set per epoch (RS-DA), ``set_epoch(e)`` (called by
    Trainer's data loader before every epoch) builds ``method.epoch_train_dataset(texts, e, seed)``
    and tokenizes it; otherwise the texts are tokenized once. Rows: ``input_ids``,
    ``attention_mask``, ``[token_type_ids]``, ``labels``.
    """

    def __init__(
        self,
        texts: datasets.Dataset,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        *,
        method: RobustMethod | None = None,
        seed: int = 0,
    ) -> None:
        missing = [c for c in ("sentence1", "label") if c not in texts.column_names]
        if missing:
            raise DataError(f"text dataset: missing column(s) {missing}; has {texts.column_names}")
        self.texts = texts.select_columns([c for c in _TEXT if c in texts.column_names])
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.method = method
        self.seed = seed
        self.epoch: int | None = None
        self._encoded: Any = None
        self.set_epoch(0)

    @property
    def per_epoch(self) -> bool:
        return redraws_per_epoch(self.method)

    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        if self._encoded is not None and (epoch == self.epoch or not self.per_epoch):
            self.epoch = epoch
            return
        texts = self.texts
        if self.per_epoch:
            texts = self.method.epoch_train_dataset(texts, epoch, self.seed)
            if len(texts) != len(self.texts):
                raise DataError(f"{self.method.label}: epoch_train_dataset changed the dataset size")
        self._encoded = encode_dataset(texts, self.tokenizer, self.max_length)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._encoded[int(i)]


class RightPadding:
    """Right-padding collator that also accepts a ``label`` column (renamed ``labels``)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._collate = make_collator(tokenizer)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = []
        for f in features:
            f = dict(f)
            if "labels" not in f and "label" in f:
                f["labels"] = f.pop("label")
            rows.append(
                {
                    k: v
                    for k, v in f.items()
                    if k in ("input_ids", "attention_mask", "token_type_ids", "labels")
                }
            )
        return self._collate(rows)


class EpochPermutationSampler(Sampler[int]):
    """``fastrobust train``'s data order: ``randperm(n, seed + epoch)`` cut to whole global batches.

    Trainer's data loader cuts it into per-process micro-batches and (accelerate's
    ``BatchSamplerShard``) gives micro-batch ``j`` to rank ``j % W`` — the layout of
    :class:`fastrobust.training.batches.GlobalBatchSampler`.
    """

    def __init__(self, num_examples: int, global_batch: int, seed: int) -> None:
        if global_batch > num_examples:
            raise DataError(
                f"global batch {global_batch} is larger than the training set ({num_examples} examples)"
            )
        self.n, self.B, self.seed, self.epoch = num_examples, global_batch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[: len(self)].tolist())

    def __len__(self) -> int:
        return (self.n // self.B) * self.B
