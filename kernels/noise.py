"""Fused embedding noise: out = x + sigma * z * mask in one pass, z drawn in registers.

Layers: ``_noise_kernel`` (the jit kernel), ``noise_forward`` (launcher: allocates the
output, picks block sizes and warps). The autograd wrapper and dispatch live in
``fastrobust.ops``; the pure-torch twin in ``fastrobust.reference``.

Why it pays: eager PyTorch writes the noise tensor, reads it back to scale and mask it and
reads it again to add it (>= 4 passes over (B, L, H) plus the RNG's own); here the noise
never touches memory, so the kernel moves the floor: read x once, write out once.

The random stream (what the bit-exact NumPy reference in the tests re-implements).
Rows are r = (c * B + b) * L + l for copy c, and every row of H columns is cut into four
quarters of Q = ceil(H / 4) columns. Element (c, b, l, h) takes output k = h // Q of Philox
(10 rounds, key = seed) at counter r * Q + h % Q, through ``tl.randn4x`` (Box-Muller on
(u1, u2) and (u3, u4)) or ``tl.rand4x`` (noise = 2u - 1) — one Philox evaluation feeds four
elements. The stream does not depend on block sizes or the device, and copy c's counters
are those of copy 0 shifted by c * B * L * Q, so the copies are independent and copy 0 is
``add_noise``'s output for the same seed.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastrobust.kernels.common import INTERPRETED, next_pow2, pick_quarter_block, tile_elements, warps_for


@triton.jit
def _load_tile(x_ptr, in_row, col, ok, HAS_X: tl.constexpr):
    """x[rows, col] in fp32 (zeros when there is no x: pgd_init)."""
    if HAS_X:
        tile = tl.load(x_ptr + in_row[:, None] + col[None, :], mask=ok, other=0.0).to(tl.float32)
    else:
        tile = tl.zeros(ok.shape, dtype=tl.float32)
    return tile


@triton.jit
def _store_tile(out_ptr, out_row, col, ok, value):
    tl.store(out_ptr + out_row[:, None] + col[None, :], value.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["seed"])
def _noise_kernel(
    x_ptr,
    out_ptr,
    sigma_ptr,
    mask_ptr,
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
    SIGMA_PER_EXAMPLE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    GAUSSIAN: tl.constexpr,
    WIDE_COUNTER: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """One program: BLOCK_R rows, all H columns, copies [c0, c0 + copies_per_program).

    x is read once per program and reused for each of its copies, so ``noisy_copies``
    moves (1 + n) N elements when one program holds all n copies. The grid is 1-D
    (copy groups x row blocks) because the y/z grid axes stop at 65535.
    """
    pid = tl.program_id(0)
    group = pid // n_row_blocks
    rows = (pid - group * n_row_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    c_start = group * copies_per_program
    c_stop = tl.minimum(c_start + copies_per_program, n_copies)
    row_ok = rows < n_rows
    b = rows // seq_len
    pos = rows - b * seq_len
    if SIGMA_PER_EXAMPLE:
        scale = tl.load(sigma_ptr + b, mask=row_ok, other=0.0).to(tl.float32)
    else:
        scale = tl.zeros([BLOCK_R], dtype=tl.float32) + sigma
    if HAS_MASK:
        keep = tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0
        scale = tl.where(keep, scale, 0.0)
    in_row = b.to(tl.int64) * stride_b + pos.to(tl.int64) * stride_l
    for q0 in range(0, quarter, BLOCK_Q):
        j = q0 + tl.arange(0, BLOCK_Q)
        base_ok = row_ok[:, None] & (j < quarter)[None, :]
        col0 = j
        col1 = j + quarter
        col2 = j + 2 * quarter
        col3 = j + 3 * quarter
        ok0 = base_ok & (col0 < hidden)[None, :]
        ok1 = base_ok & (col1 < hidden)[None, :]
        ok2 = base_ok & (col2 < hidden)[None, :]
        ok3 = base_ok & (col3 < hidden)[None, :]
        x0 = _load_tile(x_ptr, in_row, col0, ok0, HAS_X)
        x1 = _load_tile(x_ptr, in_row, col1, ok1, HAS_X)
        x2 = _load_tile(x_ptr, in_row, col2, ok2, HAS_X)
        x3 = _load_tile(x_ptr, in_row, col3, ok3, HAS_X)
        for c in range(c_start, c_stop):
            global_row = tl.cast(c, tl.int64) * n_rows + rows.to(tl.int64)
            if WIDE_COUNTER:
                counter = (global_row * quarter)[:, None] + j[None, :]
            else:
                counter = (global_row.to(tl.int32) * quarter)[:, None] + j[None, :]
            if GAUSSIAN:
                z0, z1, z2, z3 = tl.randn4x(seed, counter)
            else:
                u0, u1, u2, u3 = tl.rand4x(seed, counter)
                z0 = 2.0 * u0 - 1.0
                z1 = 2.0 * u1 - 1.0
                z2 = 2.0 * u2 - 1.0
                z3 = 2.0 * u3 - 1.0
            out_row = global_row * hidden
            _store_tile(out_ptr, out_row, col0, ok0, x0 + scale[:, None] * z0)
            _store_tile(out_ptr, out_row, col1, ok1, x1 + scale[:, None] * z1)
            _store_tile(out_ptr, out_row, col2, ok2, x2 + scale[:, None] * z2)
            _store_tile(out_ptr, out_row, col3, ok3, x3 + scale[:, None] * z3)


def _rows_view(x: Tensor) -> tuple[Tensor, int, int]:
    """x itself when its last dim is unit-stride (any batch/sequence strides are passed to
    the kernel), else a contiguous copy; and its (B, L) strides in elements."""
    if x.stride(2) != 1:
        x = x.contiguous()
    return x, x.stride(0), x.stride(1)


@lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _copies_per_program(out: Tensor, n_row_blocks: int, copies: int) -> int:
    """All copies in one program (x read once) unless that leaves the GPU underfilled: then
    the copies are split into groups until there are ~4 programs per SM."""
    if copies == 1 or INTERPRETED or out.device.type != "cuda":
        return copies
    want_groups = triton.cdiv(4 * _sm_count(out.device.index or 0), n_row_blocks)
    return triton.cdiv(copies, max(1, min(copies, want_groups)))


def launch_noise(
    x: Tensor | None,
    shape: tuple[int, int, int],
    out: Tensor,
    sigma: float | Tensor,
    seed: int,
    gaussian: bool,
    mask: Tensor | None,
    copies: int,
    *,
    block_r: int | None = None,
    block_q: int | None = None,
    copies_per_program: int | None = None,
    force_wide: bool = False,
) -> Tensor:
    """Launch ``_noise_kernel``: out[c] = x + sigma * z_c * mask (x=None: just sigma * z_c * mask).

    out must be contiguous with ``copies * B * L * H`` elements. sigma: float or (B,) tensor.
    block_r / block_q / copies_per_program / force_wide override the tuning so that tests
    can drive the GPU's tiling (several column trips, copy groups, int64 counters) through
    the interpreter; the stream does not depend on them.
    """
    batch, seq_len, hidden = shape
    n_rows = batch * seq_len
    if n_rows == 0 or hidden == 0:
        return out
    quarter = (hidden + 3) // 4
    if x is None:
        x_arg, stride_b, stride_l = out, 0, 0
    else:
        x_arg, stride_b, stride_l = _rows_view(x)
    per_example = isinstance(sigma, Tensor)
    sigma_arg = sigma.contiguous() if per_example else out
    mask_arg = mask.contiguous() if mask is not None else out
    if block_q is None:
        block_q = pick_quarter_block(quarter)
    if block_r is None:
        # One program: BLOCK_R rows x 4 * BLOCK_Q columns per loop trip.
        block_r = max(1, min(next_pow2(n_rows), tile_elements() // (4 * block_q)))
    wide = force_wide or copies * n_rows * quarter >= 2**31 - 1
    n_row_blocks = triton.cdiv(n_rows, block_r)
    if copies_per_program is None:
        copies_per_program = _copies_per_program(out, n_row_blocks, copies)
    n_groups = triton.cdiv(copies, copies_per_program)
    _noise_kernel[(n_row_blocks * n_groups,)](
        x_arg,
        out,
        sigma_arg,
        mask_arg,
        0.0 if per_example else float(sigma),
        seed,
        n_rows,
        n_row_blocks,
        copies,
        copies_per_program,
        seq_len,
        hidden,
        quarter,
        stride_b,
        stride_l,
        HAS_X=x is not None,
        SIGMA_PER_EXAMPLE=per_example,
        HAS_MASK=mask is not None,
        GAUSSIAN=gaussian,
        WIDE_COUNTER=wide,
        BLOCK_R=block_r,
        BLOCK_Q=block_q,
        num_warps=warps_for(block_r * 4 * block_q),
    )
    return out


def noise_forward(
    embeds: Tensor,
    sigma: float | Tensor,
    seed: int,
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
