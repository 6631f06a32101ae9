"""Pure-torch twins of the fused ops: the test oracle, the CPU path and the benchmark baseline.

Every public function here has the signature and the semantics of its namesake in
:mod:`fastrobust.ops` (see that module and ``DESIGN.md``); the Triton kernels in
``kernels/`` must agree with them. Arguments are checked by :mod:`fastrobust.validation`
(the same checks as ``ops``); this module holds only the math. Shapes:
``embeds``/``delta``/``grad`` (B, L, H); ``mask`` (B, L), nonzero = real token;
per-example reductions run over the unmasked (L, H) entries of one example.

Arithmetic runs in float32 (float64 when the inputs are float64, which is how the
tests build a high-precision oracle) and results come back in the input dtype.

Random numbers: ``seed=None`` draws straight from torch's default generator of the
tensor's device (``torch.manual_seed`` reproduces it; on CUDA the draw is captured by CUDA
graphs like any torch RNG op, and torch.compile traces it without a graph break). An int
seed (or a one-element integer tensor, read on the host) seeds a private
``torch.Generator``, so the same seed gives the same output on this path. The Triton path
draws from Philox keyed by (seed, element offset) instead: both paths give the same
distribution, not the same bits.

The CPU path is kept lean. On CPU a fresh (B, L, H) tensor costs more than a pass over
it (allocations above glibc's mmap threshold are page-faulted in at first touch), so each
op fills one output buffer in place: noise is one generator call into the buffer, then an
in-place scale and add; the PGD step copies the masked delta once, reduces per row / per
example without temporaries (``vector_norm``, one ``bmm`` for <d, g>), and uses the identity
``||d + a g/||g|| ||^2 = ||d||^2 + 2a<d,g>/||g|| + a^2`` so that the projection needs no
reduction over the updated tensor. Nothing here synchronises with the host, except one
cheap finiteness check of per-row norms on CPU tensors (free there) and the read of a
seed tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastrobust import validation as _v

__all__ = ["add_noise", "noisy_copies", "pgd_init", "pgd_step"]


# --------------------------------------------------------------------------- helpers


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32, or float64 if any input is float64 (the tests' high-precision oracle)."""
    return (
        torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    )


def _generator(device: torch.device, seed: int | Tensor | None) -> torch.Generator | None:
    """None (torch's default generator) for seed=None, else a private generator seeded with it."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def _noise_scale(embeds: Tensor, sigma: float | Tensor, mask: Tensor | None, dtype: torch.dtype):
    """sigma * mask as a (B, L, 1) tensor (or a plain float when there is neither a mask
    nor a per-example sigma), so the noise is applied in one broadcast addcmul."""
    if mask is None and not isinstance(sigma, Tensor):
        return sigma
    batch, length = embeds.shape[:2]
    scale = sigma.to(dtype).reshape(batch, 1, 1) if isinstance(sigma, Tensor) else None
    if mask is not None:
        m = (mask != 0).to(dtype).unsqueeze(-1)
        scale = m * (sigma if scale is None else scale)
    return scale.expand(batch, length, 1)


def _draw(shape, distribution: str, gen: torch.Generator | None, device, dtype) -> Tensor:
    out = torch.empty(shape, device=device, dtype=dtype)
    if distribution == "gaussian":
        return out.normal_(generator=gen)
    return out.uniform_(-1.0, 1.0, generator=gen)


# --------------------------------------------------------------------------- math


def noise(
    embeds: Tensor, sigma: float | Tensor, seed, distribution: str, mask: Tensor | None, copies: int | None
) -> Tensor:
    """embeds + sigma * z * mask, shape (B, L, H) or (copies, B, L, H); arguments already checked."""
    dtype = _compute_dtype(embeds)
    shape = tuple(embeds.shape) if copies is None else (copies, *embeds.shape)
    # One buffer, updated in place: on CPU a fresh (B, L, H) tensor costs more than a pass
    # over it (large allocations are page-faulted in), so draw, scale and add in the same one.
    out = _draw(shape, distribution, _generator(embeds.device, seed), embeds.device, dtype)
    scale = _noise_scale(embeds, sigma, mask, dtype)
    out.mul_(scale)
    # Masked entries: 0 * noise + embeds == embeds exactly (noise is finite), and the cast
    # back to a low-precision dtype is exact because the fp32 value came from embeds.
    out.add_(embeds)
    return out if out.dtype == embeds.dtype else out.to(embeds.dtype)


def init(
    embeds: Tensor, epsilon: float, norm: str, mask: Tensor | None, seed, next_input: bool
) -> Tensor | tuple[Tensor, Tensor]:
    """pgd_init's delta (and embeds + delta when next_input); arguments already checked."""
    batch, length, hidden = embeds.shape
    dtype = _compute_dtype(embeds)
    u = _draw(tuple(embeds.shape), "uniform", _generator(embeds.device, seed), embeds.device, dtype)
    m = None if mask is None else (mask != 0).to(dtype)
    if norm == "linf":
        scale = epsilon if m is None else (m * epsilon).unsqueeze(-1)
    else:
        n_real = (
            torch.full((batch,), float(length), device=embeds.device, dtype=dtype) if m is None else m.sum(1)
        )
        per_example = epsilon / torch.sqrt(n_real.clamp(min=1.0) * hidden)  # (B,)
        scale = per_example.view(batch, 1, 1) if m is None else (m * per_example.view(batch, 1)).unsqueeze(-1)
    delta = u.mul_(scale).to(embeds.dtype)
    if not next_input:
        return delta
    return delta, embeds + delta


def _example_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-example <a, b> over (L, H) as one batched matmul: no (B, L, H) temporary."""
    batch, length, hidden = a.shape
    return torch.bmm(a.reshape(batch, 1, length * hidden), b.reshape(batch, length * hidden, 1)).view(batch)


@torch.no_grad()
def step(delta, grad, step_size, epsilon, norm, mask, embeds):
    """pgd_step's d' (and embeds + d'); arguments already checked, delta None = zeros."""
    # Few passes and few (B, L, H) allocations: the output buffer `out` starts as the masked
    # delta (or the step itself for a zero start) and is updated in place; every reduction is
    # per row or per example.
    dtype = _compute_dtype(delta, grad, embeds)
    out_dtype = _v.step_dtype(delta, grad, embeds)
    batch = grad.shape[0]
    keep = None if mask is None else (mask != 0)  # (B, L)
    g = grad if grad.dtype == dtype else grad.to(dtype)
    out = None
    if delta is not None:
        out = delta.to(dtype, copy=True, memory_format=torch.contiguous_format)
        if keep is not None:
            out.masked_fill_(~keep.unsqueeze(-1), 0.0)
    if norm == "linf":
        step = torch.sign(g, out=torch.empty(g.shape, device=g.device, dtype=dtype)).nan_to_num_(0.0)
        if keep is not None:
            step.masked_fill_(~keep.unsqueeze(-1), 0.0)  # sign(NaN) = 0 above, no step on padding
        if out is None:
            out = step.mul_(step_size)
        else:
            out.add_(step, alpha=step_size)
        if epsilon is not None:
            out.clamp_(-epsilon, epsilon)
    else:
        row_g2 = torch.linalg.vector_norm(g, dim=2).square()  # (B, L)
        finite_rows = torch.isfinite(row_g2)
        # Rows with a NaN/inf gradient (padding, or an example that will be skipped) must not
        # meet a multiplication: 0 * NaN is NaN. Zero them; on CPU only when there are any.
        if not _v.host_readable(g) or not bool(finite_rows.all()):
            g = torch.where(finite_rows.unsqueeze(-1), g, 0.0)
        g2 = (row_g2 if keep is None else torch.where(keep, row_g2, 0.0)).sum(1)
        ok = torch.isfinite(g2) & (g2 > 0)  # not ok: zero or non-finite gradient, no step
        inv = torch.where(ok, step_size / torch.sqrt(torch.where(ok, g2, 1.0)), 0.0)  # a / ||g||
        if out is None:
            d2 = dg = torch.zeros_like(g2)
        else:
            d2 = torch.linalg.vector_norm(out.view(batch, out.shape[1] * out.shape[2]), dim=1).square()
            dg = _example_dot(out, g)  # padding rows of out are 0, g is finite there now
        if epsilon is None:
            scale = torch.ones_like(g2)
        else:
            new_sq = d2 + torch.where(ok, 2.0 * inv * dg + step_size * step_size, 0.0)
            new_norm = torch.sqrt(new_sq.clamp(min=0.0))
            scale = torch.where(new_norm > epsilon, epsilon / torch.where(new_norm > 0, new_norm, 1.0), 1.0)
            if out is not None:
                out.mul_(scale.view(batch, 1, 1))
        coef = (inv * scale).view(batch, 1, 1)
        if keep is not None:
            coef = coef * keep.unsqueeze(-1)  # (B, L, 1): no step on padding
        if out is None:
            out = torch.mul(g, coef, out=torch.empty(g.shape, device=g.device, dtype=dtype))
        else:
            out.addcmul_(g, coef)
    new = out if out.dtype == out_dtype else out.to(out_dtype)
    if embeds is None:
        return new
    if embeds.dtype == dtype:
        return new, embeds + out
    return new, embeds.to(dtype).add_(out).to(embeds.dtype)


# --------------------------------------------------------------------------- public twins


def add_noise(
    embeds: Tensor,
    sigma: float | Tensor,
    *,
    seed: int | Tensor | None = None,
    distribution: str = "gaussian",
    mask: Tensor | None = None,
) -> Tensor:
    """``embeds + sigma * z * mask`` with z ~ N(0, 1) ("gaussian") or U(-1, 1) ("uniform").

    embeds (B, L, H) float; sigma a number or a (B,) tensor (per-example scale); mask (B, L),
    nonzero = real token (masked entries are returned unchanged). Returns (B, L, H) in
    embeds' dtype. Differentiable in embeds through ordinary autograd (the gradient is the
    identity). seed=None draws from torch's default generator.
    """
    embeds, sigma, seed, distribution, mask = _v.noise_args(embeds, sigma, seed, distribution, mask)
    return noise(embeds, sigma, seed, distribution, mask, None)


def noisy_copies(
    embeds: Tensor,
    n: int,
    sigma: float | Tensor,
    *,
    seed: int | Tensor | None = None,
    distribution: str = "gaussian",
    mask: Tensor | None = None,
) -> Tensor:
    """n independent noisy copies of embeds: out[c] = embeds + sigma * z_c * mask.

    Shapes: embeds (B, L, H) -> (n, B, L, H) in embeds' dtype. One generator call draws
    all n * B * L * H values; with the same seed, copy 0 equals ``add_noise``'s output.
    """
    embeds, sigma, seed, distribution, mask = _v.noise_args(embeds, sigma, seed, distribution, mask)
    return noise(embeds, sigma, seed, distribution, mask, _v.copies_arg(n))


def pgd_init(
    embeds: Tensor,
    epsilon: float,
    *,
    norm: str = "l2",
    mask: Tensor | None = None,
    seed: int | Tensor | None = None,
    next_input: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Random PGD start inside the epsilon ball (FreeLB's initialisation).

    L2: delta = u * mask * epsilon / sqrt(n_real * H), u ~ U(-1, 1) elementwise, n_real the
    example's number of real tokens (1 if it has none). Since |u| <= 1, ||delta||_2 <= epsilon
    always (its expected norm is epsilon / sqrt(3)).
    Linf: delta = u * mask * epsilon, so |delta| <= epsilon elementwise.
    Shapes: embeds (B, L, H) -> delta (B, L, H) in embeds' dtype; masked entries are 0.
    next_input=True returns (delta, embeds + delta).
    """
    args = _v.init_args(embeds, epsilon, norm, mask, seed, next_input)
    return init(*args)


def pgd_step(
    delta: Tensor | None,
    grad: Tensor,
    *,
    step_size: float,
    epsilon: float | None,
    norm: str = "l2",
    mask: Tensor | None = None,
    embeds: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """One projected gradient-ascent step on a per-example perturbation.

    With a = step_size, eps = epsilon, and every norm and inner product taken per example
    over the unmasked (L, H) entries:

    * L2: d' = (d + a g/||g||) * min(1, eps/||d + a g/||g|| ||). The norm of the update is
      obtained without another pass: ||d + a g/||g|| ||^2 = ||d||^2 + 2a<d,g>/||g|| + a^2.
      An example whose gradient is zero or not finite takes no step (d' = d, projected).
    * Linf: d' = clamp(d + a sign(g), -eps, eps), with sign(NaN) = 0.

    delta=None is a zero start (d = 0; d' in embeds' dtype if embeds is given, else grad's).
    epsilon=None skips the projection. Masked entries of d' are 0. Shapes: delta, grad and
    embeds (B, L, H); mask (B, L). Returns d' in delta's dtype, or (d', embeds + d') with
    the second in embeds' dtype when embeds is given (the next forward's input). The
    result does not require grad.
    """
    args = _v.step_args(delta, grad, step_size, epsilon, norm, mask, embeds)
    return step(*args)
