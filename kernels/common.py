"""Facts shared by the kernel modules: interpreter mode, the launch target, block sizes, launches.

Every launcher builds a list of :class:`Launch` (kernel, grid, arguments) from the tensors and
a :class:`Target` and then runs it under the tensors' device. Building the list touches no
device, so tests compute the launches a GPU would get (for example to count the compiled
variants over many sequence lengths) on a machine without one.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _probe_kernel(x_ptr):
    tl.store(x_ptr, 0)


# @triton.jit reads TRITON_INTERPRET when it decorates a function, so this module's kernels
# (and those of every module imported after it in the same process) run in the interpreter
# exactly when the probe was wrapped as an interpreted function.
INTERPRETED: bool = type(_probe_kernel).__name__ == "InterpretedFunction"


# Elements per program and loop trip of the PGD reduction on a GPU: the default of
# Tuning.pgd_reduce_tile (the noise kernel and the PGD update size their tiles from the register
# layout, see their launchers). The interpreter pays per program and per op, not per element:
# big tiles there.
GPU_TILE = 1024
INTERPRETER_TILE = 1 << 16
TUNING_ENV = "FASTROBUST_KERNEL_TUNING"


@dataclass(frozen=True)
class Tuning:
    """The GPU launch parameters the planners read (the interpreter ignores them).

    The defaults were chosen from register counts, not timings: every kernel stays at <= ~64
    registers per thread on sm_90 with 4 warps (ptxas -v, no spills; tests/kernel_lowering.py),
    leaving room for several programs per SM. ``benchmarks/speed/bench_ops.py --sweep`` times
    alternatives on a GPU and writes its winner as a JSON object of these fields; a planner adopts
    it when ``FASTROBUST_KERNEL_TUNING`` names that file (or a file with a ``"winner"`` object).
    """

    pgd_reduce_tile: int = GPU_TILE  # elements per loop trip of the L2 reduction (pass 1)
    pgd_max_split: int = 64  # programs per example in pass 1, at most
    pgd_warps: int = 4  # warps per PGD program (the update's tile: one 16-byte vector per thread)
    pgd_l2_chunks: bool = False  # L2 steps in L2-sized chunks of examples (two launches each)
    noise_warps: int = 4  # warps per noise program (one element per thread and quarter tile)

    def __post_init__(self) -> None:
        for name in ("pgd_reduce_tile", "pgd_max_split", "pgd_warps", "noise_warps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1 or value & (value - 1):
                raise ValueError(f"Tuning.{name} must be a power of two >= 1, got {value!r}")

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Tuning:
        """A Tuning from a JSON object of its fields (or one holding them under ``"winner"``)."""
        data = data.get("winner", data)
        known = set(Tuning.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown kernel tuning fields {unknown}; known: {sorted(known)}")
        return Tuning(**data)


DEFAULT_TUNING = Tuning()


def load_tuning(path: str | Path) -> Tuning:
    """A JSON object of Tuning fields (or holding them under "winner"), or the ops benchmark's
    JSONL records, whose last "sweep_winner" record is taken."""
    text = Path(path).read_text()
    try:
        return Tuning.from_dict(json.loads(text))
    except json.JSONDecodeError:
        pass
    winners = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a timeout
            continue
        if isinstance(rec, dict) and rec.get("kind") == "sweep_winner":
            winners.append(rec)
    if not winners:
        raise ValueError(f"{path}: neither a JSON object of tuning fields nor records with a sweep_winner")
    return Tuning.from_dict(winners[-1])


@lru_cache(maxsize=4)
def _tuning_file(path: str) -> Tuning:
    return load_tuning(path)


def active_tuning() -> Tuning:
    """The defaults, or the file named by FASTROBUST_KERNEL_TUNING (read once per path)."""
    path = os.environ.get(TUNING_ENV)
    return _tuning_file(path) if path else DEFAULT_TUNING


@dataclass(frozen=True)
class Target:
    """Where a launch runs: the interpreter (CPU tensors) or a GPU with its SM count and L2 size."""

    interpreted: bool
    sm_count: int = 132
    l2_bytes: int = 50 * 2**20


INTERPRETER = Target(interpreted=True)
H100 = Target(interpreted=False, sm_count=132, l2_bytes=50 * 2**20)


@lru_cache(maxsize=8)
def _gpu_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    l2 = int(getattr(props, "L2_cache_size", 0) or H100.l2_bytes)
    return Target(interpreted=False, sm_count=props.multi_processor_count, l2_bytes=l2)


def target_for(t: Tensor) -> Target:
    if INTERPRETED or t.device.type != "cuda":
        return INTERPRETER
    return _gpu_target(t.device.index if t.device.index is not None else torch.cuda.current_device())


def tile_elements(target: Target, gpu_tile: int = GPU_TILE) -> int:
    return INTERPRETER_TILE if target.interpreted else gpu_tile


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def pick_column_block(width: int, target: Target, *, cap: int = 256) -> int:
    """Power-of-two block for a loop over ``width`` columns, wasting the fewest masked lanes.

    The interpreter gets a single trip (its cost is per op, not per lane). On a GPU the
    candidates are 16..cap and, among those with the least padding, the widest wins (e.g.
    width 192 -> 64, three full trips, rather than 256 with a quarter of the lanes idle).
    """
    if target.interpreted or width <= 16:
        return next_pow2(width)
    best, best_padded = 16, None
    size = 16
    while size <= cap:
        padded = -(-width // size) * size
        if best_padded is None or padded <= best_padded:
            best, best_padded = size, padded
        size *= 2
    return best


def pick_rows(n_rows: int, per_row: int, target: Target, gpu_tile: int = GPU_TILE) -> int:
    """Rows per program for a tile of ``per_row`` columns.

    A GPU always gets the full tile (``gpu_tile // per_row`` rows; short inputs are masked),
    so the constexpr does not change with the sequence length and padded batches of any
    length reuse one compiled kernel. The interpreter gets no more rows than there are (it
    pays for masked lanes, and compiles nothing).
    """
    rows = max(1, tile_elements(target, gpu_tile) // per_row)
    if target.interpreted:
        rows = min(rows, next_pow2(n_rows))
    return rows


def rows_view(x: Tensor) -> Tensor:
    """x itself when its last dim is unit-stride (batch/sequence strides are passed to the
    kernels), else a contiguous copy (kernels see raw pointers)."""
    return x if x.stride(-1) == 1 else x.contiguous()


@dataclass
class Launch:
    """One kernel launch: ``kernel[grid](*args, **constexprs, num_warps=num_warps)``."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4


def device_guard(t: Tensor):
    """Triton launches on the *current* CUDA device: make it the tensors' device."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def run(launches: list[Launch], device_of: Tensor) -> None:
    with device_guard(device_of):
        for launch in launches:
            launch.kernel[launch.grid](*launch.args, **launch.constexprs, num_warps=launch.num_warps)
