"""Fused PGD on input embeddings: random start and one projected ascent step.

Layers: ``_pgd_reduce_kernel`` and ``_pgd_update_kernel`` (jit kernels),
``pgd_step_forward`` / ``pgd_init_forward`` (launchers). Public wrappers and dispatch are
in ``fastrobust.ops``; the pure-torch twin in ``fastrobust.reference``.

L2 step, per example, over unmasked entries, a = step_size:

    d' = (d + a g/||g||) * min(1, eps / ||d + a g/||g|| ||)
    ||d + a g/||g|| ||^2 = ||d||^2 + 2a <d, g>/||g|| + a^2

so pass 1 (``_pgd_reduce_kernel``) reads g and d once and writes per-example partial sums
of ||g||^2, <d, g>, ||d||^2 (each example is split over several programs so that a small
batch still fills the GPU; the partials are summed by pass 2, deterministically, without
atomics). Pass 2 (``_pgd_update_kernel``) reads d, g and embeds once and writes d' and
embeds + d'. Eager PyTorch needs ~10 passes for the same step. Linf needs no reduction:
pass 2 alone computes clamp(d + a sign(g), -eps, eps).

Bytes floor per step (element size s_d, s_g, s_e; N = B*L*H):
L2: N*(2 s_g + 2 s_d + s_e) read + N*(s_d + s_e) written; Linf: one read of g fewer.

Nothing reads a tensor value on the host and every launch size depends on shapes only,
so a PGD loop built from these launches can be captured in a CUDA graph.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastrobust.kernels.common import INTERPRETED, next_pow2, pick_column_block, tile_elements, warps_for
from fastrobust.kernels.noise import launch_noise

FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _pgd_reduce_kernel(
    delta_ptr,
    grad_ptr,
    mask_ptr,
    partial_ptr,
    seq_len,
    hidden,
    rows_per_split,
    d_stride_b,
    d_stride_l,
    g_stride_b,
    g_stride_l,
    HAS_MASK: tl.constexpr,
    N_SPLIT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """partial[b, :, s] = (sum g^2, sum d*g, sum d^2) over split s of example b's real rows."""
    b = tl.program_id(0)
    split = tl.program_id(1)
    start = split * rows_per_split
    stop = tl.minimum(start + rows_per_split, seq_len)
    acc_gg = tl.zeros([BLOCK_R, BLOCK_H], dtype=tl.float32)
    acc_dg = tl.zeros([BLOCK_R, BLOCK_H], dtype=tl.float32)
    acc_dd = tl.zeros([BLOCK_R, BLOCK_H], dtype=tl.float32)
    d_base = delta_ptr + b.to(tl.int64) * d_stride_b
    g_base = grad_ptr + b.to(tl.int64) * g_stride_b
    for r0 in range(start, stop, BLOCK_R):
        pos = r0 + tl.arange(0, BLOCK_R)
        row_ok = pos < stop
        if HAS_MASK:
            row_ok = row_ok & (tl.load(mask_ptr + b * seq_len + pos, mask=row_ok, other=0) != 0)
        d_row = pos.to(tl.int64) * d_stride_l
        g_row = pos.to(tl.int64) * g_stride_l
        for h0 in range(0, hidden, BLOCK_H):
            col = h0 + tl.arange(0, BLOCK_H)
            ok = row_ok[:, None] & (col < hidden)[None, :]
            # other=0 keeps padding (and a NaN gradient there) out of the sums.
            g = tl.load(g_base + g_row[:, None] + col[None, :], mask=ok, other=0.0).to(tl.float32)
            d = tl.load(d_base + d_row[:, None] + col[None, :], mask=ok, other=0.0).to(tl.float32)
            acc_gg += g * g
            acc_dg += d * g
            acc_dd += d * d
    out = partial_ptr + b * (3 * N_SPLIT) + split
    tl.store(out, tl.sum(tl.sum(acc_gg, axis=1), axis=0))
    tl.store(out + N_SPLIT, tl.sum(tl.sum(acc_dg, axis=1), axis=0))
    tl.store(out + 2 * N_SPLIT, tl.sum(tl.sum(acc_dd, axis=1), axis=0))


@triton.jit
def _pgd_update_kernel(
    delta_ptr,
    grad_ptr,
    embeds_ptr,
    mask_ptr,
    partial_ptr,
    new_delta_ptr,
    next_ptr,
    step_size,
    epsilon,
    n_rows,
    seq_len,
    hidden,
    d_stride_b,
    d_stride_l,
    g_stride_b,
    g_stride_l,
    e_stride_b,
    e_stride_l,
    LINF: tl.constexpr,
    HAS_EPS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_EMBEDS: tl.constexpr,
    N_SPLIT: tl.constexpr,
    SPLIT_P2: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """d' (and embeds + d') for BLOCK_R rows; L2 scales come from the reduce kernel's partials."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    b = rows // seq_len
    pos = rows - b * seq_len
    keep = row_ok
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0)
    if not LINF:
        # Sum the per-example partials: (BLOCK_R, SPLIT_P2) gathers from a tiny buffer.
        s = tl.arange(0, SPLIT_P2)
        p_ok = row_ok[:, None] & (s < N_SPLIT)[None, :]
        p_base = partial_ptr + b[:, None] * (3 * N_SPLIT) + s[None, :]
        gg = tl.sum(tl.load(p_base, mask=p_ok, other=0.0), axis=1)
        dg = tl.sum(tl.load(p_base + N_SPLIT, mask=p_ok, other=0.0), axis=1)
        dd = tl.sum(tl.load(p_base + 2 * N_SPLIT, mask=p_ok, other=0.0), axis=1)
        # A zero or non-finite gradient (NaN/inf anywhere in the example, or a squared norm
        # that overflows fp32) skips the step; comparisons with NaN are false.
        step_ok = (gg > 0.0) & (gg <= FLT_MAX) & (tl.abs(dg) <= FLT_MAX)
        inv = tl.where(step_ok, step_size / tl.sqrt(tl.where(step_ok, gg, 1.0)), 0.0)
        if HAS_EPS:
            new_sq = dd + tl.where(step_ok, 2.0 * inv * dg + step_size * step_size, 0.0)
            new_norm = tl.sqrt(tl.maximum(new_sq, 0.0))
            proj = tl.where(new_norm > epsilon, epsilon / tl.where(new_norm > 0.0, new_norm, 1.0), 1.0)
        else:
            proj = tl.zeros([BLOCK_R], dtype=tl.float32) + 1.0
    d_row = b.to(tl.int64) * d_stride_b + pos.to(tl.int64) * d_stride_l
    g_row = b.to(tl.int64) * g_stride_b + pos.to(tl.int64) * g_stride_l
    e_row = b.to(tl.int64) * e_stride_b + pos.to(tl.int64) * e_stride_l
    out_row = rows.to(tl.int64) * hidden
    for h0 in range(0, hidden, BLOCK_H):
        col = h0 + tl.arange(0, BLOCK_H)
        in_bounds = row_ok[:, None] & (col < hidden)[None, :]
        live = keep[:, None] & (col < hidden)[None, :]
        d = tl.load(delta_ptr + d_row[:, None] + col[None, :], mask=live, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + g_row[:, None] + col[None, :], mask=live, other=0.0).to(tl.float32)
        if LINF:
            # sign(NaN) = 0: both comparisons are false for NaN.
            sign = tl.where(g > 0.0, 1.0, tl.where(g < 0.0, -1.0, 0.0))
            new = d + step_size * sign
            if HAS_EPS:
                new = tl.minimum(tl.maximum(new, -epsilon), epsilon)
        else:
            # Skipped examples take d itself: inv * NaN would still be NaN.
            new = tl.where(step_ok[:, None], d + inv[:, None] * g, d) * proj[:, None]
        new = tl.where(live, new, 0.0)
        tl.store(
            new_delta_ptr + out_row[:, None] + col[None, :],
            new.to(new_delta_ptr.dtype.element_ty),
            mask=in_bounds,
        )
        if HAS_EMBEDS:
            e = tl.load(embeds_ptr + e_row[:, None] + col[None, :], mask=in_bounds, other=0.0).to(tl.float32)
            tl.store(
                next_ptr + out_row[:, None] + col[None, :],
                (e + new).to(next_ptr.dtype.element_ty),
                mask=in_bounds,
            )


@lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _rows_view(x: Tensor) -> Tensor:
    # Batch/sequence strides are passed to the kernels; only the hidden dim must be unit-stride.
    return x if x.stride(2) == 1 else x.contiguous()


def _split_rows(delta: Tensor, batch: int, seq_len: int, block_r: int) -> tuple[int, int]:
    """How many programs share one example's reduction, and the rows each one takes.

    Enough programs to fill the GPU (~4 per SM) but never fewer than BLOCK_R rows each; the
    interpreter gets one program per example (its cost is per program)."""
    if INTERPRETED or delta.device.type != "cuda":
        return 1, max(seq_len, 1)
    want = max(1, (4 * _sm_count(delta.device.index or 0)) // max(batch, 1))
    n_split = max(1, min(want, triton.cdiv(seq_len, block_r), 64))
    rows = triton.cdiv(seq_len, n_split)
    rows = triton.cdiv(rows, block_r) * block_r
    return triton.cdiv(seq_len, rows), rows


def pgd_step_forward(
    delta: Tensor,
    grad: Tensor,
    step_size: float,
    epsilon: float | None,
    norm: str,
    mask: Tensor | None,
    embeds: Tensor | None,
    *,
    n_split: int | None = None,
    block_r: int | None = None,
    block_h: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Launch the fused PGD step (arguments validated by ``fastrobust.ops.pgd_step``).

    Returns d' (contiguous, delta's dtype) or (d', embeds + d') (the second in embeds' dtype).
    n_split / block_r / block_h override the tuning (tests use them to run the GPU's tiling
    — several programs per example, several column trips — through the interpreter).
    """
    batch, seq_len, hidden = delta.shape
    n_rows = batch * seq_len
    delta = _rows_view(delta)
    grad = _rows_view(grad)
    new_delta = torch.empty(delta.shape, device=delta.device, dtype=delta.dtype)
    nxt = None
    if embeds is not None:
        embeds = _rows_view(embeds)
        nxt = torch.empty(embeds.shape, device=embeds.device, dtype=embeds.dtype)
    if n_rows == 0 or hidden == 0:
        return new_delta if nxt is None else (new_delta, nxt)
    mask_arg = mask.contiguous() if mask is not None else delta
    linf = norm == "linf"

    if block_h is None:
        block_h = pick_column_block(hidden, cap=256)
    target = tile_elements()
    if block_r is None:
        block_r = max(1, min(next_pow2(n_rows), target // block_h))

    split_p2 = 1
    if linf:
        n_split = 1
    partial = delta  # unused placeholder pointer for Linf
    if not linf:
        red_block_r = max(1, min(next_pow2(seq_len), target // block_h))
        if n_split is None:
            n_split, rows_per_split = _split_rows(delta, batch, seq_len, red_block_r)
        else:
            rows_per_split = triton.cdiv(seq_len, n_split)
            red_block_r = min(red_block_r, next_pow2(rows_per_split))
            n_split = triton.cdiv(seq_len, rows_per_split)
        split_p2 = next_pow2(n_split)
        partial = torch.empty((batch, 3, n_split), device=delta.device, dtype=torch.float32)
        _pgd_reduce_kernel[(batch, n_split)](
            delta,
            grad,
            mask_arg,
            partial,
            seq_len,
            hidden,
            rows_per_split,
            delta.stride(0),
            delta.stride(1),
            grad.stride(0),
            grad.stride(1),
            HAS_MASK=mask is not None,
            N_SPLIT=n_split,
            BLOCK_R=red_block_r,
            BLOCK_H=block_h,
            num_warps=warps_for(red_block_r * block_h),
        )
    e_arg = embeds if embeds is not None else delta
    _pgd_update_kernel[(triton.cdiv(n_rows, block_r),)](
        delta,
        grad,
        e_arg,
        mask_arg,
        partial,
        new_delta,
        nxt if nxt is not None else new_delta,
        float(step_size),
        0.0 if epsilon is None else float(epsilon),
        n_rows,
        seq_len,
        hidden,
        delta.stride(0),
        delta.stride(1),
        grad.stride(0),
        grad.stride(1),
        e_arg.stride(0),
        e_arg.stride(1),
        LINF=linf,
        HAS_EPS=epsilon is not None,
        HAS_MASK=mask is not None,
        HAS_EMBEDS=embeds is not None,
        N_SPLIT=n_split,
        SPLIT_P2=split_p2,
        BLOCK_R=block_r,
        BLOCK_H=block_h,
        num_warps=warps_for(block_r * block_h),
    )
    return new_delta if nxt is None else (new_delta, nxt)


def pgd_init_forward(embeds: Tensor, epsilon: float, norm: str, mask: Tensor | None, seed: int) -> Tensor:
    """Random start (see ``fastrobust.ops.pgd_init``) through the noise kernel without x.

    delta = u * mask * s_b with u ~ U(-1, 1) from the noise stream of ``seed``;
    s_b = epsilon (Linf) or epsilon / sqrt(max(n_real_b, 1) * H) (L2). The per-example L2
    scale is a (B,)-sized torch expression: no host synchronisation.
    """
    batch, seq_len, hidden = embeds.shape
    out = torch.empty(embeds.shape, device=embeds.device, dtype=embeds.dtype)
    if norm == "linf":
        sigma: float | Tensor = float(epsilon)
    else:
        if mask is None:
            n_real = torch.full((batch,), float(seq_len), device=embeds.device)
        else:
            n_real = (mask != 0).sum(1, dtype=torch.float32)
        sigma = epsilon * torch.rsqrt(n_real.clamp(min=1.0) * hidden)
    return launch_noise(None, (batch, seq_len, hidden), out, sigma, seed, False, mask, 1)
