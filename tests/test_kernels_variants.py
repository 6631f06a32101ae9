"""Dynamically padded batches do not multiply compiled kernel variants.

A GPU compiles one kernel per distinct specialisation key (constexprs, integer ``== 1`` /
divisible-by-16 flags, pointer alignment). Lengths (L, B * L, rows per split, the number of
splits, ...) are runtime arguments marked ``do_not_specialize``, and the only constexprs are
feature flags and power-of-two tiles that do not depend on L. Checked on CPU from the launch
plans an H100 would get, through Triton's own binder (tests/kernel_tools.py); on a GPU by
counting the kernel caches after real launches.
"""

from __future__ import annotations

import pytest
import torch
from kernel_tools import variant_key

from fastrobust import ops
from fastrobust.kernels import common, noise, pgd

pytestmark = pytest.mark.kernels

LENGTHS = range(2, 513)
HIDDEN = 768


def _meta(*shape, dtype=torch.bfloat16):
    return torch.empty(shape, device="meta", dtype=dtype)


def _training_launches(batch: int, seq_len: int, dtype) -> dict[str, list]:
    """The launches of one step of each method on a (batch, seq_len, HIDDEN) padded batch."""
    target = common.H100
    x, g = _meta(batch, seq_len, HIDDEN, dtype=dtype), _meta(batch, seq_len, HIDDEN, dtype=dtype)
    out = _meta(batch, seq_len, HIDDEN, dtype=dtype)
    mask = _meta(batch, seq_len, dtype=torch.long)
    seed = _meta(1, dtype=torch.int64)
    sigma = _meta(batch, dtype=torch.float32)
    copies = _meta(32, batch, seq_len, HIDDEN, dtype=dtype)

    def step(norm, delta, embeds):
        return pgd.step_launches(delta, g, 0.1, 0.5, norm, mask, embeds, out, out, target=target)

    return {
        "rs-rp": noise.noise_launches(
            x, (batch, seq_len, HIDDEN), out, 0.1, seed, True, mask, 1, target=target
        ),
        "neftune": noise.noise_launches(
            x, (batch, seq_len, HIDDEN), out, sigma, seed, False, mask, 1, target=target
        ),
        "certify": noise.noise_launches(
            x, (batch, seq_len, HIDDEN), copies, 0.1, 7, True, mask, 32, target=target
        ),
        "pgd-l2": (
            pgd.init_launches(x, 0.5, "l2", mask, seed, out, None, target=target)
            + pgd.init_launches(x, 0.5, "l2", mask, seed, out, out, target=target)
            + step("l2", None, x)
            + step("l2", x, x)
            + step("l2", x, None)
        ),
        "pgd-linf": step("linf", None, x) + step("linf", x, x),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("batch", [8, 32])
def test_sequence_length_does_not_change_the_compiled_variants(batch, dtype):
    reference = {
        m: {variant_key(launch) for launch in ls} for m, ls in _training_launches(batch, 128, dtype).items()
    }
    seen = {m: set() for m in reference}
    for seq_len in LENGTHS:
        for method, launches in _training_launches(batch, seq_len, dtype).items():
            seen[method] |= {variant_key(launch) for launch in launches}
    for method, keys in seen.items():
        assert keys == reference[method], (
            f"{method}: {len(keys)} variants over L=2..512, {len(reference[method])} at L=128"
        )
    total = set().union(*seen.values())
    # noise: 3 (Gaussian, per-example uniform, copies); PGD: init x2, reduce x2, update x5
    assert len(total) <= 12, sorted(total)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (H100/H200 run)")
def test_kernel_caches_after_padded_batches(monkeypatch):
    """On a GPU: the kernel caches hold as many entries after L = 2..512 as after one L."""
    monkeypatch.setenv("FASTROBUST_BACKEND", "triton")
    kernels = (noise._noise_kernel, pgd._pgd_reduce_kernel, pgd._pgd_update_kernel)

    def cached() -> int:
        return sum(len(entry[0]) for k in kernels for entry in k.device_caches.values())

    def one_of_each(seq_len: int) -> None:
        x = torch.randn(8, seq_len, HIDDEN, device="cuda", dtype=torch.bfloat16)
        mask = torch.ones(8, seq_len, device="cuda", dtype=torch.long)
        mask[1:, seq_len // 2 :] = 0
        ops.add_noise(x, 0.1, mask=mask)
        delta, nxt = ops.pgd_init(x, 0.5, mask=mask, next_input=True)
        for norm in ("l2", "linf"):
            ops.pgd_step(None, x, step_size=0.1, epsilon=0.5, norm=norm, mask=mask, embeds=x)
            ops.pgd_step(delta, x, step_size=0.1, epsilon=0.5, norm=norm, mask=mask, embeds=x)

    one_of_each(128)
    after_one = cached()
    for seq_len in range(2, 513, 3):
        one_of_each(seq_len)
    torch.cuda.synchronize()
    assert cached() == after_one
