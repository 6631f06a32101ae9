"""The ascent machinery PGD-AT and FreeLB share (``fastrobust.methods.adversarial``).

* argument checks, the random start delta_0 and its radius, PGD-AT's weighted loss
  ``(1 - w) CE(clean) + w CE(perturbed)``, FreeLB's K-step loop;
* the loop at a placement other than the default (``fastrobust.methods.placement``): delta
  (B, L, H) added to the hidden states h_layer through a forward hook, the PGD / FreeLB recursion
  on it with one projected step per ball, the scales in the unit of those states.

The default placement (word embeddings, both sentences, one ball per example) runs the fused
single-pass loop of ``adversarial.py`` instead; both paths run the same recursion.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from fastrobust import ops
from fastrobust.errors import FastrobustError
from fastrobust.methods import placement
from fastrobust.methods.base import Backward, require_labels
from fastrobust.methods.embeddings import classification_loss, embed_inputs, forward_from_ids, unwrap_model
from fastrobust.timing import NULL_TIMER, SectionTimer
from fastrobust.validation import NORMS


def check_pgd_args(steps, epsilon, step_size, init_magnitude, norm, adv_weight) -> None:
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


def start(
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


class PlacedDelta:
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


def placed_delta(batch, where: dict, steps, epsilon, step_size, norm, init_magnitude) -> PlacedDelta:
    if where["sentences"] not in placement.SENTENCES:
        raise FastrobustError(f"sentences: must be one of {placement.SENTENCES}, got {where['sentences']!r}")
    masks = placement.budgets(batch, where["sentences"], where["ball"])
    return PlacedDelta(batch, where["unit"], init_magnitude, epsilon, step_size, norm, masks)


def placed_adversarial(model, batch, backward, where, *, adv_weight, **kw) -> Tensor:
    """PGD at a placement: K ascent steps on delta (gradients w.r.t. delta only), then
    ``(1 - w) CE(clean) + w CE(perturbed)`` and one ``backward``."""
    labels = require_labels(batch)
    layer, steps = where["layer"], kw["steps"]
    d = placed_delta(batch, where, **kw)
    # Inner passes through the unwrapped module (no engine hooks: see adversarial._perturb), and at layer 0 on
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


def placed_freelb(model, batch, backward, where, **kw) -> Tensor:
    """FreeLB at a placement: for t < K, ``backward(CE(f with h + delta_t) / K)`` and a projected
    ascent step on delta from the same backward."""
    labels = require_labels(batch)
    d = placed_delta(batch, where, **kw)

    def forward(t: int, grad: Tensor | None) -> tuple[Tensor, Tensor]:
        if t > 0:
            d.ascend(grad)
        loss = classification_loss(placement.forward_perturbed(model, batch, where["layer"], d), labels)
        return loss, d.leaf

    return freelb_ascent(kw["steps"], backward, forward)
