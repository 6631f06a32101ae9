"""Adversarial training in the input-embedding space: PGD-AT and FreeLB.

Both perturb the word embeddings e = E[input_ids] (B, L, H) by a per-example delta in
the ball ||delta|| <= eps (L2 or Linf over the example's real-token entries):

PGD-AT (Madry et al. 2018)::

    delta_0 = 0 or a random start
    for k < K: delta_{k+1} = Proj(delta_k + a * dir(grad_delta L(e + delta_k)))
    loss = (1 - w) * L(e) + w * L(e + delta_K)        (one backward)

The K inner gradients are taken with respect to delta only (``torch.autograd.grad``),
so the inner passes neither pay for nor touch parameter gradients; the next input
``e + delta_{k+1}`` comes out of the fused ``pgd_step`` in the same pass as delta.

FreeLB (Zhu et al. 2020)::

    for t < K: backward(L(e + delta_t) / K);  delta_{t+1} = Proj(delta_t + a * dir(grad_delta))

Each ascent step's backward accumulates parameter gradients (so the optimizer step uses
the average over the K perturbed inputs) and yields the delta gradient from the same pass.

No (B, L, H) elementwise pass runs outside the fused ops: a zero start reads and allocates
no delta (``pgd_step(None, ...)``), a random start writes e + delta_0 with ``pgd_init(...,
next_input=True)``, and every later input e + delta_k (including PGD's final one and each of
FreeLB's) is written by the ``pgd_step`` that computes delta_k. Those outputs are
differentiable in e with the identity Jacobian, so the gradient w.r.t. delta_k is read off
e + delta_k itself and the embedding table is still trained through it.

``dir`` is g/||g|| per example for L2 and sign(g) for Linf (see ``fastrobust.ops.pgd_step``).

Placement (``fastrobust.methods.placement``): both steps take ``layer`` (0 = word embeddings, k =
the hidden states h_k (B, L, H) output by encoder layer k), ``sentences`` (both / first / second:
whose tokens delta may touch), ``ball`` (sequence: one ball of radius eps per example; sentence:
one per perturbed sentence) and ``unit`` (absolute, or states: scales x the RMS of the clean h_k
over real tokens). The default placement runs the fused single-pass loop above; any other runs
the same PGD / FreeLB recursion on delta (B, L, H) added at that layer through a forward hook,
with one ``pgd_step`` per ball on the masked delta (``fastrobust.methods.ascent``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fastrobust import ops
from fastrobust.config.methods import AdversarialConfig
from fastrobust.errors import FastrobustError
from fastrobust.methods import placement
from fastrobust.methods.ascent import (
    check_pgd_args,
    freelb_ascent,
    placed_adversarial,
    placed_freelb,
    start,
    weighted_loss,
)
from fastrobust.methods.base import Backward, RobustMethod, require_labels
from fastrobust.methods.embeddings import (
    classification_loss,
    embed_inputs,
    embedding_rms,
    forward_from_embeds,
    unwrap_model,
)
from fastrobust.timing import NULL_TIMER, SectionTimer


def _perturb(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    embeds: Tensor,
    *,
    steps: int,
    epsilon: float | None,
    step_size: float,
    norm: str,
    init_magnitude: float,
    timer: SectionTimer,
    final_embeds: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """The PGD loop: (delta_K, final_embeds + delta_K or None).

    Every input e + delta_k comes out of a fused op (``pgd_init`` / ``pgd_step`` with
    ``embeds=``) as a function of one leaf ``base`` (the detached lookup) with the identity
    Jacobian, so ``autograd.grad(loss, base)`` is the gradient w.r.t. delta_k and no
    (B, L, H) elementwise pass runs outside the ops. The last step writes
    ``final_embeds + delta_K`` (with final_embeds' graph) when asked.
    """
    labels = require_labels(batch)
    mask = batch["attention_mask"]
    base = embeds.detach().requires_grad_(True)
    with timer.section("perturbation"):
        delta, x = start(base, init_magnitude, epsilon, norm, mask)
    kw = dict(step_size=step_size, epsilon=epsilon, norm=norm, mask=mask)
    final = None
    for k in range(steps):
        with timer.section("forward"):
            # Through the unwrapped module: a DeepSpeed engine's forward hooks its output so that any
            # backward through it runs the engine's gradient reduction, which must happen only in
            # the trainer's backward (the delta-only grads here would trip ZeRO's bucket state).
            inner_loss = classification_loss(forward_from_embeds(unwrap_model(model), batch, x), labels)
        with timer.section("backward"):
            # x = base + delta_k: grad w.r.t. base is grad w.r.t. delta_k, and autograd.grad
            # computes only what leads to it (no parameter gradients).
            (grad,) = torch.autograd.grad(inner_loss, base)
        del inner_loss, x
        with timer.section("perturbation"):
            if k < steps - 1:
                # fused: the new delta and the next forward's input e + delta in one pass
                delta, x = ops.pgd_step(delta, grad, embeds=base, **kw)
            elif final_embeds is not None:
                delta, final = ops.pgd_step(delta, grad, embeds=final_embeds, **kw)
            else:
                delta = ops.pgd_step(delta, grad, embeds=None, **kw)
        del grad
    return delta, final


def find_perturbation(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    steps: int = 3,
    epsilon: float | None = 1.0,
    step_size: float = 0.3,
    norm: str = "l2",
    init_magnitude: float = 0.0,
    embeds: Tensor | None = None,
    timer: SectionTimer = NULL_TIMER,
) -> Tensor:
    """The PGD perturbation delta (B, L, H) of the word embeddings after ``steps`` ascent steps.

    delta_0 = 0 (or ``pgd_init`` with radius init_magnitude); then
    ``delta_{k+1} = pgd_step(delta_k, grad_delta CE(f(e + delta_k), y))``. Gradients are taken
    w.r.t. delta only (``torch.autograd.grad``): parameter ``.grad`` is never touched and
    parameter gradients are not computed. Per example ||delta|| <= epsilon (L2 or Linf over
    real tokens); padding positions are 0. Returns a tensor that does not require grad, in
    the dtype of the embeddings. ``embeds``: the lookup e if the caller already has it.
    """
    check_pgd_args(steps, epsilon, step_size, init_magnitude, norm, 1.0)
    require_labels(batch)
    if embeds is None:
        with timer.section("forward"):
            embeds = embed_inputs(model, batch)
    delta, _ = _perturb(
        model,
        batch,
        embeds,
        steps=steps,
        epsilon=epsilon,
        step_size=step_size,
        norm=norm,
        init_magnitude=init_magnitude,
        timer=timer,
        final_embeds=None,
    )
    return delta


def adversarial_step(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    backward: Backward,
    *,
    steps: int = 3,
    epsilon: float | None = 1.0,
    step_size: float = 0.3,
    norm: str = "l2",
    init_magnitude: float = 0.0,
    adv_weight: float = 1.0,
    timer: SectionTimer = NULL_TIMER,
    layer: int = 0,
    sentences: str = "both",
    ball: str = "sequence",
    unit: str = "absolute",
) -> Tensor:
    """One PGD adversarial-training step on a batch; calls ``backward(loss)`` exactly once.

    model: an HF sequence classifier (or a DeepSpeed engine around one). batch: input_ids
    (B, L), attention_mask (B, L), [token_type_ids], labels (B,). Scales are absolute, in
    the units of the input embeddings (multiply by ``embedding_rms(model)`` for relative ones).

    Finds delta (B, L, H) with :func:`find_perturbation` (``steps`` ascent steps, gradients
    w.r.t. delta only), then ``loss = (1 - adv_weight) * CE(f(e)) + adv_weight * CE(f(e + delta))``
    and ``backward(loss)``; the clean forward is skipped when adv_weight == 1. The embedding
    lookup e keeps its graph, so the embedding table is trained too. Returns the detached loss.

    Usage in a plain loop::

        loss = adversarial_step(model, batch, lambda l: l.backward(), epsilon=0.05, step_size=0.02)
        optimizer.step(); optimizer.zero_grad()

    ``layer`` / ``sentences`` / ``ball`` / ``unit``: where delta goes (see the module doc); the
    default is the fused path described above.
    """
    check_pgd_args(steps, epsilon, step_size, init_magnitude, norm, adv_weight)
    kw = dict(steps=steps, epsilon=epsilon, step_size=step_size, norm=norm, init_magnitude=init_magnitude)
    if not placement.is_default(layer, sentences, unit, ball == "sequence"):
        where = dict(layer=layer, sentences=sentences, ball=ball, unit=unit)
        return placed_adversarial(model, batch, backward, where, adv_weight=adv_weight, **kw)
    labels = require_labels(batch)
    with timer.section("forward"):
        embeds = embed_inputs(model, batch)

    def adversarial() -> Tensor:
        _, adv_input = _perturb(
            model,
            batch,
            embeds,
            steps=steps,
            epsilon=epsilon,
            step_size=step_size,
            norm=norm,
            init_magnitude=init_magnitude,
            timer=timer,
            final_embeds=embeds,
        )
        with timer.section("forward"):
            # e + delta_K, written by the last fused step, keeps e's graph (identity Jacobian):
            # the embedding table gets its gradient here.
            return classification_loss(forward_from_embeds(model, batch, adv_input), labels)

    def clean() -> Tensor:
        with timer.section("forward"):
            return classification_loss(forward_from_embeds(model, batch, embeds), labels)

    loss = weighted_loss(adv_weight, adversarial, clean)
    with timer.section("backward"):
        backward(loss)
    return loss.detach()


def freelb_step(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    backward: Backward,
    *,
    steps: int = 3,
    epsilon: float | None = 1.0,
    step_size: float = 0.3,
    norm: str = "l2",
    init_magnitude: float = 0.0,
    timer: SectionTimer = NULL_TIMER,
    layer: int = 0,
    sentences: str = "both",
    ball: str = "sequence",
    unit: str = "absolute",
) -> Tensor:
    """One FreeLB step on a batch; calls ``backward(loss_t / steps)`` once per ascent step.

    For t = 0..steps-1: ``loss_t = CE(f(e + delta_t))``, ``backward(loss_t / steps)`` —
    which accumulates the parameter gradients (1/K) sum_t grad_theta loss_t and, in the
    same pass, the gradient w.r.t. delta_t — then ``delta_{t+1} = pgd_step(delta_t, ...)``.
    The optimizer step that follows uses the average over the K perturbed inputs. The
    embedding lookup e is recomputed at every step (a cheap gather) because each
    backward frees its graph; the fused step then writes delta_{t+1} and e + delta_{t+1}
    (with e's graph) in one pass, and the delta gradient is that input's ``.grad``.
    Scales are absolute (see ``adversarial_step``).
    Returns the detached mean of the K losses. ``layer`` / ``sentences`` / ``ball`` / ``unit``: as
    in ``adversarial_step``.
    """
    check_pgd_args(steps, epsilon, step_size, init_magnitude, norm, 1.0)
    if not placement.is_default(layer, sentences, unit, ball == "sequence"):
        where = dict(layer=layer, sentences=sentences, ball=ball, unit=unit)
        kw = dict(steps=steps, epsilon=epsilon, step_size=step_size, norm=norm, init_magnitude=init_magnitude)
        return placed_freelb(model, batch, backward, where, **kw)
    labels = require_labels(batch)
    mask = batch["attention_mask"]
    delta = None

    def forward(t: int, grad: Tensor | None) -> tuple[Tensor, Tensor]:
        nonlocal delta
        with timer.section("forward"):
            embeds = embed_inputs(model, batch)
        with timer.section("perturbation"):
            if t == 0:
                delta, x = start(embeds, init_magnitude, epsilon, norm, mask)
            else:
                # delta_t and x_t = e + delta_t in one fused pass; x_t keeps e's graph (identity).
                delta, x = ops.pgd_step(
                    delta, grad, step_size=step_size, epsilon=epsilon, norm=norm, mask=mask, embeds=embeds
                )
        if not x.requires_grad:  # a frozen embedding table: x is where the delta gradient ends
            x = x.detach().requires_grad_(True)
        # d loss / d x_t is the gradient w.r.t. delta_t (x_t = e + delta_t), from the same backward.
        x.retain_grad()
        with timer.section("forward"):
            return classification_loss(forward_from_embeds(model, batch, x), labels), x

    return freelb_ascent(steps, backward, forward, timer)


class _AdversarialBase(RobustMethod):
    """Resolves the configured scales (absolute, or relative to the embedding-table RMS)."""

    cfg: AdversarialConfig
    config_class = AdversarialConfig

    @classmethod
    def relative_cost(cls, cfg: AdversarialConfig) -> int:
        return cfg.steps + 1  # K ascent passes and the final one

    def __init__(self, cfg: AdversarialConfig) -> None:
        super().__init__(cfg)
        check_pgd_args(cfg.steps, cfg.epsilon, cfg.step_size, cfg.init_magnitude, cfg.norm, cfg.adv_weight)
        self._scale: float | None = 1.0 if cfg.scale_mode == "absolute" else None

    def setup(self, model: nn.Module) -> None:
        if self.cfg.scale_mode == "relative":
            self.embedding_rms = embedding_rms(model)
            self._scale = self.embedding_rms

    def scales(self) -> dict[str, float | None]:
        """epsilon, step_size and init_magnitude in embedding units (after ``setup``); at layer >= 1
        with relative scales, in units of the RMS of h_layer (the step measures it per batch)."""
        c = self.cfg
        s = 1.0 if self._unit() == "states" else self._absolute_scale()
        eps = c.epsilon
        return {
            "epsilon": None if eps is None else eps * s,
            "step_size": c.step_size * s,
            "init_magnitude": c.init_magnitude * s,
        }

    def _unit(self) -> str:
        return "states" if self.cfg.scale_mode == "relative" and self.cfg.layer >= 1 else "absolute"

    def step_kwargs(self) -> dict:
        """The scales and the section's placement, as keyword arguments of the step functions."""
        c = self.cfg
        return dict(self.scales(), layer=c.layer, sentences=c.sentences, ball=c.ball, unit=self._unit())

    def _absolute_scale(self) -> float:
        if self._scale is None:
            raise FastrobustError(
                f"{self.label}: scale_mode 'relative' needs setup(model) before training_step "
                "(it measures the RMS of the embedding table)"
            )
        return self._scale


class PGD(_AdversarialBase):
    """PGD adversarial training (config kind ``pgd``); see :func:`adversarial_step`."""

    kind = "pgd"
    summary = "adversarial training"

    def training_step(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        backward: Backward,
        timer: SectionTimer = NULL_TIMER,
    ) -> Tensor:
        return adversarial_step(
            model,
            batch,
            backward,
            steps=self.cfg.steps,
            norm=self.cfg.norm,
            adv_weight=self.cfg.adv_weight,
            timer=timer,
            **self.step_kwargs(),
        )


class FreeLB(_AdversarialBase):
    """FreeLB (config kind ``freelb``); see :func:`freelb_step`. ``adv_weight`` does not apply."""

    kind = "freelb"

    @classmethod
    def backward_calls(cls, cfg: AdversarialConfig) -> int:
        return cfg.steps  # every ascent step back-propagates loss / K

    def training_step(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        backward: Backward,
        timer: SectionTimer = NULL_TIMER,
    ) -> Tensor:
        return freelb_step(
            model,
            batch,
            backward,
            steps=self.cfg.steps,
            norm=self.cfg.norm,
            timer=timer,
            **self.step_kwargs(),
        )
