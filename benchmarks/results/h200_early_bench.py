# ruff: noqa
# Archived record: the exact script behind h200-2026-11-30-before-issue12.json. It calls the
# launchers of main at f21e921 (before issue 12 changed their signatures) and is kept as run, not maintained.
"""Early GPU look at the CURRENT (pre-issue-12) kernels: CUDA-event medians with L2 flush.

Launchers are called directly (no backend switch inside the timed region). Prints a table and
writes JSON to $OUT/early_bench.json. Bytes floor: noise 2N, copies (1+n)N, init N (write),
step L2 5N (read d, g, e; write d', e+d'), Linf 5N, L2 without embeds 3N.
"""

import json
import os

import torch
import triton
from triton.testing import do_bench

from fastrobust import reference as ref
from fastrobust.kernels import noise as kn
from fastrobust.kernels import pgd as kp

dev = torch.device("cuda")
out_rows = []


def bench(fn):
    return do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e-3


# big-copy yardstick
n = 2 * 1024**3 // 4
a = torch.empty(n, device=dev).uniform_()
b = torch.empty_like(a)
t = bench(lambda: b.copy_(a))
big_copy = 2 * n * 4 / t / 1e9
print(f"copy 2 GiB: {big_copy:.0f} GB/s")
del a, b
torch.cuda.empty_cache()

for shape in [(8, 128, 768), (32, 128, 768), (32, 512, 1024)]:
    B, L, H = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    for dt in [torch.float32, torch.bfloat16]:
        s = torch.empty((), dtype=dt).element_size()
        N = B * L * H
        x = torch.randn(shape, generator=g).to(dev, dt)
        gr = torch.randn(shape, generator=g).to(dev, dt)
        d = (0.01 * torch.randn(shape, generator=g)).to(dev, dt)
        for padded in (False, True):
            if padded:
                lens = torch.randint(L // 2, L + 1, (B,), generator=g)
                mask = (torch.arange(L)[None] < lens[:, None]).long().to(dev)
            else:
                mask = torch.ones(B, L, dtype=torch.long, device=dev)
            o = torch.empty_like(x)
            cp = 2 * N * s / bench(lambda: o.copy_(x)) / 1e9
            cases = {
                "add_noise_gauss": (
                    2 * N * s,
                    lambda: kn.noise_forward(x, 0.1, 123, "gaussian", mask, None),
                    lambda: ref._apply_noise(x, 0.1, 123, "gaussian", mask, None),
                ),
                "add_noise_unif": (
                    2 * N * s,
                    lambda: kn.noise_forward(x, 0.1, 123, "uniform", mask, None),
                    lambda: ref._apply_noise(x, 0.1, 123, "uniform", mask, None),
                ),
                "noisy_copies4": (
                    5 * N * s,
                    lambda: kn.noise_forward(x, 0.1, 123, "gaussian", mask, 4),
                    lambda: ref._apply_noise(x, 0.1, 123, "gaussian", mask, 4),
                ),
                "noisy_copies32": (
                    33 * N * s,
                    lambda: kn.noise_forward(x, 0.1, 123, "gaussian", mask, 32),
                    lambda: ref._apply_noise(x, 0.1, 123, "gaussian", mask, 32),
                ),
                "pgd_init_l2": (
                    N * s,
                    lambda: kp.pgd_init_forward(x, 0.1, "l2", mask, 5),
                    lambda: ref._pgd_init(x, 0.1, "l2", mask, 5),
                ),
                "pgd_step_l2_emb": (
                    5 * N * s,
                    lambda: kp.pgd_step_forward(d, gr, 0.01, 0.1, "l2", mask, x),
                    lambda: ref._pgd_step(d, gr, 0.01, 0.1, "l2", mask, x),
                ),
                "pgd_step_l2": (
                    3 * N * s,
                    lambda: kp.pgd_step_forward(d, gr, 0.01, 0.1, "l2", mask, None),
                    lambda: ref._pgd_step(d, gr, 0.01, 0.1, "l2", mask, None),
                ),
                "pgd_step_linf_emb": (
                    5 * N * s,
                    lambda: kp.pgd_step_forward(d, gr, 0.01, 0.1, "linf", mask, x),
                    lambda: ref._pgd_step(d, gr, 0.01, 0.1, "linf", mask, x),
                ),
            }
            for name, (floor, tri, eag) in cases.items():
                if name == "noisy_copies32" and N * 33 * s > 8e9:
                    continue
                try:
                    tt = bench(tri)
                    te = bench(eag)
                except Exception as e:  # noqa
                    print("FAIL", name, shape, dt, repr(e)[:200])
                    continue
                row = dict(
                    op=name,
                    shape="x".join(map(str, shape)),
                    dtype=str(dt).split(".")[-1],
                    padded=padded,
                    triton_us=tt * 1e6,
                    eager_us=te * 1e6,
                    speedup=te / tt,
                    floor_MB=floor / 1e6,
                    triton_GBs=floor / tt / 1e9,
                    copy_GBs=cp,
                    frac_copy=floor / tt / 1e9 / cp,
                )
                out_rows.append(row)
                print(
                    f"{name:18s} {row['shape']:12s} {row['dtype']:8s} pad={int(padded)} triton {tt * 1e6:8.1f}us "
                    f"eager {te * 1e6:8.1f}us x{te / tt:5.2f} {row['triton_GBs']:6.0f} GB/s = {row['frac_copy']:.2f} of copy({cp:.0f})",
                    flush=True,
                )
json.dump(
    dict(
        big_copy_GBs=big_copy,
        rows=out_rows,
        torch=torch.__version__,
        triton=triton.__version__,
        gpu=torch.cuda.get_device_name(),
    ),
    open(os.path.join(os.environ.get("OUT", "."), "early_bench.json"), "w"),
    indent=1,
)
