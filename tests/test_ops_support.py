"""Shared helpers of the ops tests (no tests here): tolerances, oracles, a NumPy Philox.

* ``TOLERANCES``: the one table of per-dtype (rtol, atol) used by every comparison against
  the float64 oracle. The oracle sees the same rounded inputs, so what is left is the
  kernel's fp32 arithmetic (~1e-6 relative) plus the rounding of the output to its dtype:
  half an ulp is 2^-11 (fp16) and 2^-8 (bf16) relative; we allow about twice that.
* ``pgd_step_oracle``: the L2/Linf step written straight from its definition in float64
  (norm of the updated delta computed directly, not through the identity the kernels and
  the reference use), so the identity itself is under test.
* ``philox_noise``: Triton's Philox-4x32-10, ``uint_to_uniform_float`` and Box-Muller in
  NumPy, laid out like ``kernels/noise.py``'s stream, for the bit-level check of the
  Triton noise (as Triton's own ``test_random.py`` does).
"""

from __future__ import annotations

import numpy as np
import torch

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (8e-3, 1e-4),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """allclose with the dtype's tolerance; on failure say where and by how much."""
    rtol, atol = TOLERANCES[dtype]
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    both_nan = torch.isnan(a) & torch.isnan(e)
    err = (a - e).abs()
    bad = ~((err <= atol + rtol * e.abs()) | both_nan)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what} ({dtype}): {int(bad.sum())}/{bad.numel()} entries differ; first at {idx}: "
            f"got {a[idx].item():.8g}, expected {e[idx].item():.8g}; "
            f"max abs err {err[~both_nan].max().item():.3g} (rtol={rtol}, atol={atol})"
        )


def make_mask(
    batch: int, seq_len: int, *, kind: str = "ragged", dtype=torch.long, device="cpu"
) -> torch.Tensor:
    """Right-padded (B, L) masks: 'ragged' lengths L, L-1, ... (at least 1), 'empty' makes
    example 0 all padding, 'none' is all ones."""
    mask = torch.ones(batch, seq_len, dtype=dtype, device=device)
    if kind in ("ragged", "empty"):
        for b in range(batch):
            mask[b, max(1, seq_len - 2 * b) :] = 0
    if kind == "empty":
        mask[0] = 0
    return mask


def pgd_step_oracle(delta, grad, *, step_size, epsilon, norm="l2", mask=None, embeds=None):
    """Definition of the PGD step in float64, per example, one at a time."""
    d = delta.detach().to(torch.float64).cpu().clone()
    g = grad.detach().to(torch.float64).cpu().clone()
    m = torch.ones(d.shape[:2], dtype=torch.bool) if mask is None else (mask.cpu() != 0)
    out = torch.zeros_like(d)
    for b in range(d.shape[0]):
        rows = m[b]
        db, gb = d[b][rows], g[b][rows]
        if norm == "linf":
            new = db + step_size * torch.sign(torch.nan_to_num(gb, nan=0.0))
            if epsilon is not None:
                new = new.clamp(-epsilon, epsilon)
        else:
            gnorm = torch.linalg.vector_norm(gb)
            if torch.isfinite(gnorm) and gnorm > 0:
                new = db + step_size * gb / gnorm
            else:
                new = db
            if epsilon is not None:
                nn = torch.linalg.vector_norm(new)
                if nn > epsilon:
                    new = new * (epsilon / nn)
        out[b][rows] = new
    if embeds is None:
        return out
    return out, embeds.detach().to(torch.float64).cpu() + out


# --------------------------------------------------------------------------- Philox in NumPy

_M32 = np.uint64(0xFFFFFFFF)


def _umulhi(a: int, b: np.ndarray) -> np.ndarray:
    return ((np.uint64(a) * b.astype(np.uint64)) >> np.uint64(32)).astype(np.uint32)


def _mullo(a: int, b: np.ndarray) -> np.ndarray:
    return ((np.uint64(a) * b.astype(np.uint64)) & _M32).astype(np.uint32)


def philox4x32(seed: int, counter: np.ndarray, rounds: int = 10):
    """Philox-4x32 with key (seed_lo, seed_hi) and counter (lo, hi, 0, 0), as tl.randint4x."""
    counter = counter.astype(np.uint64)
    c0 = (counter & _M32).astype(np.uint32)
    c1 = (counter >> np.uint64(32)).astype(np.uint32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0 = np.uint32(seed & 0xFFFFFFFF)
    k1 = np.uint32((seed >> 32) & 0xFFFFFFFF)
    for _ in range(rounds):
        p0, p2 = c0, c2
        c0 = _umulhi(0xCD9E8D57, p2) ^ c1 ^ k0
        c2 = _umulhi(0xD2511F53, p0) ^ c3 ^ k1
        c1 = _mullo(0xCD9E8D57, p2)
        c3 = _mullo(0xD2511F53, p0)
        k0 = np.uint32((int(k0) + 0x9E3779B9) & 0xFFFFFFFF)
        k1 = np.uint32((int(k1) + 0xBB67AE85) & 0xFFFFFFFF)
    return c0, c1, c2, c3


def _uniform(x: np.ndarray) -> np.ndarray:
    x = x.view(np.int32)
    x = np.where(x < 0, ~x, x)
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


def _box_muller(u1: np.ndarray, u2: np.ndarray):
    u1 = np.maximum(np.float32(1.0e-7), u1)
    th = np.float32(6.283185307179586) * u2
    r = np.sqrt(np.float32(-2.0) * np.log(u1))
    return r * np.cos(th), r * np.sin(th)


def philox_noise(seed: int, copies: int, rows: int, hidden: int, distribution: str) -> np.ndarray:
    """The unit noise z of kernels/noise.py, shape (copies * rows, hidden), float32.

    Row r (copy-major) and column h take output h // Q of Philox at counter r * Q + h % Q,
    Q = ceil(H / 4)."""
    quarter = -(-hidden // 4)
    r = np.arange(copies * rows, dtype=np.uint64)[:, None]
    j = np.arange(quarter, dtype=np.uint64)[None, :]
    words = philox4x32(seed, r * np.uint64(quarter) + j)
    u = [_uniform(w) for w in words]
    if distribution == "gaussian":
        n1, n2 = _box_muller(u[0], u[1])
        n3, n4 = _box_muller(u[2], u[3])
        z = [n1, n2, n3, n4]
    else:
        z = [np.float32(2.0) * x - np.float32(1.0) for x in u]
    return np.concatenate(z, axis=1)[:, :hidden]
