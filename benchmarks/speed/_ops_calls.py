"""The CUDA grid of the ops benchmark, part 2: what each provider calls for a case, and the spot
check of the fused path against the reference.

Providers: ``eager`` = ``fastrobust.reference`` called directly (no backend switch); ``compile`` =
torch.compile of the same math (``reference.pgd_step`` itself; for the random ops the same
formula with torch's global RNG, which inductor fuses, since the reference's private
``torch.Generator`` would graph-break); ``triton`` = ``fastrobust.ops`` under
``FASTROBUST_BACKEND=triton`` set once per run (no environment write per call); op ``copy`` =
``out.copy_(x)`` of the same shape and dtype, the yardstick.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from _ops_cases import (
    EPSILON,
    GPU_OPS,
    SEED,
    SIGMA,
    STATIC_COMPILE_OPS,
    STEP_SIZE,
    Case,
    Features,
    Inputs,
)

from fastrobust import ops, reference


def _noise_math(x, sigma: float, mask, copies: int | None):
    """x + sigma * z * mask (n copies stacked in front), z ~ N(0, 1) from torch's global RNG."""
    keep = (mask != 0).unsqueeze(-1).to(torch.float32) * sigma
    shape = tuple(x.shape) if copies is None else (copies, *x.shape)
    z = torch.randn(shape, device=x.device, dtype=torch.float32)
    return (x.to(torch.float32) + z * keep).to(x.dtype)


def _init_math(e, epsilon: float, mask, next_input: bool):
    """pgd_init's L2 start u * mask * eps / sqrt(n_real * H), u ~ U(-1, 1) (global RNG)."""
    m = (mask != 0).to(torch.float32)
    scale = epsilon * torch.rsqrt(m.sum(1).clamp(min=1.0) * e.shape[-1])
    u = torch.rand(e.shape, device=e.device, dtype=torch.float32) * 2.0 - 1.0
    d = u * (m * scale[:, None]).unsqueeze(-1)
    if next_input:
        return d.to(e.dtype), (e.to(torch.float32) + d).to(e.dtype)
    return d.to(e.dtype)


def _ref_step(d, g, mask, e, norm: str):
    return reference.pgd_step(d, g, step_size=STEP_SIZE, epsilon=EPSILON, norm=norm, mask=mask, embeds=e)


def _ref_step_from_zero(g, mask, e, norm: str):
    return reference.pgd_step(
        torch.zeros_like(g), g, step_size=STEP_SIZE, epsilon=EPSILON, norm=norm, mask=mask, embeds=e
    )


# Distinct Python functions per compiled variant: dynamo keeps its graphs per code object, so
# the static and the dynamic variants never share (or evict) each other's entries.
def _c_step_static(d, g, mask, e, norm: str):
    return _ref_step(d, g, mask, e, norm)


def _c_step_dynamic(d, g, mask, e, norm: str):
    return _ref_step(d, g, mask, e, norm)


def _c_step0_static(g, mask, e, norm: str):
    return _ref_step_from_zero(g, mask, e, norm)


def _c_step0_dynamic(g, mask, e, norm: str):
    return _ref_step_from_zero(g, mask, e, norm)


def _c_noise_static(x, sigma, mask, copies):
    return _noise_math(x, sigma, mask, copies)


def _c_noise_dynamic(x, sigma, mask, copies):
    return _noise_math(x, sigma, mask, copies)


def _c_init_static(e, epsilon, mask, next_input):
    return _init_math(e, epsilon, mask, next_input)


def _c_init_dynamic(e, epsilon, mask, next_input):
    return _init_math(e, epsilon, mask, next_input)


_COMPILED: dict[str, Callable] = {}


def _compiled(fn: Callable, dynamic: bool) -> Callable:
    """torch.compile of ``fn``, once per process. Static: ``dynamic=False``, one graph per shape.
    Dynamic: B and L of every tensor argument marked dynamic (the sizes dynamic padding varies),
    H static as in any one model; automatic dynamic shapes are off for the run (see
    :func:`raise_recompile_limits`), so H = 768 and 1024 get a graph each."""
    if fn.__name__ not in _COMPILED:
        if not dynamic:
            _COMPILED[fn.__name__] = torch.compile(fn, dynamic=False)
        else:
            compiled = torch.compile(fn, dynamic=None)
            mark = getattr(torch._dynamo, "maybe_mark_dynamic", torch._dynamo.mark_dynamic)

            def call(*args):
                for t in args:
                    if isinstance(t, torch.Tensor) and not hasattr(t, "_dynamo_dynamic_indices"):
                        mark(t, 0)
                        mark(t, 1)
                return compiled(*args)

            _COMPILED[fn.__name__] = call
    return _COMPILED[fn.__name__]


def compile_kind(op: str, compile_mode: str) -> str | None:
    """ "static", "dynamic" or None (not compiled) for ``op`` under ``compile_mode``:

    * ``targets`` (default): only the ops whose target involves torch.compile (the PGD steps):
      static graphs per shape for the steps with embeds, dynamic shapes for the other steps;
    * ``all``: as ``targets``, and the noise / init ops with dynamic shapes;
    * ``static`` / ``dynamic``: every op so; ``off``: none.
    """
    kind = GPU_OPS[op]["kind"]
    if compile_mode == "off" or kind == "copy":
        return None
    if compile_mode in ("static", "dynamic"):
        return compile_mode
    if compile_mode == "targets" and kind != "step":
        return None
    return "static" if op in STATIC_COMPILE_OPS else "dynamic"


def providers_for(case: Case, *, compile_mode: str, triton: bool) -> list[str]:
    if case.spec["kind"] == "copy":
        return ["torch"]
    out = ["eager"]
    if compile_kind(case.op, compile_mode) is not None:
        out.append("compile")
    if triton:
        out.append("triton")
    return out


def op_call(case: Case, provider: str, features: Features, compile_mode: str) -> Callable[[Inputs], object]:
    """A function of one input set that runs ``case.op`` with ``provider``."""
    spec = case.spec
    kind = spec["kind"]
    if kind == "copy":
        return lambda i: i.out.copy_(i.x)
    static = compile_kind(case.op, compile_mode) == "static"
    if kind == "noise":
        n = spec["copies"]
        if provider == "eager":
            if n is None:
                return lambda i: reference.add_noise(i.x, SIGMA, seed=SEED, mask=i.mask)
            return lambda i: reference.noisy_copies(i.x, n, SIGMA, seed=SEED, mask=i.mask)
        if provider == "compile":
            fn = _compiled(_c_noise_static if static else _c_noise_dynamic, not static)
            return lambda i: fn(i.x, SIGMA, i.mask, n)
        if n is None:
            return lambda i: ops.add_noise(i.x, SIGMA, seed=SEED, mask=i.mask)
        return lambda i: ops.noisy_copies(i.x, n, SIGMA, seed=SEED, mask=i.mask)
    if kind == "init":
        nxt = features.init_next
        if provider == "eager":
            if nxt and features.ref_init_next:
                return lambda i: reference.pgd_init(
                    i.x, EPSILON, norm="l2", mask=i.mask, seed=SEED, next_input=True
                )
            if nxt:

                def eager_init(i):
                    d = reference.pgd_init(i.x, EPSILON, norm="l2", mask=i.mask, seed=SEED)
                    return d, i.x + d

                return eager_init
            return lambda i: reference.pgd_init(i.x, EPSILON, norm="l2", mask=i.mask, seed=SEED)
        if provider == "compile":
            fn = _compiled(_c_init_static if static else _c_init_dynamic, not static)
            return lambda i: fn(i.x, EPSILON, i.mask, nxt)
        if nxt:
            return lambda i: ops.pgd_init(i.x, EPSILON, norm="l2", mask=i.mask, seed=SEED, next_input=True)
        return lambda i: ops.pgd_init(i.x, EPSILON, norm="l2", mask=i.mask, seed=SEED)
    # pgd_step
    norm, with_e, zero = spec["norm"], spec["embeds"], spec.get("zero", False)
    if provider == "eager":
        if zero and features.ref_step_from_zero:
            return lambda i: reference.pgd_step(
                None, i.g, step_size=STEP_SIZE, epsilon=EPSILON, norm=norm, mask=i.mask, embeds=i.x
            )
        if zero:  # what a method did before a zero-start op existed: zeros_like + step
            return lambda i: _ref_step_from_zero(i.g, i.mask, i.x, norm)
        return lambda i: _ref_step(i.d, i.g, i.mask, i.x if with_e else None, norm)
    if provider == "compile":
        if zero:
            fn0 = _compiled(_c_step0_static if static else _c_step0_dynamic, not static)
            return lambda i: fn0(i.g, i.mask, i.x, norm)
        fn = _compiled(_c_step_static if static else _c_step_dynamic, not static)
        return lambda i: fn(i.d, i.g, i.mask, i.x if with_e else None, norm)
    if zero:
        return lambda i: ops.pgd_step(
            None, i.g, step_size=STEP_SIZE, epsilon=EPSILON, norm=norm, mask=i.mask, embeds=i.x
        )
    return lambda i: ops.pgd_step(
        i.d, i.g, step_size=STEP_SIZE, epsilon=EPSILON, norm=norm, mask=i.mask, embeds=i.x if with_e else None
    )


def rotating(call: Callable[[Inputs], object], sets: list[Inputs]) -> Callable[[], object]:
    """A no-argument function that runs ``call`` on the input sets in turn."""
    state = {"i": 0}

    def fn():
        i = state["i"]
        state["i"] = (i + 1) % len(sets)
        return call(sets[i])

    return fn


# ---- correctness spot check of the fused path (a wrong result on CUDA is a bug, not a number) --


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def check_triton(case: Case, inp: Inputs, features: Features) -> str:
    """'ok' or what is wrong with the triton provider's output on this case's inputs.

    pgd_step: relative L2 error against the reference (< 1e-4 fp32, < 1e-2 bf16). Noise: padding
    unchanged exactly, z = (out - x) / sigma on real tokens has mean ~0 and std ~1. pgd_init:
    padding zero, every example inside the L2 ball, next input = x + delta.
    """
    spec, kind = case.spec, case.spec["kind"]
    tol = 1e-4 if case.dtype == "fp32" else 1e-2
    real = (inp.mask != 0).unsqueeze(-1)
    with torch.no_grad():
        if kind == "step":
            new = op_call(case, "triton", features, "off")(inp)
            ref = op_call(case, "eager", features, "off")(inp)
            new = new if isinstance(new, tuple) else (new,)
            ref = ref if isinstance(ref, tuple) else (ref,)
            errs = [_rel_err(a, b) for a, b in zip(new, ref)]
            bad = [e for e in errs if not e < tol]
            return "ok" if not bad else f"MISMATCH rel.err {max(errs):.2e} (tol {tol:.0e})"
        if kind == "noise":
            out = op_call(case, "triton", features, "off")(inp)
            outs = [out] if spec["copies"] is None else [out[0], out[-1]]
            for o in outs:
                if not torch.equal(o.masked_select(~real), inp.x.masked_select(~real)):
                    return "MISMATCH: padding changed"
                z = ((o.float() - inp.x.float()) / SIGMA).masked_select(real)
                # bf16 rounding of x + noise adds ~|x| * 2^-9 / sigma to z: loosen for bf16.
                slack = 5 / math.sqrt(z.numel()) + (0.0 if case.dtype == "fp32" else 0.05)
                mean, std = float(z.mean()), float(z.std())
                if not (abs(mean) < slack and abs(std - 1) < slack + 0.01):
                    return f"MISMATCH: noise mean {mean:.3f} std {std:.3f}"
            return "ok"
        if kind == "init":
            res = op_call(case, "triton", features, "off")(inp)
            d, nxt = res if isinstance(res, tuple) else (res, None)
            if bool(d.masked_select(~real).ne(0).any()):
                return "MISMATCH: delta nonzero on padding"
            norms = d.float().flatten(1).norm(dim=1)
            if not bool((norms <= EPSILON * (1 + 1e-3)).all()):
                return f"MISMATCH: |delta| {float(norms.max()):.4f} > eps {EPSILON}"
            if nxt is not None and not _rel_err(nxt, (inp.x.float() + d.float()).to(nxt.dtype)) < tol:
                return "MISMATCH: next input != x + delta"
            return "ok"
    return "n/a"
