"""RS-RP: randomized smoothing by random perturbation of the input embeddings.

Training step::

    e = E[input_ids]                      (B, L, H)
    e~ = e + sigma_b * z * m              z ~ N(0, 1) or U(-1, 1), m = attention mask (real tokens)
    loss = CE(f(e~), y);  backward(loss)

sigma per mode:

* ``absolute``: sigma as configured, in embedding units;
* ``relative``: sigma * RMS(E), the RMS of the input-embedding table (measured in ``setup``);
  a relative sigma means the same thing for every model, an absolute one does not;
* ``neftune``: per example sigma_b = alpha / sqrt(L_b * H) with alpha = the configured sigma
  and L_b the number of real tokens of example b (NEFTune, Jain et al. 2023, scales by the
  padded length in some implementations; here padding does not dilute the noise).

The noise is drawn inside the fused ``add_noise`` op from a seed taken from torch's default
generator, so ``torch.manual_seed`` reproduces a run. sigma == 0 skips the op entirely (no
random draw), which makes the step identical to the baseline step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fastrobust import ops
from fastrobust.config.methods import NoiseConfig
from fastrobust.errors import FastrobustError
from fastrobust.methods import placement
from fastrobust.methods.base import Backward, RobustMethod, require_labels
from fastrobust.methods.embeddings import (
    classification_loss,
    embed_inputs,
    embedding_rms,
    forward_from_embeds,
    input_embedding_module,
)
from fastrobust.timing import NULL_TIMER, SectionTimer

SIGMA_MODES = ("absolute", "relative", "neftune")


def neftune_sigma(attention_mask: Tensor, hidden_size: int, alpha: float) -> Tensor:
    """Per-example NEFTune scale alpha / sqrt(L_b * H), L_b = real tokens of example b.

    attention_mask (B, L) -> (B,) float32 on the mask's device. An example with no real
    token gets 0 (there is nothing to perturb).
    """
    lengths = attention_mask.ne(0).sum(dim=1).to(torch.float32)
    return torch.where(lengths > 0, alpha / torch.sqrt(lengths.clamp(min=1.0) * hidden_size), 0.0)


def resolve_sigma(
    sigma: float, sigma_mode: str, attention_mask: Tensor, hidden_size: int, rms: float | None
) -> float | Tensor:
    """The sigma passed to ``add_noise``: a float (absolute/relative) or a (B,) tensor (neftune)."""
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise FastrobustError(f"sigma: must be a finite number >= 0, got {sigma!r}")
    if sigma_mode == "absolute":
        return float(sigma)
    if sigma_mode == "relative":
        if rms is None:
            raise FastrobustError("sigma_mode 'relative' needs the embedding RMS (call setup(model) first)")
        return float(sigma) * rms
    if sigma_mode == "neftune":
        return neftune_sigma(attention_mask, hidden_size, float(sigma))
    raise FastrobustError(f"sigma_mode: must be one of {SIGMA_MODES}, got {sigma_mode!r}")


def noisy_embedding_step(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    backward: Backward,
    *,
    sigma: float | Tensor,
    distribution: str = "gaussian",
    timer: SectionTimer = NULL_TIMER,
    layer: int = 0,
    sentences: str = "both",
    shape: str = "token",
    unit: str = "absolute",
) -> Tensor:
    """One RS-RP step with an absolute sigma (float, or (B,) tensor per example).

    loss = CE(f(e + sigma * z * mask)), backward(loss) once; returns the detached loss.

    Placement (``fastrobust.methods.placement``): the noise goes on the states h_layer (B, L, H)
    (0 = word embeddings), on the real tokens of ``sentences`` only, with ``shape`` token (i.i.d.
    per entry) or sentence (one z_s ~ N(0, sigma^2 I_H) per sentence, added to each of its
    tokens); ``unit`` states multiplies sigma by the RMS of the clean h_layer over real tokens.
    """
    if not placement.is_default(layer, sentences, unit, shape == "token"):
        return _placed_noise_step(
            model,
            batch,
            backward,
            sigma,
            distribution,
            layer=layer,
            sentences=sentences,
            shape=shape,
            unit=unit,
        )
    labels = require_labels(batch)
    with timer.section("forward"):
        embeds = embed_inputs(model, batch)
    if not (isinstance(sigma, (int, float)) and sigma == 0):
        with timer.section("perturbation"):
            embeds = ops.add_noise(embeds, sigma, distribution=distribution, mask=batch["attention_mask"])
    with timer.section("forward"):
        loss = classification_loss(forward_from_embeds(model, batch, embeds), labels)
    with timer.section("backward"):
        backward(loss)
    return loss.detach()


def _placed_noise_step(
    model, batch, backward, sigma, distribution, *, layer, sentences, shape, unit
) -> Tensor:
    """The noise of ``noisy_embedding_step`` at a placement other than the default."""
    labels = require_labels(batch)

    def noise(h: Tensor) -> Tensor:
        s = sigma * placement.state_unit(h, batch["attention_mask"], unit)
        zero = torch.zeros_like(h.detach())
        return placement.apply_noise(
            zero, s, batch, shape=shape, sentences=sentences, distribution=distribution
        )

    loss = classification_loss(placement.forward_perturbed(model, batch, layer, noise), labels)
    backward(loss)
    return loss.detach()


class RandomPerturbation(RobustMethod):
    """RS-RP (config kind ``rs-rp``)."""

    kind = "rs-rp"
    config_class = NoiseConfig
    summary = "embedding noise"

    cfg: NoiseConfig

    def __init__(self, cfg: NoiseConfig) -> None:
        super().__init__(cfg)
        if cfg.sigma < 0 or not math.isfinite(cfg.sigma):
            raise FastrobustError(f"{self.label}: sigma must be a finite number >= 0, got {cfg.sigma!r}")
        default = cfg.layer == 0 and cfg.sentences == "both" and cfg.shape == "token"
        if cfg.sigma_mode == "neftune" and not default:
            raise FastrobustError(f"{self.label}: sigma_mode 'neftune' works at layer 0 on all tokens only")

    def setup(self, model: nn.Module) -> None:
        if self.cfg.sigma_mode == "relative":
            self.embedding_rms = embedding_rms(model)

    def training_step(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        backward: Backward,
        timer: SectionTimer = NULL_TIMER,
    ) -> Tensor:
        if self.cfg.sigma_mode == "relative" and self.embedding_rms is None:
            raise FastrobustError(
                f"{self.label}: sigma_mode 'relative' needs setup(model) before training_step"
            )
        c = self.cfg
        if c.sigma_mode == "relative" and c.layer >= 1:
            # sigma in units of the RMS of h_layer over the batch's real tokens
            where = dict(layer=c.layer, sentences=c.sentences, shape=c.shape, unit="states")
            return noisy_embedding_step(
                model, batch, backward, sigma=c.sigma, distribution=c.distribution, timer=timer, **where
            )
        hidden = _hidden_size(model)
        sigma = resolve_sigma(
            self.cfg.sigma, self.cfg.sigma_mode, batch["attention_mask"], hidden, self.embedding_rms
        )
        if self.cfg.sigma == 0:
            sigma = 0.0  # also for neftune: no random draw, exactly the baseline step
        where = dict(layer=c.layer, sentences=c.sentences, shape=c.shape, unit="absolute")
        return noisy_embedding_step(
            model, batch, backward, sigma=sigma, distribution=self.cfg.distribution, timer=timer, **where
        )


def _hidden_size(model: nn.Module) -> int:
    module = input_embedding_module(model)
    dim = getattr(module, "embedding_dim", None)
    if isinstance(dim, int):
        return dim
    weight = getattr(module, "weight", None)
    # ZeRO-3 partitions the weight; its full shape is kept in ds_shape
    shape = getattr(weight, "ds_shape", None) or getattr(weight, "shape", None)
    if not shape:
        raise FastrobustError("model: cannot tell the hidden size of the input embeddings")
    return int(shape[-1])
