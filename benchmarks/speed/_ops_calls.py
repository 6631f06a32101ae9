"""The CUDA grid of the ops benchmark, part 2: what each provider calls for a case, and the spot
check of the fused path against the reference.

Providers: ``eager`` = ``fastrobust.reference`` called directly (no backend switch); ``compile`` =
torch.compile of the same math written for the compiler: the PGD step as elementwise ops and
per-example sums (:func:`step_math`: no ``bmm``, no in-place updates, which the reference uses to
spare CPU memory but which inductor cannot fuse), the random ops as the same formula with torch's
global RNG (which inductor fuses; the reference's private ``torch.Generator`` would graph-break);
``triton`` = ``fastrobust.ops`` under ``FASTROBUST_BACKEND=triton`` set once per run (no
environment write per call); op ``copy`` = ``out.copy_(x)`` of the same shape and dtype, the
yardstick.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

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


def _noise_math(x, sigma: float, mask, copies: int | None, gaussian: bool = True):
    """x + sigma * z * mask (n copies stacked in front), z ~ N(0, 1) or U(-1, 1) from torch's
    global RNG."""
    keep = (mask != 0).unsqueeze(-1).to(torch.float32) * sigma
    shape = tuple(x.shape) if copies is None else (copies, *x.shape)
    if gaussian:
        z = torch.randn(shape, device=x.device, dtype=torch.float32)
    else:
        z = torch.rand(shape, device=x.device, dtype=torch.float32) * 2.0 - 1.0
    return (x.to(torch.float32) + z * keep).to(x.dtype)


def step_math(d, g, mask, e, norm: str, step_size: float = STEP_SIZE, epsilon: float = EPSILON):
    """``reference.pgd_step``'s result (d', and e + d' when e is given; d None = zero start)
    from elementwise ops and per-example sums only: what torch.compile turns into one reduction
    and one pointwise kernel (the reference's in-place updates and ``bmm`` dot product, lean on
    a CPU, would stay separate kernels). Same semantics, NaN/zero-gradient rules included."""
    keep = (mask != 0).unsqueeze(-1)
    dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
    gk = torch.where(keep, g.to(dtype), 0.0)
    dk = None if d is None else torch.where(keep, d.to(dtype), 0.0)
    if norm == "linf":
        sign = torch.where(gk > 0, 1.0, torch.where(gk < 0, -1.0, 0.0))  # sign(NaN) = 0
        new = step_size * sign if dk is None else dk + step_size * sign
        new = new.clamp(-epsilon, epsilon)
    else:
        g2 = gk.square().sum((1, 2))
        ok = torch.isfinite(g2) & (g2 > 0)  # else: no step, d' = d (projected)
        inv = torch.where(ok, step_size / torch.sqrt(torch.where(ok, g2, 1.0)), 0.0)[:, None, None]
        okb = ok[:, None, None]
        if dk is None:
            new_sq = torch.where(ok, step_size * step_size, 0.0)
            moved = torch.where(okb, inv * gk, 0.0)
        else:
            dg = torch.where(okb, dk * gk, 0.0).sum((1, 2))
            new_sq = dk.square().sum((1, 2)) + torch.where(ok, 2.0 * inv[:, 0, 0] * dg + step_size**2, 0.0)
            moved = torch.where(okb, dk + inv * gk, dk)
        norm_new = torch.sqrt(new_sq.clamp(min=0.0))
        scale = torch.where(norm_new > epsilon, epsilon / torch.where(norm_new > 0, norm_new, 1.0), 1.0)
        new = torch.where(keep, moved * scale[:, None, None], 0.0)
    out_dtype = (d if d is not None else (e if e is not None else g)).dtype
    if e is None:
        return new.to(out_dtype)
    return new.to(out_dtype), (e.to(dtype) + new).to(e.dtype)


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
    return step_math(d, g, mask, e, norm)


def _c_step_dynamic(d, g, mask, e, norm: str):
    return step_math(d, g, mask, e, norm)


def _c_step0_static(g, mask, e, norm: str):
    return step_math(None, g, mask, e, norm)


def _c_step0_dynamic(g, mask, e, norm: str):
    return step_math(None, g, mask, e, norm)


def _c_noise_static(x, sigma, mask, copies, gaussian):
    return _noise_math(x, sigma, mask, copies, gaussian)


def _c_noise_dynamic(x, sigma, mask, copies, gaussian):
    return _noise_math(x, sigma, mask, copies, gaussian)


def _c_init_static(e, epsilon, mask, next_input):
    return _init_math(e, epsilon, mask, next_input)


def _c_init_dynamic(e, epsilon, mask, next_input):
    return _init_math(e, epsilon, mask, next_input)


_COMPILED: dict[tuple[str, str], Callable] = {}


def _compiled(fn: Callable, dynamic: bool, backend: str = "inductor") -> Callable:
    """torch.compile of ``fn``, once per process. Static: ``dynamic=False``, one graph per shape.
    Dynamic: every dimension of every tensor argument marked dynamic (B and L vary with dynamic
    padding, H with the model); automatic dynamic shapes are off for the run (see
    :func:`raise_recompile_limits`), so each dtype (and Python-level flag) gets one graph.
    ``backend="eager"`` (the dry run): dynamo traces and counts the same graphs, nothing compiles."""
    key = (fn.__name__, backend)
    if key not in _COMPILED:
        if not dynamic:
            _COMPILED[key] = torch.compile(fn, dynamic=False, backend=backend)
        else:
            compiled = torch.compile(fn, dynamic=None, backend=backend)
            mark = getattr(torch._dynamo, "maybe_mark_dynamic", torch._dynamo.mark_dynamic)

            def call(*args):
                for t in args:
                    if isinstance(t, torch.Tensor) and not hasattr(t, "_dynamo_dynamic_indices"):
                        for dim in range(t.dim()):
                            mark(t, dim)
                return compiled(*args)

            _COMPILED[key] = call
    return _COMPILED[key]


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


def compile_graphs(cases: Iterable[Case], compile_mode: str) -> set[tuple]:
    """The graphs torch.compile builds for ``cases`` under ``compile_mode``, one key each: static
    ops one per (op's function, flags, shape, dtype), dynamic ones one per (function, flags, dtype)
    (the mask's values and B, L, H do not matter). What the run's compile budget is sized from;
    the dry run compares it with dynamo's own count of the graphs it traced."""
    keys = set()
    for case in cases:
        kind = compile_kind(case.op, compile_mode)
        if kind is None:
            continue
        spec = case.spec
        if spec["kind"] == "step":
            flags = ("step0" if spec.get("zero") else "step", spec["norm"], spec["embeds"])
        elif spec["kind"] == "noise":
            flags = ("noise", spec["copies"], spec.get("distribution", "gaussian"))
        else:
            flags = ("init",)
        keys.add((kind, *flags, case.dtype) + ((case.shape,) if kind == "static" else ()))
    return keys


def providers_for(case: Case, *, compile_mode: str, triton: bool) -> list[str]:
    if case.spec["kind"] == "copy":
        return ["torch"]
    out = ["eager"]
    if compile_kind(case.op, compile_mode) is not None:
        out.append("compile")
    if triton:
        out.append("triton")
    return out


def op_call(
    case: Case, provider: str, features: Features, compile_mode: str, backend: str = "inductor"
) -> Callable[[Inputs], object]:
    """A function of one input set that runs ``case.op`` with ``provider`` (``backend``: the
    compile provider's torch.compile backend)."""
    spec = case.spec
    kind = spec["kind"]
    if kind == "copy":
        return lambda i: i.out.copy_(i.x)
    static = compile_kind(case.op, compile_mode) == "static"
    if kind == "noise":
        n, law = spec["copies"], spec.get("distribution", "gaussian")
        if provider == "eager":
            if n is None:
                return lambda i: reference.add_noise(i.x, SIGMA, seed=SEED, mask=i.mask, distribution=law)
            return lambda i: reference.noisy_copies(i.x, n, SIGMA, seed=SEED, mask=i.mask, distribution=law)
        if provider == "compile":
            fn = _compiled(_c_noise_static if static else _c_noise_dynamic, not static, backend)
            return lambda i: fn(i.x, SIGMA, i.mask, n, law == "gaussian")
        if n is None:
            return lambda i: ops.add_noise(i.x, SIGMA, seed=SEED, mask=i.mask, distribution=law)
        return lambda i: ops.noisy_copies(i.x, n, SIGMA, seed=SEED, mask=i.mask, distribution=law)
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
            fn = _compiled(_c_init_static if static else _c_init_dynamic, not static, backend)
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
            fn0 = _compiled(_c_step0_static if static else _c_step0_dynamic, not static, backend)
            return lambda i: fn0(i.g, i.mask, i.x, norm)
        fn = _compiled(_c_step_static if static else _c_step_dynamic, not static, backend)
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
    unchanged exactly, z = (out - x) / sigma on real tokens has mean ~0 and the law's standard
    deviation (1 Gaussian, 1/sqrt(3) uniform), uniform noise inside [-1, 1]. pgd_init:
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
                want = 1.0 if spec.get("distribution", "gaussian") == "gaussian" else 3**-0.5
                if not (abs(mean) < slack and abs(std - want) < slack + 0.01):
                    return f"MISMATCH: noise mean {mean:.3f} std {std:.3f} (want 0, {want:.3f})"
                if want < 1 and float(z.abs().max()) > 1.0 + slack:
                    return f"MISMATCH: uniform noise outside [-1, 1]: {float(z.abs().max()):.3f}"
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
