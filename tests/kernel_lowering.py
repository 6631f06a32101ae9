"""Lower every kernel variant the launch plans pick for an H100 to an sm_90 cubin, and check it.

``python tests/kernel_lowering.py [--arch 90] [--tuning FILE] [--expect-triton 3.6.0]`` prints
one line per variant and a verdict; exit status 0 when every check passes (``--dry-run``: the
variants are listed, not compiled: the CPU dry run of ``benchmarks/gpu/run.sh``). It runs with
whatever Triton the interpreter has: the project's (tests/test_kernels_compile.py), the GPU
image's 3.6 in a throwaway environment here (``make lower-device-triton``), or the GPU
machine's own (first thing ``benchmarks/gpu/run.sh`` does). No GPU is needed and nothing is
launched; TRITON_INTERPRET must be unset.

The interpreter runs the kernels' Python, not Triton's compiler: a kernel can pass every
interpreter test and still fail to lower. Here every kernel variant the launch plans pick for an
H100 (bf16 and fp32, hidden 768 and 1024, every op and flag the methods use; ``--tuning``: with
that tuning file's tiles) is specialised by Triton's own JIT binder from the plan's real
arguments — the same signature, integer and alignment attributes a launch builds, so the PTX is
the PTX that runs (vector loads included) — and goes down to a cubin (ptxas ships with triton).
Checked per variant, from ``ptxas -v``:

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

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # kernel_tools, when run as a script
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # fastrobust from this checkout

MIN_VARIANTS = 20


def variants(tuning=None) -> list[tuple[str, object]]:
    """(name, launch) for every distinct variant the plans pick on an H100."""
    import torch
    from kernel_tools import variant_key

    from fastrobust.kernels import common, noise, pgd

    target = common.H100
    kw = dict(target=target, tuning=tuning)
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
                "noise-gauss-fast": noise.noise_launches(x, shape, out, 0.1, seed, True, mask, 1, **kw),
                "noise-gauss-precise": noise.noise_launches(
                    x, shape, out, 0.1, seed, True, mask, 1, fast_math=False, **kw
                ),
                "noise-unif": noise.noise_launches(x, shape, out, 0.1, seed, False, mask, 1, **kw),
                "noise-unif-sigma_b": noise.noise_launches(x, shape, out, sigma, 3, False, mask, 1, **kw),
                "copies-gauss": noise.noise_launches(x, shape, t(32, *shape), 0.1, 3, True, mask, 32, **kw),
                "init": pgd.init_launches(x, 0.5, "l2", mask, seed, out, None, **kw),
                "init-next": pgd.init_launches(x, 0.5, "l2", mask, seed, out, out, **kw),
                "init-linf": pgd.init_launches(x, 0.5, "linf", None, 3, out, None, **kw),
            }
            for norm in ("l2", "linf"):
                for start in ("zero", "delta"):
                    for eps in (None, 0.5):
                        delta = None if start == "zero" else t(*shape, dt=torch.float32)
                        plans[f"step-{norm}-{start}-{'eps' if eps else 'noeps'}"] = pgd.step_launches(
                            delta, x, 0.1, eps, norm, mask, x, t(*shape), out, **kw
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
    found = re.findall(r"ld\.global(?:\.[\w:]+)*?\.v(\d)\.b(16|32)", ptx)
    return max((int(n) * int(bits) for n, bits in found), default=0)


def _tile_conversions(ttgir: str) -> int:
    """Layout conversions of 2-D tiles (through shared memory; 1-D per-row vectors are cheap)."""
    return len(re.findall(r"ttg\.convert_layout %\S+ : tensor<\d+x\d+x", ttgir))


def compile_all(arch: int, tuning=None) -> list[str]:
    """Compile every variant for sm_<arch>; one report line per variant."""
    from kernel_tools import compile_launch, ptxas_usage

    lines = []
    for name, launch in variants(tuning):
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


def fields(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in line.split(": ", 1)[1].split())}


def problems(line: str) -> list[str]:
    """What is wrong with one variant's report line (empty: every check passes)."""
    f = fields(line)
    out = []
    if f["spill_stores"] or f["spill_loads"]:
        out.append("register spill")
    if "gauss-fast" in line or "copies-gauss" in line:
        if not (f["approx"] == 1 and f["libdevice_trig"] == 0 and f["stack"] == 0):
            out.append("fast Gaussian path not on the approximate PTX functions")
    elif "gauss-precise" in line:
        if f["libdevice_trig"] != 1:  # its stack frame, if any, is libdevice's
            out.append("precise Gaussian path without libdevice sin/cos")
    elif f["stack"]:
        out.append("unexpected local memory")
    if f["tile_conversions"]:
        out.append("a tile changes register layout (shared memory)")
    if ("update" in line or "reduce" in line) and f["max_vector_load_bits"] < 64:
        out.append("scalar loads in a real launch's PTX")
    return out


def summary(lines: list[str]) -> list[str]:
    """Verdict lines: counts, register ranges per kernel, every failed check."""
    import triton

    bad = [(line, p) for line in lines for p in problems(line)]
    regs: dict[str, list[int]] = {}
    for line in lines:
        kernel = "noise" if "-noise-" in line else ("reduce" if "pgd_reduce" in line else "update")
        regs.setdefault(kernel, []).append(fields(line)["regs"])
    out = [
        f"triton {triton.__version__}: {len(lines)} variants lowered to cubins; "
        + ", ".join(f"{k} {min(v)}-{max(v)} registers" for k, v in regs.items())
        + f"; spills {sum(fields(x)['spill_stores'] + fields(x)['spill_loads'] for x in lines)} bytes"
    ]
    if len(lines) < MIN_VARIANTS:
        out.append(f"FAILED: only {len(lines)} variants (expected >= {MIN_VARIANTS})")
    out += [f"FAILED: {p}: {line}" for line, p in bad]
    out.append("lowering: FAILED" if len(out) > 1 else "lowering: ok")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--tuning", default=None, help="a tuning JSON file, or an ops.jsonl with a sweep winner")
    p.add_argument("--expect-triton", default=None, help="fail unless this Triton version is imported")
    p.add_argument("--dry-run", action="store_true", help="list the variants, compile nothing")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("TRITON_INTERPRET=1 is set: the kernels would be interpreted, not lowered")
    import triton

    from fastrobust.kernels import common

    if args.expect_triton and triton.__version__ != args.expect_triton:
        print(f"lowering: FAILED: triton {triton.__version__} imported, {args.expect_triton} expected")
        return 1
    tuning = common.load_tuning(args.tuning) if args.tuning else None
    t0 = time.perf_counter()
    if args.dry_run:
        names = [name for name, _ in variants(tuning)]
        print("\n".join(f"sm_{args.arch} {name}: not compiled (dry run)" for name in names))
        print(f"triton {triton.__version__}: {len(names)} variants listed, none lowered (dry run)")
        print("lowering: dry run")
        return 0
    lines = compile_all(args.arch, tuning)
    print("\n".join(lines))
    verdict = summary(lines)
    verdict[0] += f" ({time.perf_counter() - t0:.0f} s)"
    print("\n".join(verdict))
    return 0 if verdict[-1] == "lowering: ok" else 1


if __name__ == "__main__":
    sys.exit(main())
