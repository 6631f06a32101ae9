"""Properties every backend of fastrobust.ops must have, run on both backends.

The ``backend`` fixture runs each test through the pure-torch reference and through the
Triton kernels (that variant is marked ``kernels``: the interpreter on CPU, native on CUDA).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from test_ops_support import TOLERANCES, assert_close, make_mask, pgd_step_oracle

from fastrobust import ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DISTRIBUTIONS = ["gaussian", "uniform"]


@pytest.fixture(params=["torch", pytest.param("triton", marks=pytest.mark.kernels)])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, device: torch.device) -> str:
    monkeypatch.setenv("FASTROBUST_BACKEND", request.param)
    probe = torch.empty(1, device=device)
    assert ops.backend_for(probe) == request.param
    return request.param


def _interpreted() -> bool:
    from fastrobust.kernels import common

    return common.INTERPRETED


def _noise_of(out: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    return (out.double() - x.double()).flatten().cpu().numpy()


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_noise_distribution(backend, device, distribution):
    """Mean, std and a Kolmogorov-Smirnov test of the noise against N(0, s^2) / U(-s, s)."""
    sigma = 0.5
    x = torch.randn(4, 32, 128, device=device)
    z = _noise_of(ops.add_noise(x, sigma, seed=1234, distribution=distribution), x) / sigma
    n = z.size
    std = 1.0 if distribution == "gaussian" else 1.0 / np.sqrt(3.0)
    assert abs(z.mean()) < 5 * std / np.sqrt(n)
    assert abs(z.std() / std - 1.0) < 0.03
    law = stats.norm() if distribution == "gaussian" else stats.uniform(loc=-1.0, scale=2.0)
    assert stats.kstest(z, law.cdf).pvalue > 1e-3
    if distribution == "uniform":
        assert np.abs(z).max() <= 1.0 + 1e-6


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_noise_per_example_sigma(backend, device, distribution):
    """A (B,) sigma scales each example's noise; sigma_b = 0 leaves that example unchanged."""
    x = torch.randn(3, 16, 128, device=device)
    sigma = torch.tensor([0.1, 0.0, 2.0], device=device)
    out = ops.add_noise(x, sigma, seed=5, distribution=distribution)
    assert torch.equal(out[1], x[1])
    unit = 1.0 if distribution == "gaussian" else 1.0 / np.sqrt(3.0)
    for b in (0, 2):
        std = (out[b].double() - x[b].double()).std().item()
        assert abs(std / (sigma[b].item() * unit) - 1.0) < 0.06


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.int32, torch.float32])
def test_noise_masked_positions_unchanged(backend, device, dtype, mask_dtype):
    x = torch.randn(3, 7, 33, device=device).to(dtype)
    mask = make_mask(3, 7, kind="empty", dtype=mask_dtype, device=device)
    out = ops.add_noise(x, 1.0, seed=3, mask=mask)
    assert out.dtype == dtype and out.shape == x.shape
    pad = mask == 0
    assert torch.equal(out[pad], x[pad])
    assert (out[~pad] != x[~pad]).float().mean() > 0.9
    copies = ops.noisy_copies(x, 3, 1.0, seed=3, mask=mask)
    assert torch.equal(copies[:, pad], x[pad].expand(3, -1, -1))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_noise_determinism(backend, device, distribution):
    x = torch.randn(2, 5, 40, device=device)
    a = ops.add_noise(x, 1.0, seed=11, distribution=distribution)
    assert torch.equal(a, ops.add_noise(x, 1.0, seed=11, distribution=distribution))
    assert (a != ops.add_noise(x, 1.0, seed=12, distribution=distribution)).float().mean() > 0.99
    torch.manual_seed(0)
    b = ops.add_noise(x, 1.0, distribution=distribution)
    c = ops.add_noise(x, 1.0, distribution=distribution)
    torch.manual_seed(0)
    assert torch.equal(b, ops.add_noise(x, 1.0, distribution=distribution))
    assert not torch.equal(b, c)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_noisy_copies_independent(backend, device, distribution):
    x = torch.randn(2, 16, 64, device=device)
    n = 4
    copies = ops.noisy_copies(x, n, 0.7, seed=99, distribution=distribution)
    assert copies.shape == (n, *x.shape)
    assert torch.equal(copies[0], ops.add_noise(x, 0.7, seed=99, distribution=distribution))
    z = (copies.double() - x.double()).reshape(n, -1).cpu().numpy()
    corr = np.corrcoef(z)
    off_diag = corr[~np.eye(n, dtype=bool)]
    # 2048 samples: the correlation of independent copies has std ~ 1/sqrt(2048) = 0.022.
    assert np.abs(off_diag).max() < 0.1
    unit = 1.0 if distribution == "gaussian" else 1.0 / np.sqrt(3.0)
    assert np.allclose(z.std(axis=1), 0.7 * unit, rtol=0.08)


def test_noise_gradient_is_identity(backend, device):
    x = torch.randn(2, 5, 24, device=device, requires_grad=True)
    w = torch.randn(2, 5, 24, device=device)
    (ops.add_noise(x, 0.3, seed=1, mask=make_mask(2, 5, device=device)) * w).sum().backward()
    assert torch.equal(x.grad, w)
    x.grad = None
    wc = torch.randn(3, 2, 5, 24, device=device)
    (ops.noisy_copies(x, 3, 0.3, seed=1) * wc).sum().backward()
    torch.testing.assert_close(x.grad, wc.sum(0))
    assert ops.add_noise(x.detach(), 0.3, seed=1).grad_fn is None


def test_noise_non_contiguous(backend, device):
    base = torch.randn(7, 3, 40, device=device)
    x = base.transpose(0, 1)  # (3, 7, 40), not contiguous
    mask = make_mask(3, 7, device=device)
    a = ops.add_noise(x, 0.5, seed=8, mask=mask)
    b = ops.add_noise(x.contiguous(), 0.5, seed=8, mask=mask)
    assert torch.equal(a, b)
    strided = torch.randn(3, 7, 80, device=device)[:, :, ::2]  # hidden stride 2
    assert torch.equal(ops.add_noise(strided, 0.5, seed=8), ops.add_noise(strided.contiguous(), 0.5, seed=8))


def test_noise_low_precision_stats(backend, device):
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.zeros(2, 16, 128, device=device, dtype=dtype)
        z = ops.add_noise(x, 1.0, seed=2).float()
        assert z.dtype == torch.float32 and abs(z.std().item() - 1.0) < 0.05


# --------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pgd_init_inside_ball(backend, device, norm, dtype):
    eps = 0.8
    x = torch.randn(4, 9, 64, device=device).to(dtype)
    mask = make_mask(4, 9, kind="empty", device=device)
    delta = ops.pgd_init(x, eps, norm=norm, mask=mask, seed=4)
    assert delta.dtype == dtype and delta.shape == x.shape and not delta.requires_grad
    assert torch.equal(delta[mask == 0], torch.zeros_like(delta[mask == 0]))
    d = delta.double()
    if norm == "l2":
        norms = torch.linalg.vector_norm(d.flatten(1), dim=1)
        assert (norms <= eps * (1 + TOLERANCES[dtype][0])).all()
        # U(-1, 1) entries scaled by eps / sqrt(n): expected norm eps / sqrt(3) (example 0 is all padding).
        assert torch.allclose(norms[1:], torch.full_like(norms[1:], eps / 3**0.5), rtol=0.15)
    else:
        # The bound is eps as the dtype represents it (bf16 rounds 0.8 up to 0.80078).
        assert d.abs().max() <= max(eps, torch.tensor(eps).to(dtype).item())
        real = d[mask != 0]
        assert stats.kstest(real.flatten().cpu().numpy() / eps, stats.uniform(-1, 2).cdf).pvalue > 1e-3
    assert torch.equal(delta, ops.pgd_init(x, eps, norm=norm, mask=mask, seed=4))
    assert not torch.equal(delta, ops.pgd_init(x, eps, norm=norm, mask=mask, seed=5))


SHAPES = [(3, 7, 33), (2, 16, 64), (1, 1, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("epsilon", [None, 0.5])
@pytest.mark.parametrize("masked", [False, True])
def test_pgd_step_matches_definition(backend, device, shape, dtype, norm, epsilon, masked):
    """Against the step computed from its definition in float64 (tests the L2 identity)."""
    gen = torch.Generator().manual_seed(hash((shape, norm)) % 2**31)
    batch, seq_len, hidden = shape
    delta = (0.2 * torch.randn(shape, generator=gen)).to(device, dtype)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    embeds = torch.randn(shape, generator=gen).to(device, dtype)
    mask = make_mask(batch, seq_len, device=device) if masked else None
    new, nxt = ops.pgd_step(delta, grad, step_size=0.3, epsilon=epsilon, norm=norm, mask=mask, embeds=embeds)
    ref_new, ref_next = pgd_step_oracle(
        delta, grad, step_size=0.3, epsilon=epsilon, norm=norm, mask=mask, embeds=embeds
    )
    assert new.dtype == dtype and nxt.dtype == dtype
    assert_close(new, ref_new, dtype, "delta'")
    assert_close(nxt, ref_next, dtype, "embeds + delta'")
    if masked:
        pad = mask == 0
        assert torch.equal(new[pad], torch.zeros_like(new[pad]))
        assert torch.equal(nxt[pad], embeds[pad])


# The interpreter evaluates inf * 0 in NumPy while reducing; that warning is expected.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("bad", ["zero", "nan", "inf", "nan_in_padding"])
def test_pgd_step_degenerate_gradients(backend, device, norm, bad):
    """A zero / NaN / inf gradient never produces NaN; NaN at padding positions is ignored."""
    shape = (3, 6, 20)
    delta = 0.1 * torch.randn(shape, device=device)
    grad = torch.randn(shape, device=device)
    mask = make_mask(3, 6, device=device)
    if bad == "zero":
        grad[1] = 0.0
    elif bad == "nan":
        grad[1, 0, 3] = float("nan")
    elif bad == "inf":
        grad[1, 0, 3] = float("inf")
    else:
        grad[1, 5, :] = float("nan")  # example 1 has 4 real tokens: position 5 is padding
    new, nxt = ops.pgd_step(delta, grad, step_size=0.5, epsilon=1.0, norm=norm, mask=mask, embeds=delta)
    assert torch.isfinite(new).all() and torch.isfinite(nxt).all()
    ref = pgd_step_oracle(delta, grad, step_size=0.5, epsilon=1.0, norm=norm, mask=mask)
    assert_close(new, ref, torch.float32, "delta'")
    if norm == "l2" and bad != "nan_in_padding":
        # Skipped step: example 1 keeps its (masked, projected) delta.
        # (The projection matters: with epsilon 1.0 the random delta's norm can exceed it.)
        kept = torch.where(mask[1, :, None] != 0, delta[1], 0.0)
        kept = kept * torch.clamp(1.0 / torch.linalg.vector_norm(kept), max=1.0)
        torch.testing.assert_close(new[1], kept)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_projection_never_exceeds_epsilon(backend, device, norm):
    torch.manual_seed(0)
    shape = (5, 12, 48)
    mask = make_mask(5, 12, device=device)
    delta = ops.pgd_init(torch.empty(shape, device=device), 0.3, norm=norm, mask=mask, seed=1)
    for step in range(6):
        grad = torch.randn(shape, device=device) * 10.0 ** (step - 3)
        delta = ops.pgd_step(delta, grad, step_size=0.25, epsilon=0.3, norm=norm, mask=mask)
        if norm == "l2":
            norms = torch.linalg.vector_norm(delta.double().flatten(1), dim=1)
            assert (norms <= 0.3 * (1 + 1e-5)).all(), norms
        else:
            assert delta.abs().max() <= 0.3


def test_pgd_step_mixed_dtypes_and_views(backend, device):
    """fp32 delta with a bf16 gradient and non-contiguous views: same as contiguous inputs."""
    shape = (3, 7, 33)
    base = torch.randn(7, 3, 33, device=device)
    delta = (0.1 * base).transpose(0, 1)
    grad = torch.randn(3, 7, 66, device=device)[:, :, ::2].to(torch.bfloat16)
    embeds = torch.randn(7, 3, 33, device=device).to(torch.bfloat16).transpose(0, 1)
    assert delta.shape == grad.shape == embeds.shape == shape
    kw = dict(step_size=0.2, epsilon=0.4, mask=make_mask(3, 7, device=device))
    new, nxt = ops.pgd_step(delta, grad, embeds=embeds, **kw)
    new_c, nxt_c = ops.pgd_step(delta.contiguous(), grad.contiguous(), embeds=embeds.contiguous(), **kw)
    assert new.dtype == torch.float32 and nxt.dtype == torch.bfloat16
    torch.testing.assert_close(new, new_c, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(nxt, nxt_c)
    ref_new, ref_next = pgd_step_oracle(delta, grad, embeds=embeds, **kw)
    assert_close(new, ref_new, torch.float32, "delta'")
    assert_close(nxt, ref_next, torch.bfloat16, "embeds + delta'")


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_zero_size_inputs(backend, device, norm):
    """B = 0 (and L = 0): every op returns an empty result of the right shape."""
    for shape in ((0, 4, 8), (2, 0, 8)):
        x = torch.empty(shape, device=device)
        assert ops.add_noise(x, 1.0, seed=1).shape == shape
        assert ops.noisy_copies(x, 2, 1.0, seed=1).shape == (2, *shape)
        assert ops.pgd_init(x, 1.0, norm=norm, seed=1).shape == shape
        new, nxt = ops.pgd_step(x, x, step_size=0.1, epsilon=1.0, norm=norm, embeds=x)
        assert new.shape == nxt.shape == shape
        assert ops.pgd_step(None, x, step_size=0.1, epsilon=1.0, norm=norm).shape == shape


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pgd_step_zero_start_equals_zero_delta(backend, device, norm, dtype):
    """delta=None is the step from d = 0 (without reading one); d' takes embeds' dtype."""
    gen = torch.Generator().manual_seed(2)
    grad = torch.randn(3, 7, 33, generator=gen).to(device)
    embeds = torch.randn(3, 7, 33, generator=gen).to(device, dtype)
    mask = make_mask(3, 7, device=device)
    kw = dict(step_size=0.3, epsilon=0.2, norm=norm, mask=mask)
    new, nxt = ops.pgd_step(None, grad, embeds=embeds, **kw)
    want_new, want_next = ops.pgd_step(torch.zeros_like(embeds), grad, embeds=embeds, **kw)
    assert new.dtype == nxt.dtype == dtype
    assert torch.equal(new, want_new) and torch.equal(nxt, want_next)
    alone = ops.pgd_step(None, grad, **kw)
    assert alone.dtype == grad.dtype
    assert_close(alone, pgd_step_oracle(torch.zeros_like(grad), grad, **kw), torch.float32, "delta'")


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pgd_init_next_input(backend, device, norm, dtype):
    """next_input=True: the same delta as without it, and exactly embeds + delta alongside;
    the sum is differentiable in embeds with the identity Jacobian, delta is not."""
    x = torch.randn(3, 6, 40, device=device).to(dtype).requires_grad_(True)
    mask = make_mask(3, 6, device=device)
    delta, nxt = ops.pgd_init(x, 0.7, norm=norm, mask=mask, seed=21, next_input=True)
    assert torch.equal(delta, ops.pgd_init(x, 0.7, norm=norm, mask=mask, seed=21))
    assert not delta.requires_grad and nxt.requires_grad and nxt.dtype == dtype
    if backend == "triton" and dtype == torch.bfloat16 and _interpreted():
        # The interpreter casts fp32 -> bf16 by truncation (GPUs round to nearest even).
        assert_close(nxt, x.detach() + delta, dtype, "embeds + delta")
    else:
        assert torch.equal(nxt, x.detach() + delta)
    w = torch.randn(x.shape, device=device)
    (nxt.float() * w).sum().backward()
    torch.testing.assert_close(x.grad.float(), w.to(dtype).float())


def test_pgd_step_next_is_differentiable_in_embeds(backend, device):
    """(d', embeds + d'): d' never requires grad, embeds + d' passes its gradient to embeds."""
    embeds = torch.randn(2, 5, 24, device=device, requires_grad=True)
    grad = torch.randn(2, 5, 24, device=device)
    delta = torch.zeros(2, 5, 24, device=device, requires_grad=True)
    new, nxt = ops.pgd_step(delta, grad, step_size=0.1, epsilon=1.0, embeds=embeds)
    assert not new.requires_grad and nxt.requires_grad
    w = torch.randn(2, 5, 24, device=device)
    (nxt * w).sum().backward()
    assert torch.equal(embeds.grad, w) and delta.grad is None


def test_pgd_step_output_does_not_require_grad(backend, device):
    delta = torch.zeros(2, 3, 8, device=device, requires_grad=True)
    grad = torch.randn(2, 3, 8, device=device)
    new = ops.pgd_step(delta, grad, step_size=0.1, epsilon=1.0)
    assert not new.requires_grad
    assert torch.allclose(
        torch.linalg.vector_norm(new.flatten(1), dim=1), torch.full((2,), 0.1, device=device)
    )


def test_pgd_loop_captures_in_cuda_graph(backend, device):
    """No host synchronisation: a PGD loop records into a CUDA graph and replays correctly."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    shape = (4, 16, 64)
    mask = make_mask(4, 16, device=device)
    embeds = torch.randn(shape, device=device)
    grad = torch.randn(shape, device=device)
    delta0 = ops.pgd_init(embeds, 0.5, mask=mask, seed=1)
    expected = delta0
    for _ in range(3):
        expected, _ = ops.pgd_step(expected, grad, step_size=0.2, epsilon=0.5, mask=mask, embeds=embeds)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture (compiles the kernels)
        ops.pgd_step(delta0, grad, step_size=0.2, epsilon=0.5, mask=mask, embeds=embeds)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        delta = delta0
        for _ in range(3):
            delta, _ = ops.pgd_step(delta, grad, step_size=0.2, epsilon=0.5, mask=mask, embeds=embeds)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(delta, expected)
