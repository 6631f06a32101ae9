"""The CUDA grid of the ops benchmark, part 1: the cases (ops x shapes x dtypes x masks), their
inputs and their bytes floors; what the installed fastrobust supports (:class:`Features`).

Bytes floor (N = B*L*H elements of s bytes, f = fraction of real tokens; the (B, L) mask is
added once):

  =======================  ================  ==============================================
  op                       floor             what must move
  =======================  ================  ==============================================
  copy                     2 N s             read x, write out
  add_noise (either law)   2 N s             read x, write out (padding copied unchanged)
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

import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from fastrobust import ops, reference

SIGMA, EPSILON, STEP_SIZE, SEED = 0.1, 0.1, 0.01, 1234
GPU_SHAPES = [(8, 128, 768), (32, 128, 768), (32, 512, 1024)]
SMOKE_SHAPES = [(2, 8, 32), (3, 16, 48)]
# The dry run's grid: the GPU grid's structure in miniature (shapes of two hidden sizes), tiny
# enough for the interpreter (which pays per program and per op).
DRY_SHAPES = [(2, 4, 32), (2, 8, 64)]
GPU_DTYPES = ["fp32", "bf16"]
MASKS = ["full", "padded"]
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# op -> what it is. kind: copy | noise | init | step.
GPU_OPS: dict[str, dict] = {
    "copy": {"kind": "copy"},
    "add_noise": {"kind": "noise", "copies": None},
    "add_noise_uniform": {"kind": "noise", "copies": None, "distribution": "uniform"},
    "noisy_copies_n4": {"kind": "noise", "copies": 4},
    "noisy_copies_n32": {"kind": "noise", "copies": 32},
    "pgd_init": {"kind": "init"},
    "pgd_step_l2+e": {"kind": "step", "norm": "l2", "embeds": True},
    "pgd_step_linf+e": {"kind": "step", "norm": "linf", "embeds": True},
    "pgd_step_l2": {"kind": "step", "norm": "l2", "embeds": False},
    "pgd_step_linf": {"kind": "step", "norm": "linf", "embeds": False},
    "pgd_step_l2+e_from0": {"kind": "step", "norm": "l2", "embeds": True, "zero": True},
}
# Why not every op static: ~60 static graphs (ops x shapes x dtypes) at ~2-3 s of compilation each
# would not fit the few minutes of GPU time a run gets. The steps with embeds decide the target
# "PGD step >= torch.compile", so they get one static graph per shape (dynamic=False), the
# strongest baseline inductor offers; every other compiled op gets one graph per dtype with B, L
# and H marked dynamic (a memory-bound elementwise-plus-reduction graph loses little by it); the
# noise/init ops, whose targets do not involve torch.compile, are compiled with --compile-mode
# all (their compiled twin draws from torch's global RNG, see _noise_math). The count for a grid
# is ``_ops_calls.compile_graphs`` (the GPU grid: 12 static + 16 dynamic = 28 with "all"; the
# dry run checks it against dynamo's own count).
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
    targets are first judged on (and the only ones the CUDA-graph timer measures)."""
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
