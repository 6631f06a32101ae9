"""Fused PGD on input embeddings: random start and one projected ascent step.

Layers: ``_pgd_reduce_kernel`` and ``_pgd_update_kernel`` (jit kernels), ``step_launches``
(the launch plan), ``pgd_step_forward`` / ``pgd_init_forward`` (allocate and run). The
custom-op registration and dispatch are in ``fastrobust._library`` / ``fastrobust.ops``; the
pure-torch twin in ``fastrobust.reference``.

L2 step, per example, over unmasked entries, a = step_size:

    d' = (d + a g/||g||) * min(1, eps / ||d + a g/||g|| ||)
    ||d + a g/||g|| ||^2 = ||d||^2 + 2a <d, g>/||g|| + a^2

so pass 1 (``_pgd_reduce_kernel``) reads g and d once and writes per-example partial sums
of ||g||^2, <d, g>, ||d||^2 (each example is split over several programs so that a small
batch still fills the GPU; the partials are summed by pass 2, deterministically, without
atomics). Pass 2 (``_pgd_update_kernel``) reads d, g and embeds once and writes d' and
embeds + d'. Eager PyTorch needs ~10 passes for the same step. Linf needs no reduction:
pass 2 alone computes clamp(d + a sign(g), -eps, eps). A zero start (delta=None) reads no d.
Launches: two for L2 (one per pass), one for Linf, whatever the batch size.

Bytes (element sizes s_d, s_g, s_e; N = B*L*H). The floor of the L2 step is 5N-sized
transfers: N*(s_d + s_g + s_e) read + N*(s_d + s_e) written (Linf: the same). What the two
passes request is 7N (pass 1 reads d and g, pass 2 reads them again). When d and g of the
whole batch fit in the L2 cache, pass 2's re-reads are L2 hits and DRAM sees the floor. When
they do not (e.g. 32 x 512 x 1024 fp32: 128 MiB), pass 1 reads the examples in order (its
grid is (splits, examples), loads with ``evict_last``) and pass 2 walks the rows from the last
(loads with ``evict_first``), so it starts on the d and g still in L2 and DRAM sees between 5N
and 7N. ``Tuning.pgd_l2_chunks`` instead runs the batch in chunks of examples whose d and g
take a third of the L2 (two launches per chunk, each given its chunk's example offset, no
tensor slicing): DRAM at the 5N floor, at the price of two launches and their host overhead
per chunk. Which one wins is a GPU measurement (``benchmarks/speed/bench_ops.py --sweep``).

Lengths are runtime arguments (``do_not_specialize``) and every constexpr is a
power-of-two tile size or a feature flag, so padded batches of any length reuse the same
compiled kernels. Nothing reads a tensor value on the host and every launch size depends on
shapes only, so a PGD loop built from these launches can be captured in a CUDA graph.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

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
from fastrobust.kernels.noise import noise_launches
from fastrobust.validation import step_dtype

FLT_MAX = tl.constexpr(3.4028234663852886e38)
SPLIT_BLOCK = 16  # partials summed per loop trip in pass 2
L2_SHARE = 3  # d and g of one chunk (Tuning.pgd_l2_chunks) take up to 1/L2_SHARE of the L2 cache
MAX_GRID_Y = 65535  # CUDA's limit on the second grid axis (examples per reduce launch)


@triton.jit(
    do_not_specialize=["b_start", "seq_len", "rows_per_split", "n_split"],
    do_not_specialize_on_alignment=["mask_ptr", "partial_ptr"],
)
def _pgd_reduce_kernel(
    delta_ptr,
    grad_ptr,
    mask_ptr,
    partial_ptr,
    b_start,
    seq_len,
    hidden,
    rows_per_split,
    n_split,
    d_stride_b,
    d_stride_l,
    g_stride_b,
    g_stride_l,
    HAS_DELTA: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """partial[b, :, s] = (sum g^2, sum d*g, sum d^2) over split s of example b's real rows.

    Program (s, j) takes split s of example b = b_start + j: the grid is (splits, examples), and
    a GPU starts programs x-fastest, so the examples are read in order (pass 2 walks them back).
    """
    split = tl.program_id(0)
    b = b_start + tl.program_id(1)
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
        g_row = pos.to(tl.int64) * g_stride_l
        d_row = pos.to(tl.int64) * d_stride_l
        for h0 in range(0, hidden, BLOCK_H):
            col = h0 + tl.arange(0, BLOCK_H)
            ok = row_ok[:, None] & (col < hidden)[None, :]
            # other=0 keeps padding (and a NaN gradient there) out of the sums; evict_last
            # keeps g and d in L2 for pass 2.
            g = tl.load(
                g_base + g_row[:, None] + col[None, :], mask=ok, other=0.0, eviction_policy="evict_last"
            ).to(tl.float32)
            acc_gg += g * g
            if HAS_DELTA:
                d = tl.load(
                    d_base + d_row[:, None] + col[None, :], mask=ok, other=0.0, eviction_policy="evict_last"
                ).to(tl.float32)
                acc_dg += d * g
                acc_dd += d * d
    out = partial_ptr + b * (3 * n_split) + split
    tl.store(out, tl.sum(tl.sum(acc_gg, axis=1), axis=0))
    tl.store(out + n_split, tl.sum(tl.sum(acc_dg, axis=1), axis=0))
    tl.store(out + 2 * n_split, tl.sum(tl.sum(acc_dd, axis=1), axis=0))


@triton.jit(
    do_not_specialize=["row_start", "row_stop", "seq_len", "n_split"],
    do_not_specialize_on_alignment=["mask_ptr", "partial_ptr"],
)
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
    row_start,
    row_stop,
    seq_len,
    n_split,
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
    HAS_DELTA: tl.constexpr,
    HAS_EMBEDS: tl.constexpr,
    SPLIT_BLOCK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """d' (and embeds + d') for BLOCK_R of the rows [row_start, row_stop) of the (B * L) rows;
    L2 scales come from the reduce kernel's partials.

    Program 0 takes the last row block: pass 1 read the last examples last, so pass 2 starts on
    the d and g still in L2."""
    block = tl.num_programs(0) - 1 - tl.program_id(0)
    rows = row_start + block * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < row_stop
    b = rows // seq_len
    pos = rows - b * seq_len
    keep = row_ok
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0)
    if not LINF:
        # Sum the per-example partials in a fixed order: (BLOCK_R, SPLIT_BLOCK) gathers from a
        # tiny buffer, n_split / SPLIT_BLOCK trips (n_split is a runtime value).
        gg = tl.zeros([BLOCK_R], dtype=tl.float32)
        dg = tl.zeros([BLOCK_R], dtype=tl.float32)
        dd = tl.zeros([BLOCK_R], dtype=tl.float32)
        for s0 in range(0, n_split, SPLIT_BLOCK):
            s = s0 + tl.arange(0, SPLIT_BLOCK)[None, :]  # 2-D from the start: no layout change
            p_ok = row_ok[:, None] & (s < n_split)
            p_base = partial_ptr + b[:, None] * (3 * n_split) + s
            gg += tl.sum(tl.load(p_base, mask=p_ok, other=0.0), axis=1)
            if HAS_DELTA:
                dg += tl.sum(tl.load(p_base + n_split, mask=p_ok, other=0.0), axis=1)
                dd += tl.sum(tl.load(p_base + 2 * n_split, mask=p_ok, other=0.0), axis=1)
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
        g = tl.load(
            grad_ptr + g_row[:, None] + col[None, :], mask=live, other=0.0, eviction_policy="evict_first"
        ).to(tl.float32)
        if HAS_DELTA:
            d = tl.load(
                delta_ptr + d_row[:, None] + col[None, :], mask=live, other=0.0, eviction_policy="evict_first"
            ).to(tl.float32)
        else:
            d = tl.zeros([BLOCK_R, BLOCK_H], dtype=tl.float32)
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
            e_ptrs = embeds_ptr + e_row[:, None] + col[None, :]
            e = tl.load(e_ptrs, mask=in_bounds, other=0.0, eviction_policy="evict_first").to(tl.float32)
            tl.store(
                next_ptr + out_row[:, None] + col[None, :],
                (e + new).to(next_ptr.dtype.element_ty),
                mask=in_bounds,
            )


def _split_rows(target: Target, batch: int, seq_len: int, block_r: int, max_split: int) -> tuple[int, int]:
    """How many programs share one example's reduction, and the rows each one takes.

    Enough programs to fill the GPU (~4 per SM) but never fewer than BLOCK_R rows each nor more
    than ``max_split``; the interpreter gets one program per example (its cost is per program)."""
    if target.interpreted:
        return 1, max(seq_len, 1)
    want = max(1, (4 * target.sm_count) // max(batch, 1))
    n_split = max(1, min(want, triton.cdiv(seq_len, block_r), max_split))
    rows = triton.cdiv(seq_len, n_split)
    rows = triton.cdiv(rows, block_r) * block_r
    return triton.cdiv(seq_len, rows), rows


def _chunk_examples(target: Target, delta: Tensor | None, grad: Tensor, linf: bool, tuning: Tuning) -> int:
    """Examples per (reduce, update) pair: all of them (one launch per pass), unless
    ``tuning.pgd_l2_chunks`` and d and g overflow a third of the L2 cache."""
    batch, seq_len, hidden = grad.shape
    if linf or target.interpreted or batch <= 1 or not tuning.pgd_l2_chunks:
        return max(batch, 1)
    per_example = seq_len * hidden * (grad.element_size() + (0 if delta is None else delta.element_size()))
    budget = target.l2_bytes // L2_SHARE
    if per_example * batch <= budget:
        return batch
    return max(1, budget // max(per_example, 1))


def _step_blocks(
    tensors: tuple[Tensor | None, ...], n_rows: int, hidden: int, target: Target, block_r, block_h,
    warps: int = 4,
) -> tuple[int, int]:  # fmt: skip
    """(BLOCK_R, BLOCK_H) of the update kernel: the given ones, else picked for ``target``."""
    if block_h is None:
        block_h = pick_column_block(hidden, target, cap=256)
    if block_r is None:
        block_r = pick_rows(n_rows, block_h, target)
        if not target.interpreted:
            # 16 bytes of the widest tensor per thread: every load and store gets a 128-bit (or
            # narrower) vector in one common register layout, so the tile never goes through
            # shared memory for a layout conversion (fp32 d' with bf16 g and e: 4 per thread; two
            # vectors per thread would bring conversions back: tests/kernel_lowering.py).
            widest = max(t.element_size() for t in tensors if t is not None)
            block_r = max(1, (32 * warps * (16 // widest)) // block_h)
    return block_r, block_h


def _reduce_tiling(
    target: Target, chunk: int, seq_len: int, block_h: int, n_split: int | None, tuning: Tuning
) -> tuple[int, int, int]:
    """(BLOCK_R, splits, rows per split) of pass 1 for chunks of ``chunk`` examples."""
    block_r = pick_rows(seq_len, block_h, target, tuning.pgd_reduce_tile)
    if n_split is None:
        splits, rows_per_split = _split_rows(target, chunk, seq_len, block_r, tuning.pgd_max_split)
    else:
        rows_per_split = triton.cdiv(seq_len, n_split)
        block_r = min(block_r, pick_rows(rows_per_split, block_h, target, tuning.pgd_reduce_tile))
        splits = triton.cdiv(seq_len, rows_per_split)
    return block_r, splits, rows_per_split


def step_launches(
    delta: Tensor | None,
    grad: Tensor,
    step_size: float,
    epsilon: float | None,
    norm: str,
    mask: Tensor | None,
    embeds: Tensor | None,
    new_delta: Tensor,
    nxt: Tensor | None,
    *,
    target: Target | None = None,
    tuning: Tuning | None = None,
    n_split: int | None = None,
    block_r: int | None = None,
    block_h: int | None = None,
    chunk_examples: int | None = None,
) -> list[Launch]:
    """The launches of one PGD step for these (already allocated) tensors: the L2 step's reduction
    (pass 1) and the update (pass 2), once for the whole batch, or once per chunk of examples
    (``chunk_examples`` or ``tuning.pgd_l2_chunks``), each chunk named by its example offset.
    Every launch gets the op's own tensors (no slices); mask, when given, is contiguous."""
    target = target_for(grad) if target is None else target
    tuning = active_tuning() if tuning is None else tuning
    batch, seq_len, hidden = grad.shape
    n_rows = batch * seq_len
    if n_rows == 0 or hidden == 0:
        return []
    linf = norm == "linf"
    tensors = (delta, grad, embeds, new_delta, nxt)
    block_r, block_h = _step_blocks(tensors, n_rows, hidden, target, block_r, block_h, tuning.pgd_warps)
    if chunk_examples is None:
        chunk_examples = _chunk_examples(target, delta, grad, linf, tuning)
    chunk_examples = max(1, min(chunk_examples, MAX_GRID_Y))
    d_arg = delta if delta is not None else grad  # a valid pointer that is never read
    mask_arg = mask if mask is not None else grad
    e_arg = embeds if embeds is not None else grad
    splits, p_arg = 1, grad
    if not linf:
        red_block_r, splits, rows_per_split = _reduce_tiling(
            target, chunk_examples, seq_len, block_h, n_split, tuning
        )
        p_arg = torch.empty((batch, 3, splits), device=grad.device, dtype=torch.float32)
    warps = 1 if target.interpreted else tuning.pgd_warps
    strides = (d_arg.stride(0), d_arg.stride(1), grad.stride(0), grad.stride(1))
    launches = []
    for b0 in range(0, batch, chunk_examples):
        nb = min(chunk_examples, batch - b0)
        if not linf:
            launches.append(
                Launch(
                    _pgd_reduce_kernel,
                    (splits, nb),
                    (d_arg, grad, mask_arg, p_arg, b0, seq_len, hidden, rows_per_split, splits, *strides),
                    dict(HAS_DELTA=delta is not None, HAS_MASK=mask is not None, BLOCK_R=red_block_r,
                         BLOCK_H=block_h),
                    warps,
                )
            )  # fmt: skip
        launches.append(
            Launch(
                _pgd_update_kernel,
                (triton.cdiv(nb * seq_len, block_r),),
                (
                    d_arg, grad, e_arg, mask_arg, p_arg, new_delta, nxt if nxt is not None else new_delta,
                    float(step_size), 0.0 if epsilon is None else float(epsilon),
                    b0 * seq_len, (b0 + nb) * seq_len, seq_len, splits, hidden,
                    *strides, e_arg.stride(0), e_arg.stride(1),
                ),
                dict(LINF=linf, HAS_EPS=epsilon is not None, HAS_MASK=mask is not None,
                     HAS_DELTA=delta is not None, HAS_EMBEDS=embeds is not None, SPLIT_BLOCK=SPLIT_BLOCK,
                     BLOCK_R=block_r, BLOCK_H=block_h),
                warps,
            )
        )  # fmt: skip
    return launches


def pgd_step_forward(
    delta: Tensor | None,
    grad: Tensor,
    step_size: float,
    epsilon: float | None,
    norm: str,
    mask: Tensor | None,
    embeds: Tensor | None,
    **tuning,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the fused PGD step (arguments validated by ``fastrobust.ops.pgd_step``).

    Returns d' (contiguous; delta's dtype, or for delta=None embeds' dtype if embeds is given,
    else grad's) or (d', embeds + d') (the second in embeds' dtype). ``tuning`` (n_split,
    block_r, block_h, chunk_examples, target, and a :class:`Tuning`) overrides the plan: tests
    use it to run the GPU's tiling — several programs per example, several column trips,
    chunks — through the interpreter, the tile sweep to time alternatives.
    """
    grad = rows_view(grad)
    delta = None if delta is None else rows_view(delta)
    embeds = None if embeds is None else rows_view(embeds)
    out_dtype = step_dtype(delta, grad, embeds)
    new_delta = torch.empty(grad.shape, device=grad.device, dtype=out_dtype)
    nxt = None if embeds is None else torch.empty(embeds.shape, device=embeds.device, dtype=embeds.dtype)
    if mask is not None:
        mask = mask.contiguous()
    run(step_launches(delta, grad, step_size, epsilon, norm, mask, embeds, new_delta, nxt, **tuning), grad)
    return new_delta if nxt is None else (new_delta, nxt)


def init_launches(
    embeds: Tensor,
    epsilon: float,
    norm: str,
    mask: Tensor | None,
    seed: int | Tensor,
    delta: Tensor,
    nxt: Tensor | None,
    **tuning,
) -> list[Launch]:
    """The launches of ``pgd_init`` for these (already allocated) outputs.

    delta = u * mask * s_b with u ~ U(-1, 1) from the noise stream of ``seed``;
    s_b = epsilon (Linf) or epsilon / sqrt(max(n_real_b, 1) * H) (L2), n_real_b counted by
    one ``count_nonzero`` launch and the scale computed in the noise kernel. With ``nxt`` the
    same pass reads embeds and also writes embeds + delta (equal to torch's sum of the two).
    No host synchronisation.
    """
    batch, seq_len, hidden = embeds.shape
    counts = None
    sigma = float(epsilon)
    if norm != "linf":
        if mask is None:
            # fp32 arithmetic, as the kernel and the reference compute eps / sqrt(n * H)
            sigma = float(np.float32(epsilon) / np.sqrt(np.float32(max(seq_len, 1) * hidden)))
        else:
            counts = torch.count_nonzero(mask, dim=1)
    if mask is not None:
        mask = mask.contiguous()
    shape = (batch, seq_len, hidden)
    if nxt is None:
        return noise_launches(None, shape, delta, sigma, seed, False, mask, 1, counts=counts, **tuning)
    return noise_launches(
        embeds, shape, nxt, sigma, seed, False, mask, 1, noise_out=delta, counts=counts, **tuning
    )


def pgd_init_forward(
    embeds: Tensor,
    epsilon: float,
    norm: str,
    mask: Tensor | None,
    seed: int | Tensor,
    next_input: bool = False,
    **tuning,
) -> Tensor | tuple[Tensor, Tensor]:
    """Random start (see ``fastrobust.ops.pgd_init`` and :func:`init_launches`): delta, or
    (delta, embeds + delta) with next_input."""
    delta = torch.empty(embeds.shape, device=embeds.device, dtype=embeds.dtype)
    nxt = torch.empty(embeds.shape, device=embeds.device, dtype=embeds.dtype) if next_input else None
    run(init_launches(embeds, epsilon, norm, mask, seed, delta, nxt, **tuning), delta)
    return delta if nxt is None else (delta, nxt)
