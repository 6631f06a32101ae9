"""The four ops registered with ``torch.library`` (namespace ``fastrobust``).

``torch.ops.fastrobust.{add_noise, noisy_copies, pgd_init, pgd_step}`` are what the public
functions of :mod:`fastrobust.ops` call after checking their arguments. As custom ops they
are opaque to ``torch.compile`` (no graph break, no tracing into Triton or the interpreter),
carry shape-only fake implementations (so FakeTensor tracing and ``meta`` tensors propagate
shapes), and have their autograd formula registered here (the same functions also make each
op's eager twin, an ``autograd.Function`` that plain tensors in eager mode call instead, see
:func:`registered`):

* add_noise: d out / d embeds = identity; noisy_copies: the sum over the copies.
* pgd_init / pgd_step: the new delta is not differentiable; ``embeds + delta`` (the second
  output, when asked for) is differentiable in embeds with the identity Jacobian, so a
  method can feed it to the model and still train the embedding table through it.

Each op is a pure function of its inputs. Random ops receive their seed as an input: an
int (a host scalar: the same noise at every CUDA-graph replay), or a one-element integer
tensor (the kernels load it on the device). ``seed_drawn`` means seed=None: for the
registered op :func:`seed_args` draws the seed tensor from torch's default generator in the
traced code, so two calls never share an input and a compiler's common-subexpression pass
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
from fastrobust.validation import SEED_HIGH, step_dtype

# torch.library infers the schema from the annotations, which must be typing.Optional.
# ruff: noqa: UP045


# --------------------------------------------------------------------------- calling convention
# Every op call goes through the registered custom op when a compiler or a tensor subclass must
# see it, and through its eager twin otherwise (see :func:`call`).

_PLAIN = (Tensor, torch.nn.Parameter)


def registered(t: Tensor) -> bool:
    """Whether a call on ``t`` takes the registered custom op: under torch.compile / export, and for
    meta, fake or other subclass tensors. Plain CPU and CUDA tensors in eager mode take the op's
    eager twin: the same implementation and autograd formulas through a plain autograd.Function,
    without the custom-op machinery's per-call Python layers (8-40 us a call on a CPU here,
    more than a small kernel)."""
    return torch.compiler.is_compiling() or type(t) not in _PLAIN or t.device.type not in ("cpu", "cuda")


def call(op, use_registered: bool, *args):
    """``op(*args)`` through the registered custom op, or its eager twin (see :func:`registered`)."""
    return op(*args) if use_registered else _EAGER[op].apply(*args)


def sigma_args(sigma: float | Tensor) -> tuple[float, Tensor | None]:
    """(sigma, sigma_t) of the schema: a float, or a (B,) tensor that replaces it."""
    return (0.0, sigma) if isinstance(sigma, Tensor) else (sigma, None)


def seed_args(
    seed: int | Tensor | None, like: Tensor, use_registered: bool
) -> tuple[int, Tensor | None, bool]:
    """(seed, seed_t, seed_drawn) of the schema for a checked user seed.

    seed=None: a fresh draw of torch's default generator on the tensors' device. It is an
    ordinary torch RNG op, so torch.compile keeps it in the graph, CUDA graphs advance it at
    every replay, and torch.manual_seed reproduces it. It is drawn here for the registered
    op, whose output then depends on its inputs only (a compiler may merge two calls of an
    op with equal inputs); an eager call leaves the draw to the implementation
    (:func:`_backend_seed`), which skips it on the torch path (that path draws its noise from
    the same generator directly).
    """
    if seed is None:
        if not use_registered:
            return 0, None, True
        return 0, torch.randint(0, SEED_HIGH, (1,), device=like.device), True
    if isinstance(seed, Tensor):
        return 0, seed, False
    return seed, None, False


def _backend_seed(backend: str, seed: int, seed_t: Optional[Tensor], seed_drawn: bool, like: Tensor):
    """The schema's seed in the form the chosen backend takes (None: torch's default generator).

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


# --------------------------------------------------------------------------- implementations
# The kernels import triton, an optional dependency: they are imported when a call picks them.


def noise_impl(embeds, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask, copies):
    """add_noise (copies None) or noisy_copies on the backend chosen now."""
    backend = backend_for(embeds)
    sig = sigma_t if sigma_t is not None else sigma
    distribution = "gaussian" if gaussian else "uniform"
    s = _backend_seed(backend, seed, seed_t, seed_drawn, embeds)
    if backend == "triton":
        from fastrobust.kernels import noise  # Triton: imported for CUDA tensors only

        return noise.noise_forward(embeds, sig, s, distribution, mask, copies)
    return _ref.noise(embeds, sig, s, distribution, mask, copies)


def init_impl(embeds, epsilon, linf, mask, seed, seed_t, seed_drawn, next_input):
    """pgd_init's (delta, embeds + delta or an empty tensor) on the backend chosen now."""
    backend = backend_for(embeds)
    norm = "linf" if linf else "l2"
    s = _backend_seed(backend, seed, seed_t, seed_drawn, embeds)
    if backend == "triton":
        from fastrobust.kernels import pgd  # Triton: imported for CUDA tensors only

        out = pgd.pgd_init_forward(embeds, epsilon, norm, mask, s, next_input)
    else:
        out = _ref.init(embeds, epsilon, norm, mask, s, next_input)
    return out if next_input else (out, embeds.new_empty(0))


def step_impl(delta, grad, step_size, epsilon, linf, mask, embeds):
    """pgd_step's (d', embeds + d' or an empty tensor) on the backend chosen now."""
    backend = backend_for(grad, delta, embeds)
    norm = "linf" if linf else "l2"
    if backend == "triton":
        from fastrobust.kernels import pgd  # Triton: imported for CUDA tensors only

        out = pgd.pgd_step_forward(delta, grad, step_size, epsilon, norm, mask, embeds)
    else:
        out = _ref.step(delta, grad, step_size, epsilon, norm, mask, embeds)
    return out if embeds is not None else (out, grad.new_empty(0))


# --------------------------------------------------------------------------- registration
# Op -> its eager twin, an autograd.Function built from the op's own implementation and autograd
# functions (forward / setup_context / backward), so both paths share one definition of each.
_EAGER: dict[object, type[torch.autograd.Function]] = {}


def _no_context(ctx, inputs, output) -> None:
    """setup_context of an op whose backward needs nothing from the forward."""


def _define(name: str, impl, fake, backward, setup_context=_no_context):
    """Register ``impl`` as ``torch.ops.fastrobust.<name>`` (schema from its annotations) with a
    shape-only ``fake`` and the autograd formula (``setup_context``, ``backward``: one gradient per
    input), and build its eager twin from the same functions. Returns the custom op."""
    op = torch.library.custom_op(f"fastrobust::{name}", impl, mutates_args=())
    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)

    # A forward that takes ctx (the classic form) rather than a separate setup_context staticmethod:
    # torch routes Functions of the latter form through its functorch layer, ~15 us more per call.
    def forward(ctx, *args):
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    members = {"forward": staticmethod(forward), "backward": staticmethod(backward)}
    _EAGER[op] = type(f"Eager_{name}", (torch.autograd.Function,), members)
    return op


# --------------------------------------------------------------------------- noise


def _add_noise(
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


def _add_noise_fake(embeds, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask):
    return embeds.new_empty(embeds.shape)


def _add_noise_backward(ctx, grad):
    """d out / d embeds = identity."""
    return grad, None, None, None, None, None, None, None


add_noise = _define("add_noise", _add_noise, _add_noise_fake, _add_noise_backward)


def _noisy_copies(
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


def _noisy_copies_fake(embeds, n, sigma, sigma_t, seed, seed_t, seed_drawn, gaussian, mask):
    return embeds.new_empty((n, *embeds.shape))


def _noisy_copies_backward(ctx, grad):
    """d out[c] / d embeds = identity for every copy c: the incoming gradients sum."""
    return grad.sum(0), None, None, None, None, None, None, None, None


noisy_copies = _define("noisy_copies", _noisy_copies, _noisy_copies_fake, _noisy_copies_backward)


# --------------------------------------------------------------------------- PGD


def _pgd_init(
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


def _pgd_init_fake(embeds, epsilon, linf, mask, seed, seed_t, seed_drawn, next_input):
    return embeds.new_empty(embeds.shape), embeds.new_empty(embeds.shape if next_input else (0,))


def _init_setup(ctx, inputs, output):
    # One call: each mark_non_differentiable replaces the previous set.
    ctx.next_input = inputs[-1]
    ctx.mark_non_differentiable(*(output[:1] if ctx.next_input else output))


def _init_backward(ctx, grad_delta, grad_next):
    """delta: no gradient; embeds + delta: identity in embeds."""
    return (grad_next if ctx.next_input else None), None, None, None, None, None, None, None


pgd_init = _define("pgd_init", _pgd_init, _pgd_init_fake, _init_backward, _init_setup)


def _pgd_step(
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


def _pgd_step_fake(delta, grad, step_size, epsilon, linf, mask, embeds):
    new = grad.new_empty(grad.shape, dtype=step_dtype(delta, grad, embeds))
    return new, (embeds.new_empty(embeds.shape) if embeds is not None else grad.new_empty(0))


def _step_setup(ctx, inputs, output):
    ctx.has_embeds = inputs[-1] is not None
    ctx.mark_non_differentiable(*(output[:1] if ctx.has_embeds else output))


def _step_backward(ctx, grad_delta, grad_next):
    """d': no gradient; embeds + d': identity in embeds."""
    return None, None, None, None, None, None, (grad_next if ctx.has_embeds else None)


pgd_step = _define("pgd_step", _pgd_step, _pgd_step_fake, _step_backward, _step_setup)
