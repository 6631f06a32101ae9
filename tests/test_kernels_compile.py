"""The kernels compile for the project's GPUs (H100/H200: sm_90) even on a machine without one.

The interpreter runs the kernels' Python, not Triton's compiler: a kernel can pass every
interpreter test and still fail to lower. Here, in a subprocess without TRITON_INTERPRET,
each kernel variant the launchers can pick goes through Triton's full pipeline down to a
cubin (ptxas ships with triton), and no variant may spill registers. Nothing is launched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernels


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    return int(re.search(r"REG:(\d+)", out).group(1)), int(re.search(r"STACK:(\d+)", out).group(1))


def _variants():
    """(name, kernel, signature, constexprs, num_warps) for the variants the launchers pick."""
    from fastrobust.kernels import common, noise, pgd

    noise_sig = dict(
        x_ptr="*bf16", out_ptr="*bf16", sigma_ptr="*fp32", mask_ptr="*i64", sigma="fp32", seed="i32",
        n_rows="i32", n_row_blocks="i32", n_copies="i32", copies_per_program="i32", seq_len="i32",
        hidden="i32", quarter="i32", stride_b="i64", stride_l="i64",
    )  # fmt: skip
    for hidden in (768, 1024):
        block_q = common.pick_quarter_block(hidden // 4)
        block_r = max(1, common.tile_elements() // (4 * block_q))
        warps = common.warps_for(block_r * 4 * block_q)
        for gaussian in (True, False):
            for has_x in (True, False):
                yield (
                    f"noise-H{hidden}-{'gauss' if gaussian else 'unif'}-{'x' if has_x else 'init'}",
                    noise._noise_kernel,
                    noise_sig,
                    dict(HAS_X=has_x, SIGMA_PER_EXAMPLE=not has_x, HAS_MASK=True, GAUSSIAN=gaussian,
                         WIDE_COUNTER=hidden == 1024, BLOCK_R=block_r, BLOCK_Q=block_q),
                    warps,
                )  # fmt: skip
    block_h = common.pick_column_block(768)
    block_r = max(1, common.tile_elements() // block_h)
    warps = common.warps_for(block_r * block_h)
    yield (
        "pgd-reduce",
        pgd._pgd_reduce_kernel,
        dict(delta_ptr="*fp32", grad_ptr="*bf16", mask_ptr="*i1", partial_ptr="*fp32", seq_len="i32",
             hidden="i32", rows_per_split="i32", d_stride_b="i64", d_stride_l="i32", g_stride_b="i64",
             g_stride_l="i32"),
        dict(HAS_MASK=True, N_SPLIT=16, BLOCK_R=block_r, BLOCK_H=block_h),
        warps,
    )  # fmt: skip
    update_sig = dict(
        delta_ptr="*fp32", grad_ptr="*bf16", embeds_ptr="*bf16", mask_ptr="*i64", partial_ptr="*fp32",
        new_delta_ptr="*fp32", next_ptr="*bf16", step_size="fp32", epsilon="fp32", n_rows="i32",
        seq_len="i32", hidden="i32", d_stride_b="i64", d_stride_l="i32", g_stride_b="i64",
        g_stride_l="i32", e_stride_b="i64", e_stride_l="i32",
    )  # fmt: skip
    for linf in (False, True):
        for has_eps in (False, True):
            split = 1 if linf else 16
            yield (
                f"pgd-update-{'linf' if linf else 'l2'}-{'eps' if has_eps else 'noeps'}",
                pgd._pgd_update_kernel,
                update_sig,
                dict(LINF=linf, HAS_EPS=has_eps, HAS_MASK=True, HAS_EMBEDS=True, N_SPLIT=split,
                     SPLIT_P2=split, BLOCK_R=block_r, BLOCK_H=block_h),
                warps,
            )  # fmt: skip


def compile_all(arch: int) -> list[str]:
    """Compile every variant for sm_<arch>; return one report line per variant."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    lines = []
    for name, kernel, sig, consts, warps in _variants():
        signature = {a: ("constexpr" if a in consts else sig[a]) for a in kernel.arg_names}
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=consts),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": warps},
        )
        regs, stack = _resource_usage(compiled.asm["cubin"])
        lines.append(f"sm_{arch} {name}: warps={warps} regs={regs} stack={stack}")
    return lines


def test_kernels_compile_for_gpus_without_spills():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests compile and run every variant natively")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_kernels_compile as t\n"
    code += "print('\\n'.join(t.compile_all(90)))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("sm_")]
    assert len(lines) == 13, proc.stdout
    for line in lines:
        assert line.endswith("stack=0"), f"register spill: {line}"
    print("\n".join(lines))
