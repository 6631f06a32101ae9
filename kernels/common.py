"""Facts shared by the kernel modules: interpreter mode and block-size helpers."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _probe_kernel(x_ptr):
    tl.store(x_ptr, 0)


# @triton.jit reads TRITON_INTERPRET when it decorates a function, so this module's kernels
# (and those of every module imported after it in the same process) run in the interpreter
# exactly when the probe was wrapped as an interpreted function.
INTERPRETED: bool = type(_probe_kernel).__name__ == "InterpretedFunction"


# Elements per program and loop trip. GPU values are untuned (no GPU was available when they
# were chosen): they keep every kernel at <= ~100 registers per thread on sm_90 with 4 warps
# (cuobjdump -res-usage of the ptxas output, no spills), leaving room for several programs
# per SM. The interpreter pays per program and per op, not per element: big tiles there.
GPU_TILE = 1024
INTERPRETER_TILE = 1 << 16


def tile_elements() -> int:
    return INTERPRETER_TILE if INTERPRETED else GPU_TILE


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def pick_column_block(width: int, *, cap: int = 256) -> int:
    """Power-of-two block for a loop over ``width`` columns, wasting the fewest masked lanes.

    The interpreter gets a single trip (its cost is per op, not per lane). On a GPU the
    candidates are 16..cap and, among those with the least padding, the widest wins (e.g.
    width 192 -> 64, three full trips, rather than 256 with a quarter of the lanes idle).
    """
    if INTERPRETED or width <= 16:
        return next_pow2(width)
    best, best_padded = 16, None
    size = 16
    while size <= cap:
        padded = -(-width // size) * size
        if best_padded is None or padded <= best_padded:
            best, best_padded = size, padded
        size *= 2
    return best


def pick_quarter_block(quarter: int) -> int:
    """Column block of the noise kernel (which produces four elements per Philox call)."""
    return pick_column_block(quarter, cap=256)


def warps_for(tile: int) -> int:
    """Warps for an elementwise/reduction tile of ``tile`` elements (1 in the interpreter)."""
    if INTERPRETED:
        return 1
    if tile >= 4096:
        return 8
    if tile >= 1024:
        return 4
    return 2
