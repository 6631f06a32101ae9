"""Where a perturbation goes: which layer, which sentence of a pair, one budget or one per sentence.

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
from fastrobust.methods.adversarial import _AdversarialBase, freelb_ascent, start_radius, weighted_loss
from fastrobust.methods.base import require_labels
from fastrobust.methods.embeddings import (
    classification_loss,
    embed_inputs,
    forward_from_embeds,
    forward_from_ids,
    unwrap_model,
)
from fastrobust.methods.noise import RandomPerturbation
from fastrobust.timing import NULL_TIMER

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


def _unit(h: Tensor, mask: Tensor, layer: int, mode: str, embedding_rms: float | None) -> float:
    """What a configured scale is multiplied by: 1 (absolute), the embedding table's RMS (relative,
    layer 0), or the RMS of the clean h over real tokens (relative, layer >= 1)."""
    if mode == "absolute":
        return 1.0
    if layer == 0:
        if embedding_rms is None:
            raise FastrobustError("relative scales at layer 0 need the embedding RMS (call setup(model))")
        return embedding_rms
    return float(masked_rms(h, mask))


# --------------------------------------------------------------------------------------------
# RS-RP with a placement


def placed_noise_step(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    backward: Callable[[Tensor], None],
    *,
    sigma: float,
    mode: str,
    distribution: str,
    layer: int,
    sentences: str,
    shape: str,
    embedding_rms: float | None,
) -> Tensor:
    """One RS-RP step with noise at ``layer`` on ``sentences`` of shape ``shape`` (see module doc);
    ``mode``: absolute | relative. Calls ``backward(loss)`` once; returns the detached loss."""
    labels = require_labels(batch)

    def noise(h: Tensor) -> Tensor:
        s = sigma * _unit(h, batch["attention_mask"], layer, mode, embedding_rms)
        zero = torch.zeros_like(h.detach())
        return apply_noise(zero, s, batch, shape=shape, sentences=sentences, distribution=distribution)

    loss = classification_loss(forward_perturbed(model, batch, layer, noise), labels)
    backward(loss)
    return loss.detach()


# --------------------------------------------------------------------------------------------
# PGD and FreeLB with a placement


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


class _Delta:
    """The perturbation of one batch across ascent steps: created at the first forward (its shape
    and, for layer >= 1, the unit of relative scales come from the states it is added to)."""

    def __init__(
        self, batch, layer, mode, embedding_rms, init_magnitude, epsilon, step_size, norm, masks
    ) -> None:
        self.batch, self.layer, self.mode, self.rms = batch, layer, mode, embedding_rms
        self.init, self.eps, self.step = init_magnitude, epsilon, step_size
        self.norm, self.masks = norm, masks
        self.value: Tensor | None = None
        self.unit: float | None = None
        self.leaf: Tensor | None = None

    def scaled(self, x: float | None) -> float | None:
        return None if x is None else x * self.unit

    def __call__(self, h: Tensor) -> Tensor:
        if self.value is None:
            self.unit = _unit(h, self.batch["attention_mask"], self.layer, self.mode, self.rms)
            self.value = torch.zeros_like(h.detach())
            if self.init > 0:
                radius = start_radius(self.init * self.unit, self.scaled(self.eps))
                self.value = sum(ops.pgd_init(h.detach(), radius, norm=self.norm, mask=m) for m in self.masks)
        self.leaf = self.value.detach().to(h.dtype).requires_grad_(True)
        return self.leaf

    def ascend(self, grad: Tensor) -> None:
        """delta <- the projected ascent step from the last forward's leaf along ``grad``."""
        self.value = project_step(
            self.leaf.detach(),
            grad,
            step_size=self.scaled(self.step),
            epsilon=self.scaled(self.eps),
            norm=self.norm,
            masks=self.masks,
        )


def placed_adversarial_step(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    backward: Callable[[Tensor], None],
    *,
    steps: int,
    epsilon: float | None,
    step_size: float,
    norm: str,
    init_magnitude: float,
    adv_weight: float,
    mode: str,
    layer: int,
    sentences: str,
    ball: str,
    embedding_rms: float | None,
) -> Tensor:
    """PGD-AT with a placement: K ascent steps on delta at ``layer`` restricted to ``sentences``,
    projected per ``ball`` (gradients w.r.t. delta only), then
    ``(1 - w) CE(clean) + w CE(perturbed)`` and one ``backward``. Scales: configured x unit."""
    labels = require_labels(batch)
    masks = budgets(batch, sentences, ball)
    d = _Delta(batch, layer, mode, embedding_rms, init_magnitude, epsilon, step_size, norm, masks)
    # Inner passes through the unwrapped module (see find_perturbation: no engine hooks), and at
    # layer 0 on the detached lookup, so that they build no graph back into the parameters there.
    inner = unwrap_model(model)
    base = None
    if layer == 0:
        base = embed_inputs(model, batch).detach()
    for _ in range(steps):
        loss = classification_loss(forward_perturbed(inner, batch, layer, d, embeds=base), labels)
        (grad,) = torch.autograd.grad(loss, d.leaf)
        d.ascend(grad)
    final = d.value.detach()
    loss = weighted_loss(
        adv_weight,
        lambda: classification_loss(
            forward_perturbed(model, batch, layer, lambda h: final.to(h.dtype)), labels
        ),
        lambda: classification_loss(forward_from_ids(model, batch), labels),
    )
    backward(loss)
    return loss.detach()


def placed_freelb_step(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    backward: Callable[[Tensor], None],
    *,
    steps: int,
    epsilon: float | None,
    step_size: float,
    norm: str,
    init_magnitude: float,
    mode: str,
    layer: int,
    sentences: str,
    ball: str,
    embedding_rms: float | None,
) -> Tensor:
    """FreeLB with a placement: for t < K, ``backward(CE(f with h + delta_t) / K)`` and a projected
    ascent step on delta from the same backward (see ``freelb_step``)."""
    labels = require_labels(batch)
    masks = budgets(batch, sentences, ball)
    d = _Delta(batch, layer, mode, embedding_rms, init_magnitude, epsilon, step_size, norm, masks)

    def forward(t: int, grad: Tensor | None) -> tuple[Tensor, Tensor]:
        if t > 0:
            d.ascend(grad)
        loss = classification_loss(forward_perturbed(model, batch, layer, d), labels)
        return loss, d.leaf

    return freelb_ascent(steps, backward, forward)


# --------------------------------------------------------------------------------------------
# the methods (built by build_method when a section sets a placement option)


def is_placed(cfg) -> bool:
    """Whether a method section moves its perturbation away from the default placement."""
    return (
        getattr(cfg, "layer", 0) != 0
        or getattr(cfg, "sentences", "both") != "both"
        or getattr(cfg, "ball", "sequence") != "sequence"
        or getattr(cfg, "shape", "token") != "token"
    )


class _PlacedAdversarial(_AdversarialBase):
    """PGD / FreeLB with a placement: the configured scales are resolved per batch (see ``_unit``)."""

    def _placement(self, batch: Mapping[str, Tensor]) -> dict:
        c = self.cfg
        return dict(
            steps=c.steps,
            epsilon=c.epsilon,
            step_size=c.step_size,
            norm=c.norm,
            init_magnitude=c.init_magnitude,
            mode=c.scale_mode,
            layer=c.layer,
            sentences=c.sentences,
            ball=c.ball,
            embedding_rms=self.embedding_rms,
        )


class PlacedPGD(_PlacedAdversarial):
    """PGD-AT (kind ``pgd``) with ``layer`` / ``sentences`` / ``ball`` (see the module doc)."""

    def training_step(self, model, batch, backward, timer=NULL_TIMER):
        return placed_adversarial_step(
            model, batch, backward, adv_weight=self.cfg.adv_weight, **self._placement(batch)
        )


class PlacedFreeLB(_PlacedAdversarial):
    """FreeLB (kind ``freelb``) with ``layer`` / ``sentences`` / ``ball``."""

    def training_step(self, model, batch, backward, timer=NULL_TIMER):
        return placed_freelb_step(model, batch, backward, **self._placement(batch))


class PlacedRandomPerturbation(RandomPerturbation):
    """RS-RP (kind ``rs-rp``) with ``layer`` / ``sentences`` / ``shape``."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.sigma_mode == "neftune":
            raise FastrobustError(f"{self.label}: sigma_mode 'neftune' works at layer 0 on all tokens only")

    def training_step(self, model, batch, backward, timer=NULL_TIMER):
        c = self.cfg
        return placed_noise_step(
            model,
            batch,
            backward,
            sigma=c.sigma,
            mode=c.sigma_mode,
            distribution=c.distribution,
            layer=c.layer,
            sentences=c.sentences,
            shape=c.shape,
            embedding_rms=self.embedding_rms,
        )


def placed_method(cfg):
    """The method object of a section with a placement option (``pgd``, ``freelb`` or ``rs-rp``)."""
    return {"pgd": PlacedPGD, "freelb": PlacedFreeLB, "rs-rp": PlacedRandomPerturbation}[cfg.kind](cfg)
