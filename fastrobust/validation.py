"""Argument validation of the tensor ops, shared by ``fastrobust.ops`` and ``fastrobust.reference``.

Both entry points reject bad input with the same one-line ``FastrobustError`` naming the
argument (a ``ValueError``). Shapes: embeds/delta/grad (B, L, H); mask (B, L). Nothing here
reads a value of a device tensor (that would synchronise with the host); values of CPU tensors
are checked only outside ``torch.compile`` (inside a compiled graph a value check would be a
graph break).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from fastrobust.errors import FastrobustError

__all__ = [
    "DISTRIBUTIONS",
    "NORMS",
    "SEED_HIGH",
    "KERNEL_DTYPES",
    "noise_args",
    "init_args",
    "step_args",
    "step_dtype",
]

DISTRIBUTIONS = ("gaussian", "uniform")
NORMS = ("l2", "linf")
SEED_HIGH = 2**31 - 1
# The kernels compute in fp32 and store these; float64 is served by the torch reference.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPES = (*KERNEL_DTYPES, torch.float64)


def host_readable(t: Tensor) -> bool:
    """Whether reading a tensor value on the host is free: a CPU tensor outside torch.compile."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def float_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise FastrobustError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        if t.is_floating_point():
            raise FastrobustError(
                f"{name}: unsupported dtype {t.dtype} (supported: float32, float16, bfloat16, and float64 "
                "on the torch backend)"
            )
        raise FastrobustError(f"{name} must be a floating-point tensor (fp32/fp16/bf16), got dtype {t.dtype}")
    return t


def embeds_like(name: str, t: object) -> Tensor:
    t = float_tensor(name, t)
    if t.dim() != 3:
        raise FastrobustError(f"{name} must have shape (B, L, H), got shape {tuple(t.shape)}")
    return t


def same_device(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.device != ref.device:
        raise FastrobustError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def mask_arg(mask: object, ref: Tensor, ref_name: str) -> Tensor | None:
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
    same_device("mask", mask, ref_name, ref)
    if mask.is_complex():
        raise FastrobustError(f"mask must be bool, integer or float, got dtype {mask.dtype}")
    return mask


def nonneg(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        what = "a non-negative number or None" if allow_none else "a non-negative number"
        raise FastrobustError(f"{name} must be {what}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise FastrobustError(f"{name} must be finite and >= 0, got {value!r}")
    return value


def sigma_arg(sigma: object, embeds: Tensor) -> float | Tensor:
    """sigma: a number >= 0, or a floating tensor of shape () or (B,) on embeds' device.

    Values of a CPU tensor are checked (>= 0, finite) outside torch.compile. Values of a
    device tensor are not, because that would synchronise with the host; a negative entry
    there gives the same distribution as its absolute value (both noise laws are symmetric).
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
        same_device("sigma", sigma, "embeds", embeds)
        if host_readable(sigma) and not bool(((sigma >= 0) & torch.isfinite(sigma)).all()):
            raise FastrobustError("sigma must be finite and >= 0 for every example")
        return sigma
    return nonneg("sigma", sigma)


def distribution_arg(distribution: object) -> str:
    if distribution not in DISTRIBUTIONS:
        raise FastrobustError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution  # type: ignore[return-value]


def norm_arg(norm: object) -> str:
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise FastrobustError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm.lower()


def copies_arg(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FastrobustError(f"n must be an integer >= 1, got {n!r}")
    return n


def seed_arg(seed: object, embeds: Tensor) -> int | Tensor | None:
    """None, an int in [0, 2**31 - 1], or a one-element integer tensor on embeds' device.

    A tensor seed is read where the op runs: on the device by the kernels (so a seed that
    changes inside a captured CUDA graph changes the noise at every replay), on the host by
    the torch path. Its value is not range-checked (that would synchronise); it is used as
    the 64-bit key of the random stream.
    """
    if seed is None:
        return None
    if isinstance(seed, Tensor):
        if seed.is_floating_point() or seed.is_complex() or seed.dtype == torch.bool or seed.numel() != 1:
            raise FastrobustError(
                f"seed tensor must hold one integer, got dtype {seed.dtype} and shape {tuple(seed.shape)}"
            )
        same_device("seed", seed, "embeds", embeds)
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_HIGH:
        raise FastrobustError(
            f"seed must be None, an integer in [0, 2**31 - 1] or a one-element integer tensor, got {seed!r}"
        )
    return seed


def next_input_arg(next_input: object) -> bool:
    if not isinstance(next_input, bool):
        raise FastrobustError(f"next_input must be True or False, got {next_input!r}")
    return next_input


# --------------------------------------------------------------------------- per op


def noise_args(embeds, sigma, seed, distribution, mask):
    """(embeds, sigma, seed, distribution, mask) of add_noise / noisy_copies, checked."""
    embeds = embeds_like("embeds", embeds)
    return (
        embeds,
        sigma_arg(sigma, embeds),
        seed_arg(seed, embeds),
        distribution_arg(distribution),
        mask_arg(mask, embeds, "embeds"),
    )


def init_args(embeds, epsilon, norm, mask, seed, next_input):
    """(embeds, epsilon, norm, mask, seed, next_input) of pgd_init, checked."""
    embeds = embeds_like("embeds", embeds)
    return (
        embeds,
        nonneg("epsilon", epsilon),
        norm_arg(norm),
        mask_arg(mask, embeds, "embeds"),
        seed_arg(seed, embeds),
        next_input_arg(next_input),
    )


def step_args(delta, grad, step_size, epsilon, norm, mask, embeds):
    """(delta, grad, step_size, epsilon, norm, mask, embeds) of pgd_step, checked.

    delta may be None (a zero start); every tensor has grad's shape and device.
    """
    if delta is None:
        grad = embeds_like("grad", grad)
        ref, ref_name = grad, "grad"
    else:
        delta = embeds_like("delta", delta)
        grad = float_tensor("grad", grad)
        ref, ref_name = delta, "delta"
        if grad.shape != delta.shape:
            raise FastrobustError(
                f"grad must have the shape of delta {tuple(delta.shape)}, got {tuple(grad.shape)}"
            )
        same_device("grad", grad, "delta", delta)
    if embeds is not None:
        embeds = float_tensor("embeds", embeds)
        if embeds.shape != ref.shape:
            raise FastrobustError(
                f"embeds must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(embeds.shape)}"
            )
        same_device("embeds", embeds, ref_name, ref)
    return (
        delta,
        grad,
        nonneg("step_size", step_size),
        nonneg("epsilon", epsilon, allow_none=True),
        norm_arg(norm),
        mask_arg(mask, ref, ref_name),
        embeds,
    )


def step_dtype(delta: Tensor | None, grad: Tensor, embeds: Tensor | None) -> torch.dtype:
    """The dtype of pgd_step's new delta d': delta's; for a zero start (delta None) embeds' when
    given, else grad's. Every implementation (kernels, reference, fake) returns this dtype."""
    return delta.dtype if delta is not None else (embeds.dtype if embeds is not None else grad.dtype)
