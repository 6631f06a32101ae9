"""Fused embedding noise: out = x + sigma * z * mask in one pass, z drawn in registers.

Layers: ``_noise_kernel`` (the jit kernel), ``noise_launches`` (the launch plan: block sizes,
warps, grid) and ``launch_noise`` / ``noise_forward`` (allocate and run). The custom-op
registration and dispatch live in ``fastrobust._library`` / ``fastrobust.ops``; the
pure-torch twin in ``fastrobust.reference``.

Why it pays: eager PyTorch writes the noise tensor, reads it back to scale and mask it and
reads it again to add it (>= 4 passes over (B, L, H) plus the RNG's own); here the noise
never touches memory, so the kernel moves the floor: read x once, write out once. Row
blocks whose rows are all padding (or have sigma_b = 0) skip the random numbers entirely.

The random stream (what the bit-exact NumPy reference in the tests re-implements).
Rows are r = (c * B + b) * L + l for copy c, and every row of H columns is cut into four
quarters of Q = ceil(H / 4) columns. Element (c, b, l, h) takes output k = h // Q of Philox
(10 rounds, key = seed) at counter r * Q + h % Q: Box-Muller on (u1, u2) and (u3, u4) for
Gaussian noise, noise = 2u - 1 for uniform — one Philox evaluation feeds four elements.
The stream does not depend on block sizes or the device, and copy c's counters are those
of copy 0 shifted by c * B * L * Q, so the copies are independent and copy 0 is
``add_noise``'s output for the same seed.

The seed is a host integer, or a one-element integer tensor that the kernel loads
(``SEED_FROM_PTR``): a seed drawn on the device by torch's CUDA generator advances inside a
captured CUDA graph, so every replay draws fresh noise.

Box-Muller on a GPU uses the PTX approximations ``lg2.approx``, ``sin.approx`` and
``cos.approx`` (``FAST_MATH``): the precise libdevice ``logf``/``sinf``/``cosf`` carry
range-reduction slow paths that dominate the kernel's instruction count. Their errors
(~1e-6 absolute on the unit normal) are far below what any statistical test of the noise
can see. ``FASTROBUST_PRECISE_NOISE=1`` selects the precise functions (the interpreter always
uses them: inline PTX does not run there, and the NumPy reference is bit exact against them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastrobust.dispatch import env_true
from fastrobust.kernels.common import (
    Launch,
    Target,
    Tuning,
    active_tuning,
    pick_column_block,
    pick_rows,
    rows_view,
    run,
    target_for,
)

PRECISE_ENV = "FASTROBUST_PRECISE_NOISE"


@triton.jit
def _fast_log2(x):
    return tl.inline_asm_elementwise(
        "lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def _fast_sin(x):
    return tl.inline_asm_elementwise(
        "sin.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def _fast_cos(x):
    return tl.inline_asm_elementwise(
        "cos.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def _box_muller(u1, u2, FAST_MATH: tl.constexpr):
    """Two independent N(0, 1) from two U[0, 1) (tl.randn4x's transform when not FAST_MATH)."""
    u1 = tl.maximum(1.0e-7, u1)
    th = 6.283185307179586 * u2
    if FAST_MATH:
        # ln(u1) = log2(u1) * ln(2)
        r = tl.sqrt(-1.3862943611198906 * _fast_log2(u1))
        c = _fast_cos(th)
        s = _fast_sin(th)
    else:
        r = tl.sqrt(-2.0 * tl.log(u1))
        c = tl.cos(th)
        s = tl.sin(th)
    return r * c, r * s


@triton.jit
def _unit_noise(seed, counter, GAUSSIAN: tl.constexpr, FAST_MATH: tl.constexpr):
    """Four unit noise tiles from one Philox evaluation per counter."""
    u0, u1, u2, u3 = tl.rand4x(seed, counter)
    if GAUSSIAN:
        z0, z1 = _box_muller(u0, u1, FAST_MATH)
        z2, z3 = _box_muller(u2, u3, FAST_MATH)
    else:
        z0 = 2.0 * u0 - 1.0
        z1 = 2.0 * u1 - 1.0
        z2 = 2.0 * u2 - 1.0
        z3 = 2.0 * u3 - 1.0
    return z0, z1, z2, z3


@triton.jit
def _load_tile(x_ptr, in_row, col, ok, HAS_X: tl.constexpr):
    """x[rows, col] in fp32 (zeros when there is no x: pgd_init); col is a (1, BLOCK_Q) tile."""
    if HAS_X:
        tile = tl.load(x_ptr + in_row[:, None] + col, mask=ok, other=0.0).to(tl.float32)
    else:
        tile = tl.zeros(ok.shape, dtype=tl.float32)
    return tile


@triton.jit
def _store_tile(out_ptr, noise_ptr, out_row, col, ok, x, noise, WRITE_NOISE: tl.constexpr):
    """out = x + noise; with WRITE_NOISE, noise is stored too and out = x + the stored (rounded)
    noise, so that out equals ``x + noise_out`` computed by torch exactly."""
    if WRITE_NOISE:
        noise = noise.to(noise_ptr.dtype.element_ty)
        tl.store(noise_ptr + out_row[:, None] + col, noise, mask=ok)
        noise = noise.to(tl.float32)
    tl.store(out_ptr + out_row[:, None] + col, (x + noise).to(out_ptr.dtype.element_ty), mask=ok)


# Lengths are not specialised (any L reuses the kernel); nor is the alignment of the small
# per-row / per-example buffers (a sliced mask must not double the variants).
@triton.jit(
    do_not_specialize=["seed", "n_rows", "n_row_blocks", "n_copies", "copies_per_program", "seq_len"],
    do_not_specialize_on_alignment=["sigma_ptr", "mask_ptr", "seed_ptr"],
)
def _noise_kernel(
    x_ptr,
    out_ptr,
    noise_ptr,
    sigma_ptr,
    mask_ptr,
    seed_ptr,
    sigma,
    seed,
    n_rows,
    n_row_blocks,
    n_copies,
    copies_per_program,
    seq_len,
    hidden,
    quarter,
    stride_b,
    stride_l,
    HAS_X: tl.constexpr,
    WRITE_NOISE: tl.constexpr,
    SIGMA_PER_EXAMPLE: tl.constexpr,
    SIGMA_OVER_COUNT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    GAUSSIAN: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
    FAST_MATH: tl.constexpr,
    WIDE_COUNTER: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """One program: BLOCK_R rows, all H columns, copies [c0, c0 + copies_per_program).

    x is read once per program and reused for each of its copies, so ``noisy_copies``
    moves (1 + n) N elements when one program holds all n copies. The grid is 1-D
    (copy groups x row blocks) because the y/z grid axes stop at 65535. Lengths are
    runtime values (``do_not_specialize``): any sequence length reuses the compiled kernel.
    """
    pid = tl.program_id(0)
    group = pid // n_row_blocks
    rows = (pid - group * n_row_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    c_start = group * copies_per_program
    c_stop = tl.minimum(c_start + copies_per_program, n_copies)
    row_ok = rows < n_rows
    b = rows // seq_len
    pos = rows - b * seq_len
    if SEED_FROM_PTR:
        seed = tl.load(seed_ptr)
    if SIGMA_PER_EXAMPLE:
        scale = tl.load(sigma_ptr + b, mask=row_ok, other=0.0).to(tl.float32)
    elif SIGMA_OVER_COUNT:
        # pgd_init's L2 scale sigma / sqrt(max(n_b, 1) * H), n_b = real tokens of example b
        # (sigma_ptr holds the counts): no separate launches for the per-example scale.
        count = tl.load(sigma_ptr + b, mask=row_ok, other=1).to(tl.float32)
        norm = tl.sqrt_rn(tl.maximum(count, 1.0) * hidden)
        scale = tl.div_rn(tl.zeros([BLOCK_R], dtype=tl.float32) + sigma, norm)
    else:
        scale = tl.zeros([BLOCK_R], dtype=tl.float32) + sigma
    if HAS_MASK:
        keep = tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0
        scale = tl.where(keep, scale, 0.0)
    scale = tl.where(row_ok, scale, 0.0)
    # No random numbers for a block of padding (or sigma_b = 0) rows: out = x there.
    live = tl.max(tl.where(scale != 0.0, 1, 0), axis=0) > 0
    in_row = b.to(tl.int64) * stride_b + pos.to(tl.int64) * stride_l
    for q0 in range(0, quarter, BLOCK_Q):
        # Column indices as (1, BLOCK_Q) tiles from the start: index arithmetic on 1-D vectors
        # would get a 1-D layout and need a layout conversion when broadcast.
        j = q0 + tl.arange(0, BLOCK_Q)[None, :]
        base_ok = row_ok[:, None] & (j < quarter)
        col0 = j
        col1 = j + quarter
        col2 = j + 2 * quarter
        col3 = j + 3 * quarter
        ok0 = base_ok & (col0 < hidden)
        ok1 = base_ok & (col1 < hidden)
        ok2 = base_ok & (col2 < hidden)
        ok3 = base_ok & (col3 < hidden)
        x0 = _load_tile(x_ptr, in_row, col0, ok0, HAS_X)
        x1 = _load_tile(x_ptr, in_row, col1, ok1, HAS_X)
        x2 = _load_tile(x_ptr, in_row, col2, ok2, HAS_X)
        x3 = _load_tile(x_ptr, in_row, col3, ok3, HAS_X)
        for c in range(c_start, c_stop):
            global_row = tl.cast(c, tl.int64) * n_rows + rows.to(tl.int64)
            out_row = global_row * hidden
            if live:
                if WIDE_COUNTER:
                    counter = (global_row * quarter)[:, None] + j
                else:
                    counter = (global_row.to(tl.int32) * quarter)[:, None] + j
                z0, z1, z2, z3 = _unit_noise(seed, counter, GAUSSIAN, FAST_MATH)
                s = scale[:, None]
                n0 = s * z0
                n1 = s * z1
                n2 = s * z2
                n3 = s * z3
            else:
                n0 = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.float32)
                n1 = n0
                n2 = n0
                n3 = n0
            _store_tile(out_ptr, noise_ptr, out_row, col0, ok0, x0, n0, WRITE_NOISE)
            _store_tile(out_ptr, noise_ptr, out_row, col1, ok1, x1, n1, WRITE_NOISE)
            _store_tile(out_ptr, noise_ptr, out_row, col2, ok2, x2, n2, WRITE_NOISE)
            _store_tile(out_ptr, noise_ptr, out_row, col3, ok3, x3, n3, WRITE_NOISE)


def _copies_per_program(target: Target, n_row_blocks: int, copies: int) -> int:
    """All copies in one program (x read once) unless that leaves the GPU underfilled: then
    the copies are split into groups until there are ~4 programs per SM."""
    if copies == 1 or target.interpreted:
        return copies
    want_groups = triton.cdiv(4 * target.sm_count, n_row_blocks)
    return triton.cdiv(copies, max(1, min(copies, want_groups)))


def fast_math_default(target: Target) -> bool:
    """Approximate transcendentals on a GPU unless FASTROBUST_PRECISE_NOISE=1 (read per launch)."""
    return not target.interpreted and not env_true(PRECISE_ENV)


def _noise_blocks(
    n_rows: int, quarter: int, target: Target, block_r: int | None, block_q: int | None, warps: int
) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_Q) of ``_noise_kernel``: the given ones, else picked for ``target``."""
    if block_q is None:
        block_q = pick_column_block(quarter, target, cap=64)
    if block_r is None:
        # One program: BLOCK_R rows x 4 * BLOCK_Q columns per loop trip. On a GPU each quarter
        # tile holds one element per thread (BLOCK_R * BLOCK_Q = 32 * warps): then the
        # loads, the Philox/Box-Muller arithmetic and the stores share one register layout and
        # the compiler inserts no layout conversion (a wider tile gets vectorised loads in one
        # layout and the random-number arithmetic in another, converted through shared memory).
        block_r = pick_rows(n_rows, 4 * block_q, target)
        if not target.interpreted:
            block_r = max(1, 32 * warps // block_q)
    return block_r, block_q


def noise_launches(
    x: Tensor | None,
    shape: tuple[int, int, int],
    out: Tensor,
    sigma: float | Tensor,
    seed: int | Tensor,
    gaussian: bool,
    mask: Tensor | None,
    copies: int,
    *,
    noise_out: Tensor | None = None,
    counts: Tensor | None = None,
    target: Target | None = None,
    tuning: Tuning | None = None,
    block_r: int | None = None,
    block_q: int | None = None,
    copies_per_program: int | None = None,
    force_wide: bool = False,
    fast_math: bool | None = None,
) -> list[Launch]:
    """The launch of ``_noise_kernel`` for these tensors (see :func:`launch_noise`)."""
    target = target_for(out) if target is None else target
    warps = 1 if target.interpreted else (active_tuning() if tuning is None else tuning).noise_warps
    batch, seq_len, hidden = shape
    n_rows = batch * seq_len
    if n_rows == 0 or hidden == 0 or copies == 0:
        return []
    quarter = (hidden + 3) // 4
    if x is None:
        x_arg, stride_b, stride_l = out, 0, 0
    else:
        x_arg = rows_view(x)
        stride_b, stride_l = x_arg.stride(0), x_arg.stride(1)
    per_example = isinstance(sigma, Tensor)
    over_count = counts is not None
    from_ptr = isinstance(seed, Tensor)
    block_r, block_q = _noise_blocks(n_rows, quarter, target, block_r, block_q, warps)
    wide = force_wide or copies * n_rows * quarter >= 2**31 - 1
    n_row_blocks = triton.cdiv(n_rows, block_r)
    if copies_per_program is None:
        copies_per_program = _copies_per_program(target, n_row_blocks, copies)
    n_groups = triton.cdiv(copies, copies_per_program)
    args = (
        x_arg,
        out,
        noise_out if noise_out is not None else out,
        sigma.contiguous() if per_example else (counts if over_count else out),
        mask.contiguous() if mask is not None else out,
        seed if from_ptr else out,
        0.0 if per_example else float(sigma),
        0 if from_ptr else int(seed),
        n_rows,
        n_row_blocks,
        copies,
        copies_per_program,
        seq_len,
        hidden,
        quarter,
        stride_b,
        stride_l,
    )
    constexprs = dict(
        HAS_X=x is not None,
        WRITE_NOISE=noise_out is not None,
        SIGMA_PER_EXAMPLE=per_example,
        SIGMA_OVER_COUNT=over_count,
        HAS_MASK=mask is not None,
        GAUSSIAN=gaussian,
        SEED_FROM_PTR=from_ptr,
        FAST_MATH=fast_math_default(target) if fast_math is None else fast_math,
        WIDE_COUNTER=wide,
        BLOCK_R=block_r,
        BLOCK_Q=block_q,
    )
    return [Launch(_noise_kernel, (n_row_blocks * n_groups,), args, constexprs, warps)]


def launch_noise(
    x: Tensor | None,
    shape: tuple[int, int, int],
    out: Tensor,
    sigma: float | Tensor,
    seed: int | Tensor,
    gaussian: bool,
    mask: Tensor | None,
    copies: int,
    **tuning,
) -> Tensor:
    """Run ``_noise_kernel``: out[c] = x + sigma * z_c * mask (x=None: just sigma * z_c * mask).

    out must be contiguous with ``copies * B * L * H`` elements. sigma: float or (B,) tensor.
    seed: int, or a one-element integer tensor read on the device. ``counts`` (B,) integers
    with a float sigma: the scale of example b is sigma / sqrt(max(counts[b], 1) * H).
    ``noise_out`` (same size
    as out, copies == 1) also receives sigma * z * mask, and then out = x + noise_out
    exactly. block_r / block_q / copies_per_program / force_wide / fast_math (and target, and a
    ``Tuning``) override the plan so that tests can drive
    the GPU's tiling (several column trips, copy groups, int64 counters) through the
    interpreter; the stream does not depend on them.
    """
    run(noise_launches(x, shape, out, sigma, seed, gaussian, mask, copies, **tuning), out)
    return out


def noise_forward(
    embeds: Tensor,
    sigma: float | Tensor,
    seed: int | Tensor,
    distribution: str,
    mask: Tensor | None,
    copies: int | None,
) -> Tensor:
    """embeds + sigma * z * mask, shape (B, L, H), or (copies, B, L, H) when copies is given.

    Arguments are already validated by ``fastrobust.ops``; the output is contiguous, in
    embeds' dtype, computed in fp32.
    """
    shape = tuple(embeds.shape)
    n = 1 if copies is None else copies
    out_shape = shape if copies is None else (copies, *shape)
    out = torch.empty(out_shape, device=embeds.device, dtype=embeds.dtype)
    return launch_noise(embeds, shape, out, sigma, seed, distribution == "gaussian", mask, n)
