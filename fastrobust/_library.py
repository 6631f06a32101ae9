"""The four ops registered with ``torch.library`` (namespace ``fastrobust``).

``torch.ops.fastrobust.{add_noise, noisy_copies, pgd_init, pgd_step}`` are what the public
functions of :mod:`fastrobust.ops` call after checking their arguments. As custom ops they
are opaque to ``torch.compile`` (no graph break, no tracing into Triton or the interpreter),
carry shape-only fake implementations (so FakeTensor tracing and ``meta`` tensors propagate
shapes), and have their autograd formula registered here:

* add_noise: d out / d embeds = identity; noisy_copies: the sum over the copies.
* pgd_init / pgd_step: the new delta is not differentiable; ``embeds + delta`` (the second
  output, when asked for) is differentiable in embeds with the identity Jacobian, so a
  method can feed it to the model and still train the embedding table through it.

Each op is a pure function of its inputs. Random ops receive their seed as an input: an
int (a host scalar: the same noise at every CUDA-graph replay), or a one-element integer
tensor (the kernels load it on the device). ``seed_drawn`` means seed=None: under
torch.compile :mod:`fastrobust.ops` draws the seed tensor from torch's default generator in
the traced code, so two calls never share an input and a compiler's common-subexpression pass
never merges them; eager calls pass no tensor and the implementation draws it for the
kernels. The torch reference draws its noise from the default generator directly instead
of reading a seed on the host.

The backend (``FASTROBUST_BACKEND``, see :mod:`fastrobust.dispatch`) is chosen inside the op
at run time: changing it takes effect at the next call of a compiled graph too. Triton
launches run under the tensors' CUDA device.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastrobust import reference as _ref
from fastrobust.dispatch import backend_for
from fastrobust.validation import SEED_HIGH

# torch.library infers the schema from the annotations, which must be typing.Optional.
# ruff: noqa: UP045


def _seed(backend: str, seed: int, seed_t: Optional[Tensor], seed_drawn: bool, like: Tensor):
    """The seed in the form the chosen backend takes (None: torch's default generator).

    A drawn seed that was not drawn yet (eager calls defer the draw to here, where the
    backend is known) is drawn on the device for the kernels; the torch path draws its
    noise from the default generator itself.
    """
    if backend == "triton":
        if seed_drawn and seed_t is None:
            return torch.randint(0, SEED_HIGH, (1,), device=like.device)
        return seed_t if seed_t is not None else seed
    if seed_drawn:
        return None
    return seed_t if seed_t is not None else seed


def noise_impl(embeds, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask, copies):
    """add_noise (copies None) or noisy_copies on the backend chosen now."""
    backend = backend_for(embeds)
    sig = sigma_t if sigma_t is not None else sigma
    distribution = "gaussian" if gaussian else "uniform"
    s = _seed(backend, seed, seed_t, seed_drawn, embeds)
    if backend == "triton":
        from fastrobust.kernels import noise

        return noise.noise_forward(embeds, sig, s, distribution, mask, copies)
    return _ref.noise(embeds, sig, s, distribution, mask, copies)


def init_impl(embeds, epsilon, linf, mask, seed, seed_t, seed_drawn, next_input):
    """pgd_init's (delta, embeds + delta or an empty tensor) on the backend chosen now."""
    backend = backend_for(embeds)
    norm = "linf" if linf else "l2"
    s = _seed(backend, seed, seed_t, seed_drawn, embeds)
    if backend == "triton":
        from fastrobust.kernels import pgd

        out = pgd.pgd_init_forward(embeds, epsilon, norm, mask, s, next_input)
    else:
        out = _ref.init(embeds, epsilon, norm, mask, s, next_input)
    return out if next_input else (out, embeds.new_empty(0))


def step_impl(delta, grad, step_size, epsilon, linf, mask, embeds):
    """pgd_step's (d', embeds + d' or an empty tensor) on the backend chosen now."""
    backend = backend_for(grad, delta, embeds)
    norm = "linf" if linf else "l2"
    if backend == "triton":
        from fastrobust.kernels import pgd

        out = pgd.pgd_step_forward(delta, grad, step_size, epsilon, norm, mask, embeds)
    else:
        out = _ref.step(delta, grad, step_size, epsilon, norm, mask, embeds)
    return out if embeds is not None else (out, grad.new_empty(0))


# --------------------------------------------------------------------------- eager autograd
# Outside torch.compile the public ops call the implementations through these Functions:
# the same math and the same autograd formulas as the registered ops, without the custom-op
# machinery's per-call Python layers (~50-100 us a call here, more than a small kernel).


class EagerNoise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeds, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask, copies):  # noqa: D102
        ctx.copies = copies
        return noise_impl(embeds, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask, copies)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return (grad if ctx.copies is None else grad.sum(0)), *([None] * 8)


class EagerInit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeds, epsilon, linf, mask, seed, seed_t, seed_drawn, next_input):  # noqa: D102
        delta, nxt = init_impl(embeds, epsilon, linf, mask, seed, seed_t, seed_drawn, next_input)
        _init_setup(ctx, (next_input,), (delta, nxt))
        return delta, nxt

    @staticmethod
    def backward(ctx, grad_delta, grad_next):  # noqa: D102
        return _init_backward(ctx, grad_delta, grad_next)


class EagerStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta, grad, step_size, epsilon, linf, mask, embeds):  # noqa: D102
        new, nxt = step_impl(delta, grad, step_size, epsilon, linf, mask, embeds)
        _step_setup(ctx, (embeds,), (new, nxt))
        return new, nxt

    @staticmethod
    def backward(ctx, grad_delta, grad_next):  # noqa: D102
        return _step_backward(ctx, grad_delta, grad_next)


# --------------------------------------------------------------------------- noise


@torch.library.custom_op("fastrobust::add_noise", mutates_args=())
def add_noise(
    embeds: Tensor,
    sigma: float,
    sigma_t: Optional[Tensor],
    seed: int,
    seed_t: Optional[Tensor],
    seed_drawn: bool,
    gaussian: bool,
    mask: Optional[Tensor],
) -> Tensor:
    """embeds + sigma * z * mask; sigma_t (B,) replaces sigma when given."""
    return noise_impl(embeds, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask, None)


@add_noise.register_fake
def _(embeds, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask):
    return embeds.new_empty(embeds.shape)


def _add_noise_backward(ctx, grad):
    return grad, None, None, None, None, None, None, None


add_noise.register_autograd(_add_noise_backward)


@torch.library.custom_op("fastrobust::noisy_copies", mutates_args=())
def noisy_copies(
    embeds: Tensor,
    n: int,
    sigma: float,
    sigma_t: Optional[Tensor],
    seed: int,
    seed_t: Optional[Tensor],
    seed_drawn: bool,
    gaussian: bool,
    mask: Optional[Tensor],
) -> Tensor:
    """n independent noisy copies, (n, B, L, H)."""
    return noise_impl(embeds, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask, n)


@noisy_copies.register_fake
def _(embeds, n, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask):
    return embeds.new_empty((n, *embeds.shape))


def _noisy_copies_backward(ctx, grad):
    return grad.sum(0), None, None, None, None, None, None, None, None


noisy_copies.register_autograd(_noisy_copies_backward)


# --------------------------------------------------------------------------- PGD


@torch.library.custom_op("fastrobust::pgd_init", mutates_args=())
def pgd_init(
    embeds: Tensor,
    epsilon: float,
    linf: bool,
    mask: Optional[Tensor],
    seed: int,
    seed_t: Optional[Tensor],
    seed_drawn: bool,
    next_input: bool,
) -> tuple[Tensor, Tensor]:
    """(delta, embeds + delta); the second is an empty tensor unless next_input."""
    return init_impl(embeds, epsilon, linf, mask, seed, seed_t, seed_drawn, next_input)


@pgd_init.register_fake
def _(embeds, epsilon, linf, mask, seed, seed_t, seed_drawn, next_input):
    return embeds.new_empty(embeds.shape), embeds.new_empty(embeds.shape if next_input else (0,))


def _init_setup(ctx, inputs, output):
    # One call: each mark_non_differentiable replaces the previous set.
    ctx.next_input = inputs[-1]
    ctx.mark_non_differentiable(*(output[:1] if ctx.next_input else output))


def _init_backward(ctx, grad_delta, grad_next):
    return (grad_next if ctx.next_input else None), None, None, None, None, None, None, None


pgd_init.register_autograd(_init_backward, setup_context=_init_setup)


@torch.library.custom_op("fastrobust::pgd_step", mutates_args=())
def pgd_step(
    delta: Optional[Tensor],
    grad: Tensor,
    step_size: float,
    epsilon: Optional[float],
    linf: bool,
    mask: Optional[Tensor],
    embeds: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """(d', embeds + d'); the second is an empty tensor when embeds is None."""
    return step_impl(delta, grad, step_size, epsilon, linf, mask, embeds)


def _step_dtype(delta, grad, embeds):
    return delta.dtype if delta is not None else (embeds.dtype if embeds is not None else grad.dtype)


@pgd_step.register_fake
def _(delta, grad, step_size, epsilon, linf, mask, embeds):
    new = grad.new_empty(grad.shape, dtype=_step_dtype(delta, grad, embeds))
    return new, (embeds.new_empty(embeds.shape) if embeds is not None else grad.new_empty(0))


def _step_setup(ctx, inputs, output):
    ctx.has_embeds = inputs[-1] is not None
    ctx.mark_non_differentiable(*(output[:1] if ctx.has_embeds else output))


def _step_backward(ctx, grad_delta, grad_next):
    return None, None, None, None, None, None, (grad_next if ctx.has_embeds else None)


pgd_step.register_autograd(_step_backward, setup_context=_step_setup)
