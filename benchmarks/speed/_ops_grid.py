"""The CUDA grid of the ops benchmark: cases, inputs, bytes floors, providers, measurement.

Used by ``benchmarks/speed/bench_ops.py`` (its command line and, on a GPU, its pytest cases). Every
time is a CUDA-event time through ``triton.testing`` (see ``_util.cuda_event_times`` and
``_util.cuda_graph_times``); on CPU the same code runs with a host clock for plumbing checks
only (``--smoke``; with ``TRITON_INTERPRET=1`` the ``triton`` provider runs in the interpreter).

Providers: ``eager`` = ``fastrobust.reference`` called directly (no backend switch); ``compile`` =
torch.compile of the same math (``reference.pgd_step`` itself; for the random ops the same
formula with torch's global RNG, which inductor fuses, since the reference's private
``torch.Generator`` would graph-break); ``triton`` = ``fastrobust.ops`` under
``FASTROBUST_BACKEND=triton`` set once per run (no environment write per call); op ``copy`` =
``out.copy_(x)`` of the same shape and dtype, the yardstick.

Bytes floor (N = B*L*H elements of s bytes, f = fraction of real tokens; the (B, L) mask is
added once):

  =======================  ================  ==============================================
  op                       floor             what must move
  =======================  ================  ==============================================
  copy                     2 N s             read x, write out
  add_noise                2 N s             read x, write out (padding copied unchanged)
  noisy_copies (n)         (1 + n) N s       read x once, write n copies
  pgd_init (+next input)   N s  (3 N s)      write delta (read e, write delta and e + delta)
  pgd_step, + embeds       (3 + 2f) N s      read d, g (real rows only), read e, write d', e + d'
  pgd_step, no embeds      (1 + 2f) N s      read d, g (real rows only), write d'
  pgd_step from delta = 0  one f N s less    d is not read
  =======================  ================  ==============================================

With every token real, the step with embeds has a 5 N floor (not the L2 kernel's
own 7 N traffic of two passes).
"""

from __future__ import annotations

import datetime
import inspect
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from _util import (
    cpu_times,
    cuda_event_times,
    cuda_facts,
    cuda_graph_times,
    cuda_quick_ms,
    device_name,
    peak_memory_mb,
    versions,
)

from fastrobust import ops, reference

SIGMA, EPSILON, STEP_SIZE, SEED = 0.1, 0.1, 0.01, 1234
GPU_SHAPES = [(8, 128, 768), (32, 128, 768), (32, 512, 1024)]
SMOKE_SHAPES = [(2, 8, 32), (3, 16, 48)]
GPU_DTYPES = ["fp32", "bf16"]
MASKS = ["full", "padded"]
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# op -> what it is. kind: copy | noise | init | step.
GPU_OPS: dict[str, dict] = {
    "copy": {"kind": "copy"},
    "add_noise": {"kind": "noise", "copies": None},
    "noisy_copies_n4": {"kind": "noise", "copies": 4},
    "noisy_copies_n32": {"kind": "noise", "copies": 32},
    "pgd_init": {"kind": "init"},
    "pgd_step_l2+e": {"kind": "step", "norm": "l2", "embeds": True},
    "pgd_step_linf+e": {"kind": "step", "norm": "linf", "embeds": True},
    "pgd_step_l2": {"kind": "step", "norm": "l2", "embeds": False},
    "pgd_step_linf": {"kind": "step", "norm": "linf", "embeds": False},
    "pgd_step_l2+e_from0": {"kind": "step", "norm": "l2", "embeds": True, "zero": True},
}
# Why not every op static: ~50 static graphs (ops x shapes x dtypes) at ~2-3 s of compilation each
# would not fit the few minutes of GPU time a run gets. The steps with embeds decide the target
# "PGD step >= torch.compile", so they get one static graph per shape (dynamic=False), the
# strongest baseline inductor offers; the other steps get one graph per dtype and hidden size
# with B and L marked dynamic (what dynamic padding varies; a memory-bound elementwise-plus-
# reduction graph loses little by it); the noise/init ops, whose targets do not involve
# torch.compile, are compiled only with --compile-mode all (their compiled twin draws from
# torch's global RNG, see _noise_math).
STATIC_COMPILE_OPS = ("pgd_step_l2+e", "pgd_step_linf+e")
TARGET_NOTE = (
    "Targets: add_noise / noisy_copies >= 85 % of the same-shape copy bandwidth and >= 3x "
    "eager; pgd_step >= 75 % of its bytes floor (at the same-shape copy bandwidth), >= 2x eager and "
    ">= torch.compile. Evaluated on the run's first timer (`events` on CUDA: L2 flushed before every call)."
)


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _step_from_zero_supported(fn: Callable) -> bool:
    """Whether ``fn`` (ops.pgd_step / reference.pgd_step) takes delta=None (a step from 0):
    its annotation says so, or a call on a CPU tensor through the torch backend works."""
    try:
        if "None" in str(inspect.signature(fn).parameters["delta"].annotation):
            return True
    except (KeyError, TypeError, ValueError):
        pass
    g = torch.ones(1, 2, 4)
    old = os.environ.get("FASTROBUST_BACKEND")
    os.environ["FASTROBUST_BACKEND"] = "torch"  # a CPU probe of the signature, not of the kernels
    try:
        fn(None, g, step_size=0.1, epsilon=1.0, norm="l2")
        return True
    except Exception:
        return False
    finally:
        if old is None:
            os.environ.pop("FASTROBUST_BACKEND", None)
        else:
            os.environ["FASTROBUST_BACKEND"] = old


@dataclass(frozen=True)
class Features:
    """What the ops API offers (the ops branch adds next_input and delta=None): detected, so the
    benchmark runs on either API."""

    init_next: bool  # ops.pgd_init(..., next_input=True) -> (delta, embeds + delta)
    ref_init_next: bool
    step_from_zero: bool  # ops.pgd_step(None, grad, ...)
    ref_step_from_zero: bool

    @staticmethod
    def detect() -> Features:
        return Features(
            init_next=_accepts(ops.pgd_init, "next_input"),
            ref_init_next=_accepts(reference.pgd_init, "next_input"),
            step_from_zero=_step_from_zero_supported(ops.pgd_step),
            ref_step_from_zero=_step_from_zero_supported(reference.pgd_step),
        )


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple[int, int, int]
    dtype: str
    mask: str

    @property
    def spec(self) -> dict:
        return GPU_OPS[self.op]

    @property
    def key(self) -> str:
        return f"{self.op}-{'x'.join(map(str, self.shape))}-{self.dtype}-{self.mask}"


def providers_for(case: Case, *, compile_mode: str, triton: bool) -> list[str]:
    if case.spec["kind"] == "copy":
        return ["torch"]
    out = ["eager"]
    if compile_kind(case.op, compile_mode) is not None:
        out.append("compile")
    if triton:
        out.append("triton")
    return out


def gpu_cases(
    shapes: Iterable[tuple[int, int, int]],
    dtypes: Iterable[str],
    ops_: Iterable[str],
    masks: Iterable[str],
    features: Features,
) -> list[Case]:
    """The grid, most important first: the primary cases (see :func:`is_primary`), then the rest
    (so that a run cut short by its time budget still has the rows that decide the targets)."""
    ops_ = [o for o in ops_ if not (GPU_OPS[o].get("zero") and not features.step_from_zero)]
    cases = []
    for tier in (0, 1):
        for shape in shapes:
            for dtype in dtypes:
                for mask in masks:
                    for op in ops_:
                        if op == "copy" and mask != "full":
                            continue  # the copy does not look at the mask
                        case = Case(op, tuple(shape), dtype, mask)
                        if is_primary(case) == (tier == 0):
                            cases.append(case)
    return cases


def is_primary(case: Case) -> bool:
    """The copy, add_noise and the two PGD steps with embeds, every token real: the rows the
    targets are first judged on."""
    return case.op in ("copy", "add_noise", "pgd_step_l2+e", "pgd_step_linf+e") and case.mask == "full"


@dataclass
class Inputs:
    """One input set: embeds x, gradient g, perturbation d (B, L, H) and the (B, L) mask."""

    x: torch.Tensor
    g: torch.Tensor
    d: torch.Tensor
    mask: torch.Tensor
    out: torch.Tensor  # the copy's destination


def make_mask(shape, kind: str, device) -> torch.Tensor:
    """(B, L) int64 attention mask: all ones, or right padding with real lengths uniform in [L/2, L]."""
    batch, length, _ = shape
    if kind == "full":
        return torch.ones(batch, length, dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=gen)
    return (torch.arange(length)[None, :] < lengths[:, None]).long().to(device)


def make_inputs(case: Case, device, *, sets: int = 1) -> list[Inputs]:
    """``sets`` independent input sets (random data, never zeros) sharing one mask."""
    dtype = DTYPE[case.dtype]
    mask = make_mask(case.shape, case.mask, device)
    out = []
    for i in range(sets):
        gen = torch.Generator(device=device).manual_seed(100 + i)

        def rnd(scale: float = 1.0, gen=gen):
            return (scale * torch.randn(case.shape, generator=gen, device=device)).to(dtype)

        x = rnd()
        out.append(Inputs(x=x, g=rnd(), d=rnd(0.01), mask=mask, out=torch.empty_like(x)))
    return out


def bytes_floor(case: Case, mask: torch.Tensor, features: Features) -> int:
    """The fewest bytes the op must move (see the module docstring's table)."""
    b, length, h = case.shape
    n = b * length * h * DTYPE[case.dtype].itemsize
    m = mask.numel() * mask.element_size()
    f = float((mask != 0).float().mean())
    spec = case.spec
    kind = spec["kind"]
    if kind == "copy":
        return 2 * n
    if kind == "noise":
        return int((1 + (spec["copies"] or 1)) * n + m)
    if kind == "init":
        return int((3 if features.init_next else 1) * n + m)
    reads_d = 0.0 if spec.get("zero") else f
    return int(((3 if spec["embeds"] else 1) + f + reads_d) * n + m)


# ---- the three providers ------------------------------------------------------------------


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


# ---- the run ------------------------------------------------------------------------------


def raise_recompile_limits() -> Callable[[], None]:
    """Dynamo settings of a run: one static graph per shape and dtype is more than its default
    recompile limit, and automatic dynamic shapes are off (dynamic dims are marked explicitly,
    see :func:`_compiled`). Returns a function that restores the previous settings."""
    cfg = torch._dynamo.config
    saved = {}
    for name, value in (
        ("recompile_limit", 256),
        ("cache_size_limit", 256),
        ("accumulated_recompile_limit", 4096),
        ("accumulated_cache_size_limit", 4096),
        ("automatic_dynamic_shapes", False),
    ):
        if hasattr(cfg, name):
            saved[name] = getattr(cfg, name)
            setattr(cfg, name, value if isinstance(value, bool) else max(value, saved[name]))
    return lambda: [setattr(cfg, k, v) for k, v in saved.items()]


def _rotation_sets(case: Case, device: torch.device, l2_bytes: int) -> int:
    """Input sets for the graph timer: enough that one sweep streams >= 4x L2 (at most 32)."""
    if device.type != "cuda":
        return 1
    b, length, h = case.shape
    per_set = 3 * b * length * h * DTYPE[case.dtype].itemsize
    return int(max(1, min(32, math.ceil(4 * max(l2_bytes, 50 * 2**20) / per_set))))


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


@dataclass
class Run:
    """What every case of one run shares."""

    device: torch.device
    features: Features
    compile_mode: str
    triton: bool  # the triton provider is measured (CUDA, or CPU under the interpreter)
    l2_bytes: int = 0
    cpu_calls: int = 5


def measure_case(
    case: Case,
    run: Run,
    timer: str,
    *,
    providers: Iterable[str] | None = None,
    check: bool = True,
    may_refuse: bool = False,
) -> list[dict]:
    """One record per provider of ``case`` with ``timer`` ("events", "graph" or "cpu").

    An error becomes a record with an ``error`` field (``unsupported`` instead when
    ``may_refuse``: a limitation of that provider, e.g. CUDA-graph capture of a private
    torch.Generator, not a failure); the exception is not raised, except when the CUDA context
    itself is gone (a synchronize after the error raises), which ends the run.
    """
    device = run.device
    sets = make_inputs(case, device, sets=1)
    floor = bytes_floor(case, sets[0].mask, run.features)
    base = {
        "kind": "result",
        "op": case.op,
        "shape": "x".join(map(str, case.shape)),
        "dtype": case.dtype,
        "mask": case.mask,
        "real_frac": round(float((sets[0].mask != 0).float().mean()), 4),
        "floor_bytes": floor,
        "timer": timer,
    }
    verdict = None
    if check and run.triton and case.spec["kind"] != "copy":
        try:
            verdict = check_triton(case, sets[0], run.features)
        except Exception as exc:  # reported, never fatal
            verdict = "ERROR " + _error(exc)
    wanted = providers_for(case, compile_mode=run.compile_mode, triton=run.triton)
    if providers is not None:
        wanted = [p for p in wanted if p in providers]
    records = []
    for provider in wanted:
        rec = dict(base, provider=provider)
        if provider == "compile":
            rec["compile"] = compile_kind(case.op, run.compile_mode)
        if provider == "triton" and verdict is not None:
            rec["check"] = verdict
        try:
            call = op_call(case, provider, run.features, run.compile_mode)
            fn = rotating(call, sets)
            t0 = time.perf_counter()
            fn()  # first call: compiles (torch.compile, Triton JIT) outside every timing
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rec["first_call_s"] = round(time.perf_counter() - t0, 3)
            if timer == "events":
                res = cuda_event_times(fn)
                rec["peak_mem_mb"] = round(peak_memory_mb(fn, device) or 0.0, 1)
            elif timer == "graph":
                more = make_inputs(case, device, sets=_rotation_sets(case, device, run.l2_bytes))[1:]
                rec["rotation_sets"] = 1 + len(more)
                gfn = rotating(call, sets + more)
                res = cuda_graph_times(gfn, est_ms=cuda_quick_ms(gfn))  # a graph of ~100 calls
            else:
                res = cpu_times(fn, calls=run.cpu_calls)
            rec.update(res)
            rec["gbps"] = round(floor / (res["median_ms"] * 1e-3) / 1e9, 2)
        except Exception as exc:
            rec["unsupported" if may_refuse else "error"] = _error(exc)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # raises if the context is gone: the run stops
        records.append(rec)
    return records


def run_meta(run: Run, timers: list[str]) -> dict:
    meta = {
        "kind": "meta",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timers": timers,
        "compile_mode": run.compile_mode,
        "features": dict(run.features.__dict__),
        **versions(),
    }
    if run.device.type == "cuda":
        meta.update(cuda_facts(run.device))
    else:
        meta["device"] = device_name(run.device)
    return meta


def copy_yardstick(device: torch.device, nbytes: int) -> dict:
    """A large device copy (bytes read + written over the events-timer median)."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = cuda_event_times(lambda: dst.copy_(src))
    return {"bytes": 2 * nbytes, "gbps": round(2 * nbytes / (t["median_ms"] * 1e-3) / 1e9, 1)}


def run_grid(
    cases: list[Case],
    run: Run,
    timers: list[str],
    emit: Callable[[dict], None],
    *,
    budget_s: float,
    yardstick_bytes: int = 2**29,
) -> int:
    """Measures ``cases`` and emits one dict per record; returns the number of error records.

    The primary cases first (events, then graph), then the others alike. The graph timer
    runs eager's random ops (noise, init) last of all: they draw from a private torch.Generator,
    which CUDA-graph capture may refuse (recorded as ``unsupported``), and a refused capture
    must not cost any other row. No new case starts after ``budget_s`` seconds: a "budget"
    record lists what was not run.
    """
    restore = raise_recompile_limits()
    meta = run_meta(run, timers)
    run.l2_bytes = int(meta.get("l2_bytes", 0) or 0)
    if run.device.type == "cuda":
        meta["copy_yardstick"] = copy_yardstick(run.device, yardstick_bytes)
        torch.cuda.empty_cache()
    emit(meta)
    start = time.perf_counter()
    errors = 0
    random_kinds = ("noise", "init")
    passes: list[tuple[list[Case], str, tuple[str, ...] | None]] = []
    for tier in (True, False):
        group = [c for c in cases if is_primary(c) == tier]
        for timer in timers:
            if timer == "graph":
                steps = [c for c in group if c.spec["kind"] not in random_kinds]
                passes += [(group, "graph", ("torch", "triton", "compile")), (steps, "graph", ("eager",))]
            else:
                passes.append((group, timer, None))
    if "graph" in timers:
        passes.append(([c for c in cases if c.spec["kind"] in random_kinds], "graph", ("eager",)))
    try:
        for k, (group, timer, providers) in enumerate(passes):
            last = "graph" in timers and k == len(passes) - 1
            for n, case in enumerate(group):
                if time.perf_counter() - start > budget_s:
                    rest = [c.key for c in group[n:]]
                    emit({"kind": "budget", "timer": timer, "not_run": rest, "budget_s": budget_s})
                    break
                t0 = time.perf_counter()
                try:
                    recs = measure_case(
                        case, run, timer, providers=providers, check=timer != "graph", may_refuse=last
                    )
                except Exception as exc:  # the CUDA context is gone: nothing more can be measured
                    emit({"kind": "abort", "case": case.key, "timer": timer, "error": _error(exc)})
                    return errors + 1
                for r in recs:
                    r["case_s"] = round(time.perf_counter() - t0, 2)
                    errors += "error" in r or r.get("check", "ok") != "ok"
                    emit(r)
                if run.device.type == "cuda":
                    torch.cuda.empty_cache()  # n = 32 copies of 32x512x1024 fp32 are 2 GiB
            else:
                continue
            break  # the budget is spent: no later pass either
    finally:
        restore()
        emit({"kind": "end", "seconds": round(time.perf_counter() - start, 1)})
    return errors
