"""Shared builders for the methods tests (tiny BERT / XLM-R classifiers and batches).

Imported by tests/test_methods*.py, test_hooks.py, test_certify.py, test_convergence.py;
holds no tests itself.
"""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

PAD = 1  # XLM-R's padding index; BERT is given the same so batches are shared
VOCAB = 64


def tiny_model(
    arch: str = "bert",
    *,
    dropout: float = 0.0,
    seed: int = 0,
    num_labels: int = 2,
    hidden: int = 32,
    layers: int = 2,
):
    """A randomly initialised classifier, ``layers`` layers of size ``hidden``, in eval mode."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=48,
        num_labels=num_labels,
        pad_token_id=PAD,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        classifier_dropout=dropout,
    )
    if arch == "bert":
        model = BertForSequenceClassification(BertConfig(**common))
    elif arch == "xlmr":
        model = XLMRobertaForSequenceClassification(XLMRobertaConfig(**common))
    else:
        raise ValueError(arch)
    return model.eval()


def tiny_batch(
    batch: int = 4, length: int = 12, *, seed: int = 1, token_types: bool = True, num_labels: int = 2
):
    """Right-padded batch with real lengths length, length-3, ... (at least 2)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=gen)
    lengths = torch.tensor([max(2, length - 3 * i) for i in range(batch)])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD))
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.randint(0, num_labels, (batch,), generator=gen),
    }
    if token_types:
        tt = torch.zeros_like(ids)
        tt[:, length // 2 :] = 1
        out["token_type_ids"] = tt * mask
    return out


def grads(model) -> dict[str, torch.Tensor | None]:
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


class EngineLike(torch.nn.Module):
    """Stands in for a DeepSpeed engine: the HF model under ``.module``, forward delegated."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
