"""Benchmarks of the fused ops against their pure-torch twin (eager and torch.compile).

Providers:
  torch              fastrobust.reference, eager (what CPU users get; imported, not copied)
  torch_compile      torch.compile of the same reference function (its torch.Generator
                     forces a graph break around the RNG in the noise ops)
  compile_global_rng noise ops only: torch.compile of x + sigma * randn_like(x) * mask, which
                     lets inductor fuse its own RNG (the strongest compiled baseline)
  triton             fastrobust.ops with FASTROBUST_BACKEND=triton (CUDA only)
and op "copy" (provider torch): out.copy_(x) on the same shape, the bandwidth yardstick.

Bytes floor (N = B*L*H elements of s bytes; the mask's B*L entries counted too):
  copy           2 N s
  add_noise      2 N s                      read x, write out
  noisy_copies   (1 + n) N s                read x once, write n copies
  pgd_step_l2    7 N s                      pass 1 reads g, d; pass 2 reads d, g, embeds,
                                            writes d', embeds + d'
  pgd_step_linf  5 N s                      one pass: reads d, g, embeds, writes d', embeds + d'
The benchmark mask marks every token real, so no implementation can skip padding and the
floor is exact. GB/s = floor / median time; fraction_of_copy = that / the session's copy
bandwidth. FASTROBUST_BENCH_SMOKE=1: one small shape, no torch.compile.
"""

from __future__ import annotations

import pytest
import torch
from _util import SMOKE, cpu_threads_for_timing, peak_memory_mb, record, timed

from fastrobust import ops, reference

DTYPES = [torch.float32] if SMOKE else [torch.float32, torch.bfloat16]
SHAPES = (
    [(2, 32, 64)]
    if SMOKE
    else [(b, length, h) for b in (8, 32) for length in (128, 512) for h in (768, 1024)]
)
OPS = ["copy", "add_noise", "noisy_copies", "pgd_step_l2", "pgd_step_linf"]
N_COPIES = 4
NOISE_OPS = ("add_noise", "noisy_copies")


def _providers() -> list[str]:
    out = ["torch"]
    if not SMOKE:
        out += ["torch_compile", "compile_global_rng"]
    if torch.cuda.is_available():
        out.append("triton")
    return out


def _dtype_id(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _cases():
    for op in OPS:
        for provider in _providers():
            if op == "copy" and provider != "torch":
                continue
            if provider == "compile_global_rng" and op not in NOISE_OPS:
                continue
            for shape in SHAPES:
                for dtype in DTYPES:
                    yield pytest.param(
                        op,
                        provider,
                        shape,
                        dtype,
                        id=f"{op}-{provider}-{'x'.join(map(str, shape))}-{_dtype_id(dtype)}",
                    )


def _bytes_floor(op: str, shape, dtype: torch.dtype, mask: torch.Tensor) -> int:
    n = shape[0] * shape[1] * shape[2] * torch.empty((), dtype=dtype).element_size()
    m = mask.numel() * mask.element_size()
    return {
        "copy": 2 * n,
        "add_noise": 2 * n + m,
        "noisy_copies": (1 + N_COPIES) * n + m,
        "pgd_step_l2": 7 * n + 2 * m,
        "pgd_step_linf": 5 * n + m,
    }[op]


def _global_rng_noise(x, sigma, mask, copies):
    shape = x.shape if copies is None else (copies, *x.shape)
    z = torch.randn(shape, device=x.device, dtype=torch.float32)
    return (x.float() + sigma * z * mask.unsqueeze(-1).float()).to(x.dtype)


def _make_call(op: str, provider: str, x, grad, delta, mask):
    if op == "copy":
        out = torch.empty_like(x)
        return lambda: out.copy_(x)
    kw = {
        "add_noise": lambda f: lambda: f.add_noise(x, 0.1, seed=1234, mask=mask),
        "noisy_copies": lambda f: lambda: f.noisy_copies(x, N_COPIES, 0.1, seed=1234, mask=mask),
        "pgd_step_l2": lambda f: (
            lambda: f.pgd_step(delta, grad, step_size=0.01, epsilon=0.1, norm="l2", mask=mask, embeds=x)
        ),
        "pgd_step_linf": lambda f: (
            lambda: f.pgd_step(delta, grad, step_size=0.01, epsilon=0.1, norm="linf", mask=mask, embeds=x)
        ),
    }
    if provider == "torch":
        return kw[op](reference)
    if provider == "torch_compile":

        class Compiled:
            add_noise = staticmethod(torch.compile(reference.add_noise, dynamic=False))
            noisy_copies = staticmethod(torch.compile(reference.noisy_copies, dynamic=False))
            pgd_step = staticmethod(torch.compile(reference.pgd_step, dynamic=False))

        return kw[op](Compiled)
    if provider == "compile_global_rng":
        fn = torch.compile(_global_rng_noise, dynamic=False)
        copies = None if op == "add_noise" else N_COPIES
        return lambda: fn(x, 0.1, mask, copies)
    if provider == "triton":

        def call():
            with ops.use_backend("triton"):
                return kw[op](ops)()

        return call
    raise AssertionError(provider)


@pytest.fixture(autouse=True, scope="module")
def _bench_settings():
    # One static graph per shape and dtype: more than dynamo's default recompile limit.
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    old_limit, old_threads = getattr(cfg, name), torch.get_num_threads()
    setattr(cfg, name, 256)
    threads = cpu_threads_for_timing()
    if threads is not None and not torch.cuda.is_available():
        torch.set_num_threads(threads)
    yield
    setattr(cfg, name, old_limit)
    torch.set_num_threads(old_threads)


@pytest.mark.parametrize("op, provider, shape, dtype", list(_cases()))
def test_op(benchmark, op, provider, shape, dtype, bench_dev, copy_gbps):
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(bench_dev, dtype)
    grad = torch.randn(shape, generator=gen).to(bench_dev, dtype)
    delta = (0.01 * torch.randn(shape, generator=gen)).to(bench_dev, dtype)
    mask = torch.ones(shape[:2], dtype=torch.long, device=bench_dev)
    call = _make_call(op, provider, x, grad, delta, mask)
    timed(benchmark, call, bench_dev, budget_s=0.5 if bench_dev.type == "cpu" else 1.0)
    record(
        benchmark,
        device=bench_dev,
        nbytes=_bytes_floor(op, shape, dtype, mask),
        copy_gbps=copy_gbps,
        op=op,
        provider=provider,
        shape="x".join(map(str, shape)),
        dtype=_dtype_id(dtype),
        peak_mem_mb=peak_memory_mb(call, bench_dev),
    )
