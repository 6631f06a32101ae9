"""Launches per op, from the launch plans an H100 gets (meta tensors: no GPU, nothing runs).

Each op is one Triton launch, the L2 PGD step two (one per pass), whatever the batch: a launch
from Python costs microseconds of host time, which a ~100 us op at 32 x 512 x 1024 cannot hide
many times over. Every launch receives the op's own tensors (no per-launch slices): a chunked
plan names its chunk by an example offset.
"""

from __future__ import annotations

import pytest
import torch

from fastrobust.kernels import common, noise, pgd

pytestmark = pytest.mark.kernels

SHAPES = [(8, 128, 768), (32, 128, 768), (32, 512, 1024)]  # the GPU grid's (benchmarks/speed)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype)


def _plans(shape, dtype, masked: bool, tuning=None) -> dict[str, tuple[list, list]]:
    """op -> (its launches on an H100, the tensors the op owns)."""
    target = common.H100
    batch, seq_len, _ = shape
    x, g, d, out, nxt = (_meta(*shape, dtype=dtype) for _ in range(5))
    mask = _meta(batch, seq_len, dtype=torch.long) if masked else None
    seed = _meta(1, dtype=torch.int64)
    copies = _meta(32, *shape, dtype=dtype)
    own = [x, g, d, out, nxt, copies, seed] + ([mask] if masked else [])

    def step(norm, delta, embeds):
        return pgd.step_launches(
            delta, g, 0.1, 0.5, norm, mask, embeds, out, nxt if embeds is not None else None,
            target=target, tuning=tuning,
        )  # fmt: skip

    plans = {
        "add_noise": noise.noise_launches(x, shape, out, 0.1, seed, True, mask, 1, target=target),
        "add_noise_uniform": noise.noise_launches(x, shape, out, 0.1, seed, False, mask, 1, target=target),
        "noisy_copies_n32": noise.noise_launches(x, shape, copies, 0.1, 3, True, mask, 32, target=target),
        "pgd_init": pgd.init_launches(x, 0.5, "l2", mask, seed, d, None, target=target),
        "pgd_init_next": pgd.init_launches(x, 0.5, "l2", mask, seed, d, nxt, target=target),
        "pgd_step_l2+e": step("l2", d, x),
        "pgd_step_l2": step("l2", d, None),
        "pgd_step_l2+e_from0": step("l2", None, x),
        "pgd_step_linf+e": step("linf", d, x),
        "pgd_step_linf": step("linf", d, None),
    }
    return {op: (launches, own) for op, launches in plans.items()}


EXPECTED = {
    "add_noise": 1,
    "add_noise_uniform": 1,
    "noisy_copies_n32": 1,
    "pgd_init": 1,  # (+ one count_nonzero of the mask for L2 with a mask: a torch launch)
    "pgd_init_next": 1,
    "pgd_step_l2+e": 2,
    "pgd_step_l2": 2,
    "pgd_step_l2+e_from0": 2,
    "pgd_step_linf+e": 1,
    "pgd_step_linf": 1,
}


def _slices(launches, own) -> list[str]:
    """Tensor arguments that are not one of the op's own tensors (a view made for the launch).
    The L2 step's (B, 3, splits) partial sums are its one scratch buffer, and pgd_init's
    per-example counts its one reduction of the mask."""
    found = []
    for launch in launches:
        for k, arg in enumerate(launch.args):
            if isinstance(arg, torch.Tensor) and not any(arg is t for t in own):
                scratch = arg.dim() == 3 and arg.shape[1] == 3 and arg.dtype == torch.float32
                counts = arg.dim() == 1 and arg.dtype == torch.int64
                if not (scratch or counts):
                    found.append(f"{launch.kernel.fn.__name__} arg {k}: {tuple(arg.shape)}")
    return found


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_one_launch_per_pass_whatever_the_batch(shape, dtype, masked):
    for op, (launches, own) in _plans(shape, DTYPES[dtype], masked).items():
        assert len(launches) == EXPECTED[op], (op, [launch.kernel.fn.__name__ for launch in launches])
        assert not _slices(launches, own), (op, _slices(launches, own))
    l2 = _plans(shape, DTYPES[dtype], masked)["pgd_step_l2+e"][0]
    reduce, update = l2
    assert reduce.kernel is pgd._pgd_reduce_kernel and update.kernel is pgd._pgd_update_kernel
    assert reduce.grid[1] == shape[0]  # (splits, examples): every example in the one launch
    block_r = update.constexprs["BLOCK_R"]
    assert update.grid == (-(-shape[0] * shape[1] // block_r),)


def test_l2_chunks_are_offsets_into_the_whole_batch():
    """Tuning.pgd_l2_chunks: 32 x 512 x 1024 fp32 (d and g 128 MiB, an H100's L2 50 MiB) runs in
    8 chunks of 4 examples (16 MiB <= L2 / 3), two launches each, on the same tensors: the
    reduce launches cover examples [4c, 4c + 4) by their offset, the updates the rows of those."""
    tuning = common.Tuning(pgd_l2_chunks=True)
    launches, own = _plans((32, 512, 1024), torch.float32, True, tuning)["pgd_step_l2+e"]
    assert len(launches) == 16 and not _slices(launches, own)
    reduces = [launch for launch in launches if launch.kernel is pgd._pgd_reduce_kernel]
    updates = [launch for launch in launches if launch.kernel is pgd._pgd_update_kernel]
    assert [r.args[4] for r in reduces] == list(range(0, 32, 4)) and all(r.grid[1] == 4 for r in reduces)
    assert [(u.args[9], u.args[10]) for u in updates] == [(512 * b, 512 * (b + 4)) for b in range(0, 32, 4)]
    assert len({id(r.args[3]) for r in reduces}) == 1  # one partial-sums buffer for the batch
    # batches whose d and g fit, and Linf, stay one launch per pass
    small = _plans((8, 128, 768), torch.float32, True, tuning)
    assert len(small["pgd_step_l2+e"][0]) == 2 and len(small["pgd_step_linf+e"][0]) == 1


def test_tuning_reaches_the_plan(tmp_path, monkeypatch):
    """A tuning file (the sweep's winner) changes the tiles and splits the planner picks."""

    def l2_plan(shape):
        return _plans(shape, torch.bfloat16, True)["pgd_step_l2+e"][0]

    base, base_small = l2_plan((32, 512, 1024)), l2_plan((8, 128, 768))
    assert base_small[0].grid[0] == 32  # splits: ~4 programs per SM over 8 examples
    path = tmp_path / "tuning.json"
    path.write_text('{"winner": {"pgd_reduce_tile": 2048, "pgd_max_split": 16, "pgd_warps": 8}}')
    monkeypatch.setenv(common.TUNING_ENV, str(path))
    tuned, tuned_small = l2_plan((32, 512, 1024)), l2_plan((8, 128, 768))
    assert tuned[0].constexprs["BLOCK_R"] == 2 * base[0].constexprs["BLOCK_R"]
    assert tuned[1].constexprs["BLOCK_R"] == 2 * base[1].constexprs["BLOCK_R"]
    assert tuned_small[0].grid[0] == 16
    with pytest.raises(ValueError, match="power of two"):
        common.Tuning(pgd_max_split=48)
    with pytest.raises(ValueError, match="unknown kernel tuning"):
        common.Tuning.from_dict({"pgd_tile": 1})
