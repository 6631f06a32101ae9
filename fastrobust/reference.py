"""Pure-torch twins of the fused ops: the test oracle, the CPU path and the benchmark baseline.

Every function here has the signature and the semantics of its namesake in
:mod:`fastrobust.ops` (see that module and ``DESIGN.md``); the Triton kernels in
``kernels/`` must agree with them. Shapes: ``embeds``/``delta``/``grad`` (B, L, H);
``mask`` (B, L), nonzero = real token; per-example reductions run over the unmasked
(L, H) entries of one example.

Arithmetic runs in float32 (float64 when the inputs are float64, which is how the
tests build a high-precision oracle) and results come back in the input dtype.

Random numbers: a ``torch.Generator`` on the tensor's device seeded with ``seed``, so
the same seed gives the same output on this path. The Triton path draws from Philox
keyed by (seed, element offset) instead: both paths give the same distribution, not
the same bits.

The CPU path is kept lean. On CPU a fresh (B, L, H) tensor costs more than a pass over
it (allocations above glibc's mmap threshold are page-faulted in at first touch), so each
op fills one output buffer in place: noise is one generator call into the buffer, then an
in-place scale and add; the PGD step copies the masked delta once, reduces per row / per
example without temporaries (``vector_norm``, one ``bmm`` for <d, g>), and uses the identity
``||d + a g/||g|| ||^2 = ||d||^2 + 2a<d,g>/||g|| + a^2`` so that the projection needs no
reduction over the updated tensor. Nothing here synchronises with the host, except one
cheap finiteness check of per-row norms on CPU tensors (free there).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from fastrobust.errors import FastrobustError

__all__ = ["add_noise", "noisy_copies", "pgd_init", "pgd_step"]

DISTRIBUTIONS = ("gaussian", "uniform")
NORMS = ("l2", "linf")
_SEED_HIGH = 2**31 - 1


# --------------------------------------------------------------------------- validation
# Shared with fastrobust.ops: both entry points reject bad input with the same messages.


def _check_float_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise FastrobustError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise FastrobustError(f"{name} must be a floating-point tensor (fp32/fp16/bf16), got dtype {t.dtype}")
    return t


def _check_embeds(name: str, t: object) -> Tensor:
    t = _check_float_tensor(name, t)
    if t.dim() != 3:
        raise FastrobustError(f"{name} must have shape (B, L, H), got shape {tuple(t.shape)}")
    return t


def _check_mask(mask: object, ref: Tensor, ref_name: str) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise FastrobustError(
            f"mask must be a torch.Tensor of shape (B, L) or None, got {type(mask).__name__}"
        )
    if mask.dim() != 2 or tuple(mask.shape) != tuple(ref.shape[:2]):
        raise FastrobustError(
            f"mask must have shape (B, L) = {tuple(ref.shape[:2])} like {ref_name}, got {tuple(mask.shape)}"
        )
    if mask.device != ref.device:
        raise FastrobustError(f"mask is on {mask.device} but {ref_name} is on {ref.device}")
    if mask.is_complex():
        raise FastrobustError(f"mask must be bool, integer or float, got dtype {mask.dtype}")
    return mask


def _check_nonneg(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        what = "a non-negative number or None" if allow_none else "a non-negative number"
        raise FastrobustError(f"{name} must be {what}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise FastrobustError(f"{name} must be finite and >= 0, got {value!r}")
    return value


def _check_sigma(sigma: object, embeds: Tensor) -> float | Tensor:
    """sigma: a number >= 0, or a floating tensor of shape () or (B,) on embeds' device.

    Values of a CPU tensor are checked (>= 0, finite). Values of a device tensor are not,
    because that would synchronise with the host; a negative entry there gives the same
    distribution as its absolute value (both noise laws are symmetric).
    """
    if isinstance(sigma, Tensor):
        if not sigma.is_floating_point():
            raise FastrobustError(
                f"sigma must be a float or a floating tensor of shape (B,), got dtype {sigma.dtype}"
            )
        batch = embeds.shape[0]
        if sigma.dim() == 0:
            sigma = sigma.reshape(1).expand(batch)
        if sigma.dim() != 1 or sigma.shape[0] != batch:
            raise FastrobustError(f"sigma tensor must have shape (B,) = ({batch},), got {tuple(sigma.shape)}")
        if sigma.device != embeds.device:
            raise FastrobustError(f"sigma is on {sigma.device} but embeds is on {embeds.device}")
        if sigma.device.type == "cpu" and not bool(((sigma >= 0) & torch.isfinite(sigma)).all()):
            raise FastrobustError("sigma must be finite and >= 0 for every example")
        return sigma
    return _check_nonneg("sigma", sigma)


def _check_distribution(distribution: object) -> str:
    if distribution not in DISTRIBUTIONS:
        raise FastrobustError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution  # type: ignore[return-value]


def _check_norm(norm: object) -> str:
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise FastrobustError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm.lower()


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FastrobustError(f"n must be an integer >= 1, got {n!r}")
    return n


def _check_seed(seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _SEED_HIGH:
        raise FastrobustError(f"seed must be None or an integer in [0, 2**31 - 1], got {seed!r}")
    return seed


def resolve_seed(seed: int | None) -> int:
    """The seed to use: ``seed`` itself, or one drawn from torch's default CPU generator.

    Drawing on the CPU generator (never the CUDA one) costs no device synchronisation,
    and ``torch.manual_seed`` makes the draw reproducible.
    """
    if seed is not None:
        return seed
    return int(torch.randint(0, _SEED_HIGH, (1,)).item())


def validate_noise_args(embeds, sigma, seed, distribution, mask):
    embeds = _check_embeds("embeds", embeds)
    return (
        embeds,
        _check_sigma(sigma, embeds),
        _check_seed(seed),
        _check_distribution(distribution),
        _check_mask(mask, embeds, "embeds"),
    )


def validate_init_args(embeds, epsilon, norm, mask, seed):
    embeds = _check_embeds("embeds", embeds)
    return (
        embeds,
        _check_nonneg("epsilon", epsilon),
        _check_norm(norm),
        _check_mask(mask, embeds, "embeds"),
        _check_seed(seed),
    )


def validate_step_args(delta, grad, step_size, epsilon, norm, mask, embeds):
    delta = _check_embeds("delta", delta)
    grad = _check_float_tensor("grad", grad)
    if grad.shape != delta.shape:
        raise FastrobustError(
            f"grad must have the shape of delta {tuple(delta.shape)}, got {tuple(grad.shape)}"
        )
    if grad.device != delta.device:
        raise FastrobustError(f"grad is on {grad.device} but delta is on {delta.device}")
    if embeds is not None:
        embeds = _check_float_tensor("embeds", embeds)
        if embeds.shape != delta.shape:
            raise FastrobustError(
                f"embeds must have the shape of delta {tuple(delta.shape)}, got {tuple(embeds.shape)}"
            )
        if embeds.device != delta.device:
            raise FastrobustError(f"embeds is on {embeds.device} but delta is on {delta.device}")
    return (
        delta,
        grad,
        _check_nonneg("step_size", step_size),
        _check_nonneg("epsilon", epsilon, allow_none=True),
        _check_norm(norm),
        _check_mask(mask, delta, "delta"),
        embeds,
    )


# --------------------------------------------------------------------------- helpers


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32, or float64 if any input is float64 (the tests' high-precision oracle)."""
    return (
        torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    )


def _generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
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


def _draw(shape, distribution: str, gen: torch.Generator, device, dtype) -> Tensor:
    out = torch.empty(shape, device=device, dtype=dtype)
    if distribution == "gaussian":
        return out.normal_(generator=gen)
    return out.uniform_(-1.0, 1.0, generator=gen)


def _apply_noise(embeds: Tensor, sigma, seed: int, distribution: str, mask, copies: int | None) -> Tensor:
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


# --------------------------------------------------------------------------- public ops


def add_noise(
    embeds: Tensor,
    sigma: float | Tensor,
    *,
    seed: int | None = None,
    distribution: str = "gaussian",
    mask: Tensor | None = None,
) -> Tensor:
    """``embeds + sigma * z * mask`` with z ~ N(0, 1) ("gaussian") or U(-1, 1) ("uniform").

    embeds (B, L, H) float; sigma a number or a (B,) tensor (per-example scale); mask (B, L),
    nonzero = real token (masked entries are returned unchanged). Returns (B, L, H) in
    embeds' dtype. Differentiable in embeds through ordinary autograd (the gradient is the
    identity). seed=None draws a seed from torch's default generator.
    """
    embeds, sigma, seed, distribution, mask = validate_noise_args(embeds, sigma, seed, distribution, mask)
    return _apply_noise(embeds, sigma, resolve_seed(seed), distribution, mask, None)


def noisy_copies(
    embeds: Tensor,
    n: int,
    sigma: float | Tensor,
    *,
    seed: int | None = None,
    distribution: str = "gaussian",
    mask: Tensor | None = None,
) -> Tensor:
    """n independent noisy copies of embeds: out[c] = embeds + sigma * z_c * mask.

    Shapes: embeds (B, L, H) -> (n, B, L, H) in embeds' dtype. One generator call draws
    all n * B * L * H values; with the same seed, copy 0 equals ``add_noise``'s output.
    """
    embeds, sigma, seed, distribution, mask = validate_noise_args(embeds, sigma, seed, distribution, mask)
    n = _check_n(n)
    return _apply_noise(embeds, sigma, resolve_seed(seed), distribution, mask, n)


def pgd_init(
    embeds: Tensor,
    epsilon: float,
    *,
    norm: str = "l2",
    mask: Tensor | None = None,
    seed: int | None = None,
) -> Tensor:
    """Random PGD start inside the epsilon ball (FreeLB's initialisation).

    L2: delta = u * mask * epsilon / sqrt(n_real * H), u ~ U(-1, 1) elementwise, n_real the
    example's number of real tokens (1 if it has none). Since |u| <= 1, ||delta||_2 <= epsilon
    always (its expected norm is epsilon / sqrt(3)).
    Linf: delta = u * mask * epsilon, so |delta| <= epsilon elementwise.
    Shapes: embeds (B, L, H) -> delta (B, L, H) in embeds' dtype; masked entries are 0.
    """
    embeds, epsilon, norm, mask, seed = validate_init_args(embeds, epsilon, norm, mask, seed)
    return _pgd_init(embeds, epsilon, norm, mask, resolve_seed(seed))


def _pgd_init(embeds: Tensor, epsilon: float, norm: str, mask: Tensor | None, seed: int) -> Tensor:
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
        per_example = epsilon * torch.rsqrt(n_real.clamp(min=1.0) * hidden)  # (B,)
        scale = per_example.view(batch, 1, 1) if m is None else (m * per_example.view(batch, 1)).unsqueeze(-1)
    delta = u.mul_(scale)
    return delta.to(embeds.dtype)


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
    """One projected gradient-ascent step on a per-example perturbation.

    With a = step_size, eps = epsilon, and every norm and inner product taken per example
    over the unmasked (L, H) entries:

    * L2: d' = (d + a g/||g||) * min(1, eps/||d + a g/||g|| ||). The norm of the update is
      obtained without another pass: ||d + a g/||g|| ||^2 = ||d||^2 + 2a<d,g>/||g|| + a^2.
      An example whose gradient is zero or not finite takes no step (d' = d, projected).
    * Linf: d' = clamp(d + a sign(g), -eps, eps), with sign(NaN) = 0.

    epsilon=None skips the projection. Masked entries of d' are 0. Shapes: delta, grad and
    embeds (B, L, H); mask (B, L). Returns d' in delta's dtype, or (d', embeds + d') with
    the second in embeds' dtype when embeds is given (the next forward's input). The
    result does not require grad.
    """
    args = validate_step_args(delta, grad, step_size, epsilon, norm, mask, embeds)
    return _pgd_step(*args)


def _may_inspect(t: Tensor) -> bool:
    """Whether reading a tensor value on the host is free: a CPU tensor outside torch.compile
    (on CUDA it would synchronise, and the PGD loop must stay capturable in a CUDA graph)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _example_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-example <a, b> over (L, H) as one batched matmul: no (B, L, H) temporary."""
    batch = a.shape[0]
    return torch.bmm(a.reshape(batch, 1, -1), b.reshape(batch, -1, 1)).view(batch)


@torch.no_grad()
def _pgd_step(delta, grad, step_size, epsilon, norm, mask, embeds):
    # Few passes and few (B, L, H) allocations: the output buffer `out` starts as the masked
    # delta and is updated in place; every reduction is per row or per example.
    dtype = _compute_dtype(delta, grad, embeds)
    batch = delta.shape[0]
    keep = None if mask is None else (mask != 0)  # (B, L)
    out = delta.to(dtype, copy=True, memory_format=torch.contiguous_format)
    if keep is not None:
        out.masked_fill_(~keep.unsqueeze(-1), 0.0)
    g = grad if grad.dtype == dtype else grad.to(dtype)
    if norm == "linf":
        step = torch.sign(g).nan_to_num_(0.0)  # sign(NaN) = 0
        if keep is not None:
            step.masked_fill_(~keep.unsqueeze(-1), 0.0)
        out.add_(step, alpha=step_size)
        if epsilon is not None:
            out.clamp_(-epsilon, epsilon)
    else:
        row_g2 = torch.linalg.vector_norm(g, dim=2).square()  # (B, L)
        finite_rows = torch.isfinite(row_g2)
        # Rows with a NaN/inf gradient (padding, or an example that will be skipped) must not
        # meet a multiplication: 0 * NaN is NaN. Zero them; on CPU only when there are any.
        if not _may_inspect(g) or not bool(finite_rows.all()):
            g = torch.where(finite_rows.unsqueeze(-1), g, 0.0)
        g2 = (row_g2 if keep is None else torch.where(keep, row_g2, 0.0)).sum(1)
        d2 = torch.linalg.vector_norm(out.view(batch, -1), dim=1).square()
        dg = _example_dot(out, g)  # padding rows of out are 0, g is finite there now
        ok = torch.isfinite(g2) & (g2 > 0)  # not ok: zero or non-finite gradient, no step
        inv = torch.where(ok, step_size / torch.sqrt(torch.where(ok, g2, 1.0)), 0.0)  # a / ||g||
        if epsilon is None:
            scale = torch.ones_like(g2)
        else:
            new_sq = d2 + torch.where(ok, 2.0 * inv * dg + step_size * step_size, 0.0)
            new_norm = torch.sqrt(new_sq.clamp(min=0.0))
            scale = torch.where(new_norm > epsilon, epsilon / torch.where(new_norm > 0, new_norm, 1.0), 1.0)
            out.mul_(scale.view(batch, 1, 1))
        coef = (inv * scale).view(batch, 1, 1)
        if keep is not None:
            coef = coef * keep.unsqueeze(-1)  # (B, L, 1): no step on padding
        out.addcmul_(g, coef)
    new = out if out.dtype == delta.dtype else out.to(delta.dtype)
    if embeds is None:
        return new
    if embeds.dtype == dtype:
        return new, embeds + out
    return new, embeds.to(dtype).add_(out).to(embeds.dtype)
