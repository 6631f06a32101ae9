"""The kernels compile for the project's GPUs (H100/H200: sm_90) even on a machine without one.

The interpreter runs the kernels' Python, not Triton's compiler: a kernel can pass every
interpreter test and still fail to lower. Here, in a subprocess without TRITON_INTERPRET,
every kernel variant the launch plans pick for an H100 (bf16 and fp32, hidden 768 and 1024,
every op and flag the methods use) is specialised by Triton's own JIT binder from the plan's
real arguments — the same signature, integer and alignment attributes a launch builds, so the
PTX is the PTX that runs (vector loads included) — and goes down to a cubin (ptxas ships with
triton). Nothing is launched. Checked per variant, from ``ptxas -v``:

* no register spills (spill stores/loads = 0). A stack frame without spills is local memory
  the code asked for — libdevice's precise sinf/cosf keep an array there for the Payne-Hanek
  reduction of huge arguments — so it is reported, not failed, for the precise Box-Muller;
  the fast (default) Gaussian path has no stack frame at all;
* the fast Gaussian path uses the approximate PTX transcendentals, no libdevice sin/cos;
* no 2-D tile changes register layout (a conversion goes through shared memory); the noise
  kernel holds one element per thread per tile so its loads, random-number arithmetic and
  stores share one layout;
* the loads of the PGD passes are vectorised (a launch that lost its divisibility/alignment
  attributes would load scalars).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernels


def _variants():
    """(name, launch) for every distinct variant the plans pick on an H100."""
    import torch
    from kernel_tools import variant_key

    from fastrobust.kernels import common, noise, pgd

    target = common.H100
    seen = {}
    for dtype in (torch.bfloat16, torch.float32):
        tag = "bf16" if dtype == torch.bfloat16 else "fp32"
        for hidden in (768, 1024):
            shape = (8, 128, hidden)

            def t(*s, dt=dtype):
                return torch.empty(s, device="meta", dtype=dt)

            x, out = t(*shape), t(*shape)
            mask, seed, sigma = t(8, 128, dt=torch.long), t(1, dt=torch.int64), t(8, dt=torch.float32)
            plans = {
                "noise-gauss-fast": noise.noise_launches(
                    x, shape, out, 0.1, seed, True, mask, 1, target=target
                ),
                "noise-gauss-precise": noise.noise_launches(
                    x, shape, out, 0.1, seed, True, mask, 1, target=target, fast_math=False
                ),
                "noise-unif-sigma_b": noise.noise_launches(
                    x, shape, out, sigma, 3, False, mask, 1, target=target
                ),
                "copies-gauss": noise.noise_launches(
                    x, shape, t(32, *shape), 0.1, 3, True, mask, 32, target=target
                ),
                "init": pgd.init_launches(x, 0.5, "l2", mask, seed, out, None, target=target),
                "init-next": pgd.init_launches(x, 0.5, "l2", mask, seed, out, out, target=target),
                "init-linf": pgd.init_launches(x, 0.5, "linf", None, 3, out, None, target=target),
            }
            for norm in ("l2", "linf"):
                for start in ("zero", "delta"):
                    for eps in (None, 0.5):
                        delta = None if start == "zero" else t(*shape, dt=torch.float32)
                        plans[f"step-{norm}-{start}-{'eps' if eps else 'noeps'}"] = pgd.step_launches(
                            delta, x, 0.1, eps, norm, mask, x, t(*shape), out, target=target
                        )
            for name, launches in plans.items():
                for launch in launches:
                    key = variant_key(launch)
                    if key not in seen:
                        kernel = launch.kernel.fn.__name__.strip("_").replace("_kernel", "")
                        seen[key] = (f"{name}-{kernel}-H{hidden}-{tag}", launch)
    return list(seen.values())


def _load_vector_bits(ptx: str) -> int:
    """The widest global load of the PTX in bits (0: scalar loads only)."""
    import re

    found = re.findall(r"ld\.global(?:\.[\w:]+)*?\.v(\d)\.b(16|32)", ptx)
    return max((int(n) * int(bits) for n, bits in found), default=0)


def _tile_conversions(ttgir: str) -> int:
    """Layout conversions of 2-D tiles (through shared memory; 1-D per-row vectors are cheap)."""
    import re

    return len(re.findall(r"ttg\.convert_layout %\S+ : tensor<\d+x\d+x", ttgir))


def compile_all(arch: int) -> list[str]:
    """Compile every variant for sm_<arch>; one report line per variant."""
    from kernel_tools import compile_launch, ptxas_usage

    lines = []
    for name, launch in _variants():
        compiled = compile_launch(launch, arch)
        ptx = compiled.asm["ptx"]
        use = ptxas_usage(ptx, arch)
        fields = dict(
            warps=launch.num_warps,
            regs=use["registers"],
            stack=use["stack"],
            spill_stores=use["spill_stores"],
            spill_loads=use["spill_loads"],
            tile_conversions=_tile_conversions(compiled.asm["ttgir"]),
            max_vector_load_bits=_load_vector_bits(ptx),
            approx=int("sin.approx" in ptx and "lg2.approx" in ptx),
            libdevice_trig=int("__nv_sinf" in ptx or "__internal_trig_reduction" in ptx),
        )
        lines.append(f"sm_{arch} {name}: " + " ".join(f"{k}={v}" for k, v in fields.items()))
    return lines


def _fields(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in line.split(": ", 1)[1].split())}


def test_kernels_compile_for_gpus_without_spills():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests compile and run every variant natively")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_kernels_compile as t\n"
    code += "print('\\n'.join(t.compile_all(90)))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("sm_")]
    print("\n".join(lines))
    assert len(lines) >= 20, proc.stdout
    for line in lines:
        f = _fields(line)
        assert f["spill_stores"] == 0 and f["spill_loads"] == 0, f"register spill: {line}"
        if "gauss-fast" in line or "copies-gauss" in line:
            assert f["approx"] == 1 and f["libdevice_trig"] == 0 and f["stack"] == 0, line
        elif "gauss-precise" in line:
            assert f["libdevice_trig"] == 1, line  # its stack frame, if any, is libdevice's
        else:
            assert f["stack"] == 0, f"unexpected local memory: {line}"
        assert f["tile_conversions"] == 0, f"a tile changes register layout (shared memory): {line}"
        if "update" in line or "reduce" in line:
            assert f["max_vector_load_bits"] >= 64, f"scalar loads in a real launch's PTX: {line}"
