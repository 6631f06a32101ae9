"""Where a perturbation goes: which layer, which sentence of a pair, one budget or one per sentence.

The helpers here describe placement only; the one PGD / FreeLB (``fastrobust.methods.adversarial``)
and the one RS-RP step (``fastrobust.methods.noise``) take ``layer`` / ``sentences`` / ``ball`` /
``shape`` as parameters and use them.

The default of every method perturbs the word embeddings of all real tokens, with one budget per
example (PGD: one L2/Linf ball over the whole pair). In G-XLT the two sentences of a pair are in
two languages, i.e. misaligned *with each other*, and the encoder's cross-language difference is
largest as a common shift of a whole sentence (docs/real-benchmark.md measures it layer by layer).
These options let a method imitate that more closely:

* ``layer`` k >= 1: perturb the hidden states h_k (B, L, H) that encoder layer k outputs (the
  input of layer k + 1) instead of the word embeddings (k = 0). Relative scales are then in units
  of the RMS of h_k over the batch's real tokens, measured on the clean states of that batch
  (detached).
* ``sentences``: ``both`` (default), ``first`` or ``second`` — whose tokens are perturbed.
* PGD/FreeLB ``ball``: ``sequence`` (one ball of radius eps per example, default) or ``sentence``
  (each perturbed sentence its own ball of radius eps: neither sentence can take the other's budget).
* RS-RP ``shape``: ``token`` (i.i.d. N(0, sigma^2) per entry, default) or ``sentence`` (one vector
  z_s ~ N(0, sigma^2 I_H) per sentence s, added to every token of s: a random shift of the whole
  sentence, the shape of a language offset).

Sentences of a pair: from ``token_type_ids`` when the tokenizer gives them (BERT: 0 / 1), else
from the separators — the token at an example's last real position is its separator (``[SEP]``,
``</s>``), and sentence 2 starts after the first run of separators (``[SEP]`` / ``</s></s>``).
The leading ``[CLS]``/``<s>`` and the separators after sentence 1 count as sentence 1, the final
separator as sentence 2. An example without a second sentence has only sentence 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from fastrobust import ops
from fastrobust.errors import FastrobustError
from fastrobust.methods.embeddings import embed_inputs, forward_from_embeds, forward_from_ids, unwrap_model

SENTENCES = ("both", "first", "second")


def sentence_masks(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(m1, m2): float (B, L) masks of the real tokens of sentence 1 and of sentence 2."""
    mask = batch["attention_mask"].ne(0)
    tt = batch.get("token_type_ids")
    if tt is not None and bool((tt.ne(0) & mask).any()):
        second = tt.ne(0) & mask
    else:
        ids = batch["input_ids"]
        lengths = mask.sum(dim=1)
        sep = ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1))  # (B, 1) separator id
        is_sep = ids.eq(sep) & mask
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        big = ids.shape[1]
        # first separator, then the first non-separator after it: sentence 2 starts there
        first_sep = torch.where(is_sep, pos, big).min(dim=1, keepdim=True).values
        after = (pos > first_sep) & ~is_sep & mask
        start2 = torch.where(after, pos, big).min(dim=1, keepdim=True).values
        second = (pos >= start2) & mask
    first = mask & ~second
    return first.float(), second.float()


def target_mask(batch: Mapping[str, Tensor], sentences: str) -> Tensor:
    """Float (B, L) mask of the tokens a method perturbs (``sentences``: both / first / second)."""
    if sentences not in SENTENCES:
        raise FastrobustError(f"sentences: must be one of {SENTENCES}, got {sentences!r}")
    if sentences == "both":
        return batch["attention_mask"].ne(0).float()
    m1, m2 = sentence_masks(batch)
    return m1 if sentences == "first" else m2


def segment_masks(batch: Mapping[str, Tensor], sentences: str) -> list[Tensor]:
    """The per-sentence masks a ``ball: sentence`` budget is taken over (only perturbed sentences)."""
    m1, m2 = sentence_masks(batch)
    return {"both": [m1, m2], "first": [m1], "second": [m2]}[sentences]


# --------------------------------------------------------------------------------------------
# hidden states of an encoder layer


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of an HF encoder (BERT, RoBERTa, XLM-R: ``base_model.encoder.layer``)."""
    hf = unwrap_model(model)
    base = getattr(hf, "base_model", hf)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise FastrobustError(
            f"layer: cannot find the encoder layers of {type(hf).__name__} "
            "(expected base_model.encoder.layer)"
        )
    return layers


@contextlib.contextmanager
def perturb_layer(model: nn.Module, layer: int, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, encoder layer ``layer`` (1-based) outputs ``h + fn(h)`` instead of h.

    ``fn(h)`` gets the layer's hidden states (B, L, H) and returns the perturbation (same shape).
    """
    layers = encoder_layers(model)
    if not 1 <= layer <= len(layers):
        raise FastrobustError(f"layer: must be in [0, {len(layers)}] for this model, got {layer}")

    def hook(_module: nn.Module, _inputs: tuple, output):
        if isinstance(output, tuple):
            return (output[0] + fn(output[0]), *output[1:])
        return output + fn(output)

    handle = layers[layer - 1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def masked_rms(h: Tensor, mask: Tensor) -> Tensor:
    """RMS of the entries of h (B, L, H) at mask (B, L) positions, detached, fp32 scalar."""
    m = mask.to(torch.float32).unsqueeze(-1)
    count = m.sum().clamp(min=1.0) * h.shape[-1]
    return ((h.detach().float() ** 2) * m).sum().div(count).sqrt()


# --------------------------------------------------------------------------------------------
# RS-RP noise


def sentence_noise(h: Tensor, sigma: float | Tensor, masks: list[Tensor]) -> Tensor:
    """sum_s sigma * z_s * m_s with one z_s ~ N(0, I_H) per example and sentence: (B, L, H)."""
    out = torch.zeros_like(h, dtype=torch.float32)
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=h.device)
    sig = sig.reshape(-1, 1, 1) if sig.dim() else sig
    for m in masks:
        z = torch.randn(h.shape[0], 1, h.shape[-1], device=h.device, dtype=torch.float32)
        out = out + sig * z * m.to(torch.float32).unsqueeze(-1)
    return out.to(h.dtype)


def apply_noise(
    h: Tensor,
    sigma: float | Tensor,
    batch: Mapping[str, Tensor],
    *,
    shape: str,
    sentences: str,
    distribution: str,
) -> Tensor:
    """h + noise on the perturbed sentences' real tokens (``shape`` token: i.i.d. per entry through
    the fused ``add_noise``; sentence: one Gaussian shift per sentence)."""
    if shape == "token":
        return ops.add_noise(h, sigma, distribution=distribution, mask=target_mask(batch, sentences))
    if shape == "sentence":
        if distribution != "gaussian":
            raise FastrobustError("shape 'sentence': only distribution 'gaussian' is supported")
        return h + sentence_noise(h, sigma, segment_masks(batch, sentences))
    raise FastrobustError(f"shape: must be 'token' or 'sentence', got {shape!r}")


# --------------------------------------------------------------------------------------------
# forward with a perturbation at a layer


def forward_perturbed(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    layer: int,
    delta_fn: Callable[[Tensor], Tensor],
    embeds: Tensor | None = None,
) -> Tensor:
    """Logits with the states of ``layer`` (0 = word embeddings) replaced by ``h + delta_fn(h)``."""
    if layer == 0:
        e = embed_inputs(model, batch) if embeds is None else embeds
        return forward_from_embeds(model, batch, e + delta_fn(e))
    with perturb_layer(model, layer, delta_fn):
        return forward_from_ids(model, batch)


UNITS = ("absolute", "states")


def is_default(layer: int, sentences: str, unit: str, spread_is_default: bool) -> bool:
    """Whether a placement is the default one (word embeddings, all tokens, absolute scales, and
    ``spread_is_default``: one ball per example / i.i.d. noise per entry), which the fused
    single-pass ops serve."""
    return layer == 0 and sentences == "both" and unit == "absolute" and spread_is_default


def state_unit(h: Tensor, mask: Tensor, unit: str) -> float:
    """What a scale is multiplied by: 1 (``absolute``) or the RMS of the clean states h (B, L, H)
    over the batch's real tokens (``states``, detached)."""
    if unit == "absolute":
        return 1.0
    if unit == "states":
        return float(masked_rms(h, mask))
    raise FastrobustError(f"unit: must be one of {UNITS}, got {unit!r}")


# --------------------------------------------------------------------------------------------
# budgets of PGD / FreeLB


def project_step(
    delta: Tensor, grad: Tensor, *, step_size: float, epsilon: float | None, norm: str, masks: list[Tensor]
) -> Tensor:
    """One ``pgd_step`` per budget: each mask in ``masks`` (disjoint) is its own ball of radius eps."""
    out = None
    for m in masks:
        d = ops.pgd_step(
            delta * m.unsqueeze(-1).to(delta.dtype),
            grad,
            step_size=step_size,
            epsilon=epsilon,
            norm=norm,
            mask=m,
        )
        out = d if out is None else out + d
    return out


def budgets(batch: Mapping[str, Tensor], sentences: str, ball: str) -> list[Tensor]:
    """The masks of the balls: one over all perturbed tokens (``sequence``) or one per sentence."""
    if ball == "sequence":
        return [target_mask(batch, sentences)]
    if ball == "sentence":
        return segment_masks(batch, sentences)
    raise FastrobustError(f"ball: must be 'sequence' or 'sentence', got {ball!r}")
