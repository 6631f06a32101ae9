"""Feeding a Hugging Face encoder through its input embeddings.

Every robust method perturbs the output of ``model.get_input_embeddings()`` (the
word-embedding lookup, before position/type embeddings and LayerNorm) and feeds
the result back through ``inputs_embeds``. Two details make that equal to the
plain ``input_ids`` forward:

* RoBERTa/XLM-R-style embeddings number positions from ``padding_idx + 1`` and give
  padding the position ``padding_idx``; with ``inputs_embeds`` alone HF cannot see
  the padding and numbers every slot sequentially. We detect such models
  generically (their embeddings container has an integer ``padding_idx``) and pass
  ``position_ids = cumsum(mask) * mask + padding_idx``, computed from the attention
  mask exactly like HF's ``create_position_ids_from_input_ids``.
* A DeepSpeed engine wraps the HF model in ``.module``; the forward still goes
  through the engine (its hooks gather ZeRO-3 partitions), the embedding module is
  looked up on the wrapped model.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastrobust.errors import FastrobustError

# keys of a training batch that the model's forward accepts besides the embeddings
_FORWARD_KEYS = ("attention_mask", "token_type_ids")

# input-embedding module -> padding_idx of its container (None: positions need no help)
_POSITION_OFFSET: weakref.WeakKeyDictionary[nn.Module, int | None] = weakref.WeakKeyDictionary()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The HF model inside a DeepSpeed engine (or DDP wrapper); the model itself otherwise."""
    return getattr(model, "module", model)


def input_embedding_module(model: nn.Module) -> nn.Module:
    """``get_input_embeddings()`` of the (unwrapped) model, with a clear error if it has none."""
    hf = unwrap_model(model)
    get = getattr(hf, "get_input_embeddings", None)
    if get is None:
        raise FastrobustError(
            f"model: {type(hf).__name__} has no get_input_embeddings(); fastrobust methods need an HF encoder"
        )
    module = get()
    if module is None:
        raise FastrobustError(f"model: {type(hf).__name__}.get_input_embeddings() returned None")
    return module


def position_padding_idx(model: nn.Module) -> int | None:
    """``padding_idx`` of the embeddings container when it numbers positions from it, else None.

    The container is the module that holds the word-embedding module as a direct child
    (e.g. ``RobertaEmbeddings``, ``XLMRobertaEmbeddings``); BERT's container has no
    ``padding_idx`` attribute (only its ``nn.Embedding`` child has one, which says
    nothing about positions). Cached per embedding module.
    """
    word = input_embedding_module(model)
    if word in _POSITION_OFFSET:
        return _POSITION_OFFSET[word]
    offset = None
    for module in unwrap_model(model).modules():
        if module is word or isinstance(module, nn.Embedding):
            continue
        if any(child is word for child in module.children()):
            pad = getattr(module, "padding_idx", None)
            if isinstance(pad, int) and not isinstance(pad, bool) and hasattr(module, "position_embeddings"):
                offset = pad
            break
    _POSITION_OFFSET[word] = offset
    return offset


def position_ids_from_mask(attention_mask: Tensor, padding_idx: int) -> Tensor:
    """RoBERTa-style positions: ``padding_idx + cumsum(mask) * mask``.

    attention_mask: (B, L), 1 for real tokens. Returns (B, L) int64: real tokens get
    ``padding_idx + 1, padding_idx + 2, ...`` and padding gets ``padding_idx`` — what
    HF computes from ``input_ids != pad_token_id`` for right-padded batches.
    """
    mask = attention_mask.ne(0).long()
    return torch.cumsum(mask, dim=1) * mask + padding_idx


def embed_inputs(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Word embeddings of ``batch["input_ids"]`` (B, L) -> (B, L, H), with autograd graph.

    The lookup keeps its graph so that the embedding table receives gradients from a
    loss computed on ``embeds + delta`` (the table is a parameter like any other).
    """
    if "input_ids" not in batch:
        raise FastrobustError("batch: missing 'input_ids'")
    return input_embedding_module(model)(batch["input_ids"])


def model_inputs(model: nn.Module, batch: Mapping[str, Tensor], repeat: int = 1) -> dict[str, Tensor]:
    """The keyword arguments (besides ``inputs_embeds``) of a forward on ``batch``.

    attention_mask / token_type_ids are passed when present; ``position_ids`` are added
    for RoBERTa/XLM-R-style models. ``repeat > 1`` tiles every tensor ``repeat`` times
    along the batch dimension (for n noisy copies of one batch, flattened to n*B).
    """
    if "attention_mask" not in batch:
        raise FastrobustError("batch: missing 'attention_mask'")
    inputs = {k: batch[k] for k in _FORWARD_KEYS if k in batch and batch[k] is not None}
    pad = position_padding_idx(model)
    if pad is not None:
        inputs["position_ids"] = position_ids_from_mask(batch["attention_mask"], pad)
    if repeat > 1:
        inputs = {k: v.repeat(repeat, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
    return inputs


def forward_from_embeds(model: nn.Module, batch: Mapping[str, Tensor], embeds: Tensor) -> Tensor:
    """Logits (B, C) of the model on input embeddings ``embeds`` (B, L, H).

    ``embeds`` may also hold n stacked copies of the batch, shape (n*B, L, H) ordered
    copy-major; the mask and the other inputs are then tiled and the logits are (n*B, C).

    Equal to ``model(input_ids=batch["input_ids"], ...).logits`` when ``embeds`` is the
    plain lookup (BERT- and RoBERTa/XLM-R-style models alike). ``model`` may be a
    DeepSpeed engine; the call goes through it so its hooks run.
    """
    if embeds.dim() != 3:
        raise FastrobustError(f"embeds: expected shape (B, L, H), got {tuple(embeds.shape)}")
    if "attention_mask" not in batch:
        raise FastrobustError("batch: missing 'attention_mask'")
    batch_size = batch["attention_mask"].shape[0]
    if embeds.shape[0] % batch_size != 0:
        raise FastrobustError(
            f"embeds: {embeds.shape[0]} rows is not a multiple of the batch size {batch_size}"
        )
    # n*B rows = n stacked copies of the batch (smoothed prediction): tile the other inputs
    repeat = embeds.shape[0] // batch_size
    out = model(inputs_embeds=embeds, **model_inputs(model, batch, repeat=repeat))
    return _logits(out)


def forward_from_ids(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Logits (B, C) of the plain forward on ``batch["input_ids"]`` (the baseline path)."""
    inputs = {k: batch[k] for k in ("input_ids", *_FORWARD_KEYS) if k in batch and batch[k] is not None}
    out = model(**inputs)
    return _logits(out)


def _logits(out: object) -> Tensor:
    # HF models return a ModelOutput with .logits; plain modules may return the tensor or a tuple
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out[0]


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of logits (B, C) against int labels (B,), computed in fp32
    (bf16 logits would lose the small differences PGD and FreeLB ascend on)."""
    return F.cross_entropy(logits.float(), labels)


def embedding_rms(model: nn.Module) -> float:
    """RMS of the input-embedding table, ``sqrt(mean(W**2))`` over all (V, H) entries.

    The unit of the ``relative`` scales. Under DeepSpeed ZeRO-3 each rank holds only a
    shard of the table (the parameter then carries ``ds_id``/``ds_numel`` and an empty
    local tensor), so it is gathered for the computation.
    """
    weight = getattr(input_embedding_module(model), "weight", None)
    if not isinstance(weight, Tensor):
        raise FastrobustError("model: the input-embedding module has no weight tensor to take the RMS of")
    if hasattr(weight, "ds_id"):
        import deepspeed  # lazily: only under ZeRO-3

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            return _rms(weight)
    return _rms(weight)


def _rms(weight: Tensor) -> float:
    with torch.no_grad():
        if weight.numel() == 0:
            raise FastrobustError("model: the input-embedding table is empty")
        return float(weight.detach().float().pow(2).mean().sqrt())
