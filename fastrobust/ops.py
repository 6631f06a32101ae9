"""Public tensor ops of fastrobust: fused embedding noise and the fused PGD step.

=====================  =========================================================  ===================
op                     math (per example, over unmasked entries)                   shapes
=====================  =========================================================  ===================
``add_noise``          x + sigma * z * mask, z ~ N(0,1) or U(-1,1)                 (B,L,H) -> (B,L,H)
``noisy_copies``       n independent draws of ``add_noise``                        (B,L,H) -> (n,B,L,H)
``pgd_init``           random start inside the L2 / Linf ball of radius epsilon    (B,L,H) -> (B,L,H)
``pgd_step``           d' = Proj_eps(d + a g/||g||)  (L2) or clamp(d + a sign g)   (B,L,H) -> (B,L,H)
=====================  =========================================================  ===================

Backends. ``FASTROBUST_BACKEND`` (read at every call) picks the implementation:

* ``auto`` (default): the Triton kernels of ``fastrobust.kernels`` for CUDA tensors, and
  for CPU tensors when ``TRITON_INTERPRET=1`` was set before triton was imported (that is
  how kernel tests run without a GPU); the pure-torch twin :mod:`fastrobust.reference`
  otherwise (and when triton is not installed).
* ``triton``: always the kernels; CPU tensors without the interpreter raise a
  ``FastrobustError`` instead of a launch that would fail with "0 active drivers".
* ``torch``: always the reference.

float64 tensors take the reference under ``auto`` (the kernels compute in fp32).

Why fused: in eager PyTorch each touch of the embeddings is several full passes over a
(B, L, H) tensor (draw noise, scale, mask, add; or norm, divide, add, norm, rescale, add).
The noise kernel reads x and writes x + noise once, generating the noise in registers from
(seed, element offset) with Philox; the PGD step is one per-example reduction over
(g, d) followed by one elementwise pass that writes d' and embeds + d'.

Random streams: the seed is an int in [0, 2**31 - 1]; ``seed=None`` draws one from torch's
default CPU generator (no device synchronisation; ``torch.manual_seed`` reproduces runs).
Same seed, same backend, same device: same output. The Triton and torch paths draw
different streams of the same distribution.

Gradients: ``add_noise`` and ``noisy_copies`` are differentiable in ``embeds`` (identity
Jacobian; ``noisy_copies`` sums the n incoming gradients); nothing is saved for backward.
No gradient flows to a tensor ``sigma``. ``pgd_init`` and ``pgd_step`` return tensors that
do not require grad. No op synchronises with the host, so a PGD loop built from them can
be captured in a CUDA graph (when ``seed`` is given, or drawn outside the capture).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from functools import lru_cache

import torch
from torch import Tensor

from fastrobust import reference as _ref
from fastrobust.errors import FastrobustError

__all__ = ["add_noise", "noisy_copies", "pgd_init", "pgd_step", "backend_for", "use_backend", "BACKENDS"]

BACKENDS = ("auto", "triton", "torch")
_ENV = "FASTROBUST_BACKEND"


# --------------------------------------------------------------------------- dispatch


def _env_true(name: str) -> bool:
    # Same truthy spellings as triton.knobs.env_bool.
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on", "y")


@lru_cache(maxsize=1)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _kernels_interpreted() -> bool:
    """Whether our kernels were decorated in interpreter mode (TRITON_INTERPRET is read by
    @triton.jit at import time, so the environment alone is not enough)."""
    from fastrobust.kernels import common

    return common.INTERPRETED


def backend_for(tensor: Tensor, *others: Tensor | None) -> str:
    """The backend ("triton" or "torch") an op on ``tensor`` (and ``others``) uses now.

    See the module docstring. float64 inputs always take the reference under ``auto`` (the
    kernels compute in fp32, which would silently drop precision) and are an error when
    ``triton`` is forced.
    """
    choice = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise FastrobustError(f"{_ENV} must be one of {BACKENDS}, got {os.environ.get(_ENV)!r}")
    if choice == "torch":
        return "torch"
    wide = any(t is not None and t.dtype == torch.float64 for t in (tensor, *others))
    device = tensor.device.type
    if choice == "triton":
        if wide:
            raise FastrobustError(f"{_ENV}=triton: the kernels support fp32/fp16/bf16, not float64")
        if not _triton_installed():
            raise FastrobustError(f"{_ENV}=triton but triton is not installed (pip install triton)")
        if device == "cuda":
            return "triton"
        if device == "cpu" and _env_true("TRITON_INTERPRET"):
            if not _kernels_interpreted():
                raise FastrobustError(
                    f"{_ENV}=triton with CPU tensors: TRITON_INTERPRET=1 was set after triton kernels were "
                    "compiled for a GPU; set it in the environment before the process starts"
                )
            return "triton"
        raise FastrobustError(
            f"{_ENV}=triton needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before the "
            f"process starts; got a tensor on {tensor.device}"
        )
    # auto
    if wide or not _triton_installed():
        return "torch"
    if device == "cuda":
        return "triton"
    if device == "cpu" and _env_true("TRITON_INTERPRET") and _kernels_interpreted():
        return "triton"
    return "torch"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Set ``FASTROBUST_BACKEND`` to ``name`` inside the block (restored afterwards)."""
    if name not in BACKENDS:
        raise FastrobustError(f"backend must be one of {BACKENDS}, got {name!r}")
    old = os.environ.get(_ENV)
    os.environ[_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = old


def _noise_impl(backend: str):
    if backend == "triton":
        from fastrobust.kernels import noise

        return noise.noise_forward
    return _ref._apply_noise


# --------------------------------------------------------------------------- autograd


class _NoiseFunction(torch.autograd.Function):
    """out = embeds + sigma * z * mask (or n such copies stacked in front).

    The noise does not depend on embeds, so d out / d embeds is the identity: backward
    passes the incoming gradient through (summed over the n copies) and needs nothing
    saved — not even the seed, unlike dropout."""

    @staticmethod
    def forward(ctx, embeds, sigma, seed, distribution, mask, copies, backend):  # noqa: D102
        ctx.copies = copies
        return _noise_impl(backend)(embeds, sigma, seed, distribution, mask, copies)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        grad_in = grad_out if ctx.copies is None else grad_out.sum(0)
        return grad_in, None, None, None, None, None, None


# --------------------------------------------------------------------------- public ops


def add_noise(
    embeds: Tensor,
    sigma: float | Tensor,
    *,
    seed: int | None = None,
    distribution: str = "gaussian",
    mask: Tensor | None = None,
) -> Tensor:
    """Randomized-smoothing noise on the embeddings of real tokens.

    out = embeds + sigma * z * mask, with z ~ N(0, 1) (``distribution="gaussian"``) or
    z ~ U(-1, 1) (``"uniform"``, i.e. noise U(-sigma, sigma)), elementwise and independent.

    Args:
        embeds: (B, L, H) fp32/fp16/bf16.
        sigma: a number >= 0, or a (B,) float tensor (per-example sigma, e.g. NEFTune's
            alpha / sqrt(L * H)). Values of a CUDA tensor are not checked (that would
            synchronise); the laws are symmetric, so a negative entry acts as its absolute value.
        seed: int in [0, 2**31 - 1]; None draws one from torch's default CPU generator.
        mask: (B, L), nonzero = real token; masked positions are returned exactly unchanged.

    Returns (B, L, H) in embeds' dtype (noise added in fp32). Gradient w.r.t. embeds is the
    identity; nothing is stored for backward.
    """
    embeds, sigma, seed, distribution, mask = _ref.validate_noise_args(
        embeds, sigma, seed, distribution, mask
    )
    backend = backend_for(embeds)
    return _NoiseFunction.apply(embeds, sigma, _ref.resolve_seed(seed), distribution, mask, None, backend)


def noisy_copies(
    embeds: Tensor,
    n: int,
    sigma: float | Tensor,
    *,
    seed: int | None = None,
    distribution: str = "gaussian",
    mask: Tensor | None = None,
) -> Tensor:
    """n independent noisy copies of embeds in one launch (smoothed prediction, certification).

    out[c] = embeds + sigma * z_c * mask for c < n, the z_c independent. On the Triton path
    copy c uses Philox offsets shifted by c * B * L * H, so copy 0 equals ``add_noise`` with the
    same seed (on the reference path as well). Arguments as for :func:`add_noise`; n >= 1.
    Returns (n, B, L, H) in embeds' dtype; the gradient w.r.t. embeds is the sum over copies.
    """
    embeds, sigma, seed, distribution, mask = _ref.validate_noise_args(
        embeds, sigma, seed, distribution, mask
    )
    n = _ref._check_n(n)
    backend = backend_for(embeds)
    return _NoiseFunction.apply(embeds, sigma, _ref.resolve_seed(seed), distribution, mask, n, backend)


def pgd_init(
    embeds: Tensor,
    epsilon: float,
    *,
    norm: str = "l2",
    mask: Tensor | None = None,
    seed: int | None = None,
) -> Tensor:
    """Random start of PGD inside the epsilon ball (FreeLB's initialisation).

    L2: delta = u * mask * epsilon / sqrt(n_real * H), u ~ U(-1, 1), n_real = the example's
    number of real tokens (1 if none); |u| <= 1 guarantees ||delta||_2 <= epsilon (expected
    norm epsilon / sqrt(3)). Linf: delta = u * mask * epsilon.

    Args: embeds (B, L, H) (only its shape, dtype and device are used); epsilon >= 0;
    norm "l2" | "linf"; mask (B, L); seed as for :func:`add_noise`.
    Returns delta (B, L, H) in embeds' dtype, zero at masked positions, not requiring grad.
    """
    embeds, epsilon, norm, mask, seed = _ref.validate_init_args(embeds, epsilon, norm, mask, seed)
    seed = _ref.resolve_seed(seed)
    with torch.no_grad():
        if backend_for(embeds) == "triton":
            from fastrobust.kernels import pgd

            return pgd.pgd_init_forward(embeds, epsilon, norm, mask, seed)
        return _ref._pgd_init(embeds, epsilon, norm, mask, seed)


def pgd_step(
    delta: Tensor,
    grad: Tensor,
    *,
    step_size: float,
    epsilon: float | None,
    norm: str = "l2",
    mask: Tensor | None = None,
    embeds: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """One projected gradient-ascent step per example, fused.

    With a = step_size, eps = epsilon, norms and inner products per example over the
    unmasked (L, H) entries:

    * ``norm="l2"``: d' = (d + a g/||g||) * min(1, eps / ||d + a g/||g|| ||). One reduction
      pass gives ||g||^2, <d, g>, ||d||^2, and the identity
      ||d + a g/||g|| ||^2 = ||d||^2 + 2a<d,g>/||g|| + a^2 gives the projection scale, so a
      single elementwise pass writes d' (and embeds + d'). A zero or non-finite gradient
      (including a squared norm that overflows fp32) skips that example's step: d' = Proj(d).
    * ``norm="linf"``: d' = clamp(d + a sign(g), -eps, eps), sign(NaN) = 0.

    ``epsilon=None``: no projection. Masked entries of d' are 0 and of embeds + d' equal
    embeds. Args: delta, grad, embeds (B, L, H) float (may differ in dtype); mask (B, L);
    step_size >= 0; epsilon >= 0 or None. Returns d' in delta's dtype, or (d', embeds + d')
    with the second in embeds' dtype when embeds is given. No host synchronisation.
    """
    args = _ref.validate_step_args(delta, grad, step_size, epsilon, norm, mask, embeds)
    with torch.no_grad():
        if backend_for(args[0], args[1], args[6]) == "triton":
            from fastrobust.kernels import pgd

            return pgd.pgd_step_forward(*args)
        return _ref._pgd_step(*args)
