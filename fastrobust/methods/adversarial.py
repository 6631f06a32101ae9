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
with one ``pgd_step`` per ball on the masked delta.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from fastrobust import ops
from fastrobust.config.methods import AdversarialConfig
from fastrobust.errors import FastrobustError
from fastrobust.methods import placement
from fastrobust.methods.base import Backward, RobustMethod, require_labels
from fastrobust.methods.embeddings import (
    classification_loss,
    embed_inputs,
    embedding_rms,
    forward_from_embeds,
    forward_from_ids,
    unwrap_model,
)
from fastrobust.timing import NULL_TIMER, SectionTimer
from fastrobust.validation import NORMS


def _check_pgd_args(steps, epsilon, step_size, init_magnitude, norm, adv_weight) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise FastrobustError(f"steps: must be an integer >= 1, got {steps!r}")
    for name, value in (("step_size", step_size), ("init_magnitude", init_magnitude)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise FastrobustError(f"{name}: must be a finite number >= 0, got {value!r}")
    if epsilon is not None and (not isinstance(epsilon, (int, float)) or not epsilon >= 0):
        raise FastrobustError(f"epsilon: must be a number >= 0 or None (unbounded), got {epsilon!r}")
    if norm not in NORMS:
        raise FastrobustError(f"norm: must be one of {NORMS}, got {norm!r}")
    if not isinstance(adv_weight, (int, float)) or not 0 <= adv_weight <= 1:
        raise FastrobustError(f"adv_weight: must be in [0, 1], got {adv_weight!r}")


def _start(
    embeds: Tensor, init_magnitude: float, epsilon: float | None, norm: str, mask: Tensor
) -> tuple[Tensor | None, Tensor]:
    """(delta_0, e + delta_0): a zero start is (None, e) — nothing is allocated or added —
    else ``pgd_init`` in the ball of radius init_magnitude (capped at epsilon), which writes
    e + delta_0 in the same pass (differentiable in e, identity)."""
    if init_magnitude <= 0:
        return None, embeds
    return ops.pgd_init(embeds, start_radius(init_magnitude, epsilon), norm=norm, mask=mask, next_input=True)


def start_radius(init_magnitude: float, epsilon: float | None) -> float:
    """Radius of the random start: init_magnitude, capped at epsilon (a start outside the ball
    would be projected away by the first step anyway)."""
    return init_magnitude if epsilon is None else min(init_magnitude, epsilon)


def weighted_loss(
    adv_weight: float, adversarial: Callable[[], Tensor], clean: Callable[[], Tensor]
) -> Tensor:
    """PGD-AT's training loss ``(1 - w) * clean() + w * adversarial()``; a term of weight 0 is not
    computed. The adversarial term comes first (its forward passes draw dropout before the
    clean forward's)."""
    loss = None
    if adv_weight > 0:
        loss = adv_weight * adversarial()
    if adv_weight < 1:
        clean_loss = (1 - adv_weight) * clean()
        loss = clean_loss if loss is None else loss + clean_loss
    return loss


def freelb_ascent(
    steps: int,
    backward: Backward,
    forward: Callable[[int, Tensor | None], tuple[Tensor, Tensor]],
    timer: SectionTimer = NULL_TIMER,
) -> Tensor:
    """FreeLB's K ascent steps around ``forward(t, grad_{t-1}) -> (CE loss_t, x_t)``.

    ``forward`` takes the ascent step from grad_{t-1} (None at t = 0), runs the perturbed forward
    and returns its loss with the tensor x_t whose ``.grad`` is the gradient w.r.t. delta_t. Each
    step calls ``backward(loss_t / steps)`` (parameter gradients accumulate the average over the
    K perturbed inputs, and the delta gradient comes from the same pass). Returns the detached
    mean of the K losses.
    """
    total = grad = None
    for t in range(steps):
        loss, x = forward(t, grad)
        loss = loss / steps
        with timer.section("backward"):
            backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
        grad = x.grad
        if t < steps - 1 and grad is None:
            raise FastrobustError(
                "freelb: backward() did not propagate a gradient to the perturbed input "
                "(does the backward callable call loss.backward() / engine.backward(loss)?)"
            )
        del x, loss
    return total


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
        delta, x = _start(base, init_magnitude, epsilon, norm, mask)
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


class _Delta:
    """delta (B, L, H) at a placement across ascent steps: created at the first forward, where the
    shape and (unit ``states``) the unit of the scales come from the states it is added to."""

    def __init__(self, batch, unit, init_magnitude, epsilon, step_size, norm, masks) -> None:
        self.batch, self.unit_kind = batch, unit
        self.init, self.eps, self.step = init_magnitude, epsilon, step_size
        self.norm, self.masks = norm, masks
        self.value: Tensor | None = None
        self.unit: float | None = None
        self.leaf: Tensor | None = None

    def scaled(self, x: float | None) -> float | None:
        return None if x is None else x * self.unit

    def __call__(self, h: Tensor) -> Tensor:
        if self.value is None:
            self.unit = placement.state_unit(h, self.batch["attention_mask"], self.unit_kind)
            self.value = torch.zeros_like(h.detach())
            if self.init > 0:
                radius = start_radius(self.init * self.unit, self.scaled(self.eps))
                self.value = sum(ops.pgd_init(h.detach(), radius, norm=self.norm, mask=m) for m in self.masks)
        self.leaf = self.value.detach().to(h.dtype).requires_grad_(True)
        return self.leaf

    def ascend(self, grad: Tensor) -> None:
        """delta <- the projected ascent step from the last forward's leaf along ``grad``."""
        self.value = placement.project_step(
            self.leaf.detach(),
            grad,
            step_size=self.scaled(self.step),
            epsilon=self.scaled(self.eps),
            norm=self.norm,
            masks=self.masks,
        )


def _placed_delta(batch, where: dict, steps, epsilon, step_size, norm, init_magnitude) -> _Delta:
    if where["sentences"] not in placement.SENTENCES:
        raise FastrobustError(f"sentences: must be one of {placement.SENTENCES}, got {where['sentences']!r}")
    masks = placement.budgets(batch, where["sentences"], where["ball"])
    return _Delta(batch, where["unit"], init_magnitude, epsilon, step_size, norm, masks)


def _placed_adversarial(model, batch, backward, where, *, adv_weight, **kw) -> Tensor:
    """PGD at a placement: K ascent steps on delta (gradients w.r.t. delta only), then
    ``(1 - w) CE(clean) + w CE(perturbed)`` and one ``backward``."""
    labels = require_labels(batch)
    layer, steps = where["layer"], kw["steps"]
    d = _placed_delta(batch, where, **kw)
    # Inner passes through the unwrapped module (see _perturb: no engine hooks), and at layer 0 on
    # the detached lookup, so that they build no graph back into the parameters there.
    inner = unwrap_model(model)
    base = embed_inputs(model, batch).detach() if layer == 0 else None
    for _ in range(steps):
        loss = classification_loss(placement.forward_perturbed(inner, batch, layer, d, embeds=base), labels)
        (grad,) = torch.autograd.grad(loss, d.leaf)
        d.ascend(grad)
    final = d.value.detach()
    loss = weighted_loss(
        adv_weight,
        lambda: classification_loss(
            placement.forward_perturbed(model, batch, layer, lambda h: final.to(h.dtype)), labels
        ),
        lambda: classification_loss(forward_from_ids(model, batch), labels),
    )
    backward(loss)
    return loss.detach()


def _placed_freelb(model, batch, backward, where, **kw) -> Tensor:
    """FreeLB at a placement: for t < K, ``backward(CE(f with h + delta_t) / K)`` and a projected
    ascent step on delta from the same backward."""
    labels = require_labels(batch)
    d = _placed_delta(batch, where, **kw)

    def forward(t: int, grad: Tensor | None) -> tuple[Tensor, Tensor]:
        if t > 0:
            d.ascend(grad)
        loss = classification_loss(placement.forward_perturbed(model, batch, where["layer"], d), labels)
        return loss, d.leaf

    return freelb_ascent(kw["steps"], backward, forward)


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
    _check_pgd_args(steps, epsilon, step_size, init_magnitude, norm, 1.0)
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
    _check_pgd_args(steps, epsilon, step_size, init_magnitude, norm, adv_weight)
    kw = dict(steps=steps, epsilon=epsilon, step_size=step_size, norm=norm, init_magnitude=init_magnitude)
    if not placement.is_default(layer, sentences, unit, ball == "sequence"):
        where = dict(layer=layer, sentences=sentences, ball=ball, unit=unit)
        return _placed_adversarial(model, batch, backward, where, adv_weight=adv_weight, **kw)
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
    _check_pgd_args(steps, epsilon, step_size, init_magnitude, norm, 1.0)
    if not placement.is_default(layer, sentences, unit, ball == "sequence"):
        where = dict(layer=layer, sentences=sentences, ball=ball, unit=unit)
        kw = dict(steps=steps, epsilon=epsilon, step_size=step_size, norm=norm, init_magnitude=init_magnitude)
        return _placed_freelb(model, batch, backward, where, **kw)
    labels = require_labels(batch)
    mask = batch["attention_mask"]
    delta = None

    def forward(t: int, grad: Tensor | None) -> tuple[Tensor, Tensor]:
        nonlocal delta
        with timer.section("forward"):
            embeds = embed_inputs(model, batch)
        with timer.section("perturbation"):
            if t == 0:
                delta, x = _start(embeds, init_magnitude, epsilon, norm, mask)
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

    def __init__(self, cfg: AdversarialConfig) -> None:
        super().__init__(cfg)
        _check_pgd_args(cfg.steps, cfg.epsilon, cfg.step_size, cfg.init_magnitude, cfg.norm, cfg.adv_weight)
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
