"""Triton-specific tests of the fused ops (``-m kernels``): the random stream bit for bit
against a NumPy Philox, the kernels against the float64 reference, the GPU tilings driven
through the interpreter, and no recompilation for a new seed.

On CPU these run in the Triton interpreter (conftest sets TRITON_INTERPRET=1), on CUDA natively.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ops_support import assert_close, make_mask, pgd_step_oracle, philox_noise

from fastrobust import ops, reference
from fastrobust.kernels import common, noise, pgd

pytestmark = pytest.mark.kernels

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _triton_backend(monkeypatch: pytest.MonkeyPatch, device: torch.device) -> None:
    monkeypatch.setenv("FASTROBUST_BACKEND", "triton")
    assert ops.backend_for(torch.empty(1, device=device)) == "triton"


def _expected_noise(x, sigma, seed, distribution, mask, copies):
    """x + sigma_b * z * mask in float32 with z from the NumPy Philox, shape (copies, B, L, H)."""
    batch, seq_len, hidden = x.shape
    z = philox_noise(seed, copies, batch * seq_len, hidden, distribution).reshape(
        copies, batch, seq_len, hidden
    )
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float32).reshape(-1, 1, 1), (batch, 1, 1))
    if mask is not None:
        s = s * (mask.cpu().numpy() != 0).astype(np.float32)[:, :, None]
    out = x.float().cpu().numpy()[None] + s[None].astype(np.float32) * z
    return torch.from_numpy(out).to(x.dtype)


@pytest.mark.parametrize("math", ["default", "precise"])
@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
@pytest.mark.parametrize("shape", [(2, 3, 33), (1, 4, 8), (3, 2, 1)], ids=lambda s: "x".join(map(str, s)))
def test_noise_stream_matches_numpy_philox(device, monkeypatch, distribution, shape, math):
    """The Triton noise is Philox-4x32-10 at the documented counters: bit for bit in the
    interpreter (both run NumPy float32 and precise Box-Muller); on CUDA within libdevice's
    last bits (precise) or the PTX approximations' error (default, fast Box-Muller)."""
    if math == "precise":
        monkeypatch.setenv(noise.PRECISE_ENV, "1")
    x = torch.randn(shape).to(device)
    mask = make_mask(shape[0], shape[1], device=device)
    sigma = torch.tensor([0.5, 1.5, 2.0][: shape[0]], device=device)
    got = ops.noisy_copies(x, 3, sigma, seed=2024, distribution=distribution, mask=mask).cpu()
    want = _expected_noise(x, sigma.cpu(), 2024, distribution, mask, 3)
    if common.INTERPRETED:
        assert torch.equal(got, want)
    elif math == "precise" or distribution == "uniform":
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        # sin/cos.approx: ~2^-21 absolute, lg2.approx ~2^-22 relative: |z| error <~ 1e-5 * sigma.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=4e-5)
    # add_noise is copy 0 of the same stream.
    single = ops.add_noise(x, sigma, seed=2024, distribution=distribution, mask=mask).cpu()
    assert torch.equal(single, got[0])


@pytest.mark.skipif(common.INTERPRETED, reason="inline PTX (the fast Box-Muller) runs on a GPU only")
def test_fast_and_precise_gaussian_agree(device, monkeypatch):
    """FASTROBUST_PRECISE_NOISE=1 selects libdevice's logf/sinf/cosf; the default PTX
    approximations give the same stream to ~1e-5 and pass the same distribution tests."""
    from scipy import stats

    x = torch.zeros(8, 256, 1024, device=device)
    fast = ops.add_noise(x, 1.0, seed=99)
    monkeypatch.setenv(noise.PRECISE_ENV, "1")
    precise = ops.add_noise(x, 1.0, seed=99)
    assert not torch.equal(fast, precise)
    torch.testing.assert_close(fast, precise, rtol=1e-5, atol=4e-5)
    for z in (fast, precise):
        v = z.flatten().double().cpu().numpy()
        assert abs(v.mean()) < 5 / np.sqrt(v.size) and abs(v.std() - 1.0) < 5e-3
        assert stats.kstest(v, stats.norm().cdf).pvalue > 1e-3


def test_fully_masked_blocks_skip_the_random_numbers(device):
    """Padding rows (and sigma_b = 0) need no random numbers: rows of a block that is all
    padding come out as x exactly, and the other rows keep the documented stream."""
    x = torch.randn(3, 16, 40, device=device)
    mask = torch.zeros(3, 16, dtype=torch.long, device=device)
    mask[0, :5] = 1  # example 0: 5 real tokens; examples 1, 2: all padding
    sigma = torch.tensor([0.5, 0.5, 0.0], device=device)
    out = torch.empty_like(x)
    # 4 rows per program: rows 0-3 live, row 4 live (block 1), rows 8.. all padding
    noise.launch_noise(x, tuple(x.shape), out, sigma, 5, True, mask, 1, block_r=4, block_q=16)
    assert torch.equal(out[mask == 0], x[mask == 0])
    want = _expected_noise(x, sigma.cpu(), 5, "gaussian", mask, 1)[0]
    if common.INTERPRETED:
        assert torch.equal(out.cpu(), want)
    else:
        torch.testing.assert_close(out.cpu(), want, rtol=1e-5, atol=4e-5)


def test_pgd_init_uses_the_uniform_stream(device):
    x = torch.zeros(2, 5, 12, device=device)
    mask = make_mask(2, 5, device=device)
    delta = ops.pgd_init(x, 0.6, norm="l2", mask=mask, seed=77).cpu()
    n_real = (mask.cpu() != 0).sum(1).float()
    scale = 0.6 / torch.sqrt(n_real * 12)
    want = _expected_noise(x, scale, 77, "uniform", mask, 1)[0]
    torch.testing.assert_close(delta, want, rtol=1e-6, atol=1e-7)


def test_noise_stream_independent_of_tiling(device):
    """Block sizes and the int64 counter path change nothing in the output."""
    x = torch.randn(2, 3, 37, device=device)
    mask = make_mask(2, 3, device=device)
    base = noise.noise_forward(x, 0.4, 31, "gaussian", mask, 3)
    for kw in (  # several copies per program, column trips, int64 counters
        dict(block_r=2, block_q=4, copies_per_program=1),
        dict(block_r=1, block_q=8, force_wide=True, copies_per_program=2),
        dict(force_wide=True, copies_per_program=3),
    ):
        out = torch.empty_like(base)
        noise.launch_noise(x, tuple(x.shape), out, 0.4, 31, True, mask, 3, **kw)
        assert torch.equal(out, base), kw


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize(
    "tiling",
    [
        dict(n_split=3, block_r=2, block_h=16),
        dict(n_split=2, block_h=8),
        dict(n_split=2, block_r=4, block_h=16, chunk_examples=2),  # L2-sized chunks of examples
        dict(chunk_examples=1),
    ],
    ids=["split3", "split2", "chunks2", "chunks1"],
)
def test_pgd_step_gpu_tilings(device, norm, tiling):
    """Several programs per example (partials summed in pass 2) and several column trips."""
    shape = (3, 9, 40)
    gen = torch.Generator().manual_seed(3)
    delta = (0.2 * torch.randn(shape, generator=gen)).to(device)
    grad = torch.randn(shape, generator=gen).to(device)
    grad[2, 1, 5] = float("nan")
    embeds = torch.randn(shape, generator=gen).to(device)
    mask = make_mask(3, 9, device=device)
    new, nxt = pgd.pgd_step_forward(delta, grad, 0.3, 0.5, norm, mask, embeds, **tiling)
    ref_new, ref_next = pgd_step_oracle(
        delta, grad, step_size=0.3, epsilon=0.5, norm=norm, mask=mask, embeds=embeds
    )
    assert_close(new, ref_new, torch.float32, "delta'")
    assert_close(nxt, ref_next, torch.float32, "embeds + delta'")


@pytest.mark.parametrize("shape", [(3, 7, 33), (4, 5, 128), (2, 1, 3)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("epsilon", [None, 0.05, 2.0])
def test_pgd_step_matches_float64_reference(device, shape, dtype, norm, epsilon):
    """Triton on dtype vs fastrobust.reference on the same values in float64."""
    gen = torch.Generator().manual_seed(11)
    delta = (0.1 * torch.randn(shape, generator=gen)).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    grad[0] = 0.0  # zero gradient: example 0 only projected
    embeds = torch.randn(shape, generator=gen).to(dtype)
    mask = make_mask(shape[0], shape[1], kind="empty")
    kw = dict(step_size=0.07, epsilon=epsilon, norm=norm)
    new, nxt = ops.pgd_step(
        delta.to(device), grad.to(device), mask=mask.to(device), embeds=embeds.to(device), **kw
    )
    ref_new, ref_next = reference.pgd_step(
        delta.double(), grad.double(), mask=mask, embeds=embeds.double(), **kw
    )
    assert_close(new, ref_new, dtype, "delta'")
    assert_close(nxt, ref_next, dtype, "embeds + delta'")


@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
def test_noise_matches_reference_in_distribution(device, distribution):
    """The two backends draw different streams of the same law: two-sample KS test."""
    from scipy import stats

    x = torch.zeros(2, 32, 128, device=device)
    tri = ops.add_noise(x, 0.9, seed=5, distribution=distribution).flatten().cpu().numpy()
    with ops.use_backend("torch"):
        ref = ops.add_noise(x, 0.9, seed=5, distribution=distribution).flatten().cpu().numpy()
    assert not np.array_equal(tri, ref)
    assert stats.ks_2samp(tri, ref).pvalue > 1e-3


def test_new_seed_does_not_recompile(device):
    """seed is do_not_specialize: a new seed reuses the compiled kernel."""
    x = torch.randn(2, 4, 16, device=device)
    if common.INTERPRETED:
        # Nothing is compiled in the interpreter; check the declaration the GPU relies on.
        assert "seed" in noise._noise_kernel.kwargs["do_not_specialize"]
        return

    def compiled_variants() -> int:
        # JITFunction.device_caches: device -> (kernel_cache, ...), one entry per specialisation.
        return sum(len(entry[0]) for entry in noise._noise_kernel.device_caches.values())

    ops.add_noise(x, 0.1, seed=1)
    before = compiled_variants()
    assert before >= 1
    for seed in (2, 16, 17, 2**20, 2**31 - 2):
        ops.add_noise(x, 0.1, seed=seed)
    assert compiled_variants() == before


@pytest.mark.parametrize("seed_dtype", [torch.int64, torch.int32])
def test_device_seed_is_the_int_seed_stream(device, seed_dtype):
    """A seed tensor is loaded by the kernel (SEED_FROM_PTR): the same bits as the int seed."""
    x = torch.randn(2, 5, 24, device=device)
    mask = make_mask(2, 5, device=device)
    seed_t = torch.tensor([2**31 - 2], device=device, dtype=seed_dtype)
    for fn in (
        lambda s: ops.add_noise(x, 0.5, seed=s, mask=mask),
        lambda s: ops.noisy_copies(x, 2, 0.5, seed=s, distribution="uniform"),
        lambda s: ops.pgd_init(x, 0.5, seed=s, mask=mask, next_input=True)[1],
    ):
        assert torch.equal(fn(2**31 - 2), fn(seed_t))


def test_seed_none_is_a_device_draw_of_the_default_generator(device):
    """seed=None is exactly: draw torch.randint(0, 2**31 - 1, (1,)) on the tensors' device (an
    ordinary torch RNG op: captured by CUDA graphs, reproduced by torch.manual_seed), then
    let the kernel load it."""
    x = torch.randn(2, 5, 24, device=device)
    for fn in (
        lambda s: ops.add_noise(x, 0.5, seed=s),
        lambda s: ops.pgd_init(x, 0.5, seed=s, norm="linf"),
    ):
        torch.manual_seed(5)
        drawn = fn(None)
        torch.manual_seed(5)
        seed = torch.randint(0, 2**31 - 1, (1,), device=device)
        assert torch.equal(drawn, fn(seed))
        assert not torch.equal(drawn, fn(None))  # the generator moved on
