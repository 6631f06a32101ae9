"""The kernels compile for the project's GPUs (H100/H200: sm_90) even on a machine without one:
every variant the launch plans pick, lowered to a cubin and checked (no spills, no layout
conversions of tiles, vector loads, the fast Gaussian path) by ``tests/kernel_lowering.py``,
in a subprocess without TRITON_INTERPRET.

With the project's Triton always; with the GPU image's Triton (3.6) too when its throwaway
environment exists (``make lower-device-triton`` builds it, ~1.6 GB; or
FASTROBUST_DEVICE_TRITON_PYTHON names its interpreter).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernels

ROOT = Path(__file__).resolve().parents[1]
DEVICE_TRITON = "3.6.0"  # the GPU machines' image (shared ENV notes)
DEVICE_PYTHON = Path(
    os.environ.get(
        "FASTROBUST_DEVICE_TRITON_PYTHON",
        Path.home() / ".cache" / "fastrobust" / f"triton-{DEVICE_TRITON}-venv" / "bin" / "python",
    )
)


def _lower(python: str, *extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [python, str(ROOT / "tests" / "kernel_lowering.py"), "--arch", "90", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "lowering: ok"
    return [line for line in lines if line.startswith("sm_")]


def _skip_on_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests compile and run every variant natively")


def test_kernels_compile_for_gpus_without_spills():
    _skip_on_gpu()
    lines = _lower(sys.executable)
    assert len(lines) >= 20
    assert any("noise-unif-noise" in line for line in lines)  # uniform noise is its own variant


@pytest.mark.skipif(not DEVICE_PYTHON.is_file(), reason="no Triton 3.6 environment: make lower-device-triton")
def test_kernels_compile_with_the_gpu_images_triton():
    _skip_on_gpu()
    assert len(_lower(str(DEVICE_PYTHON), "--expect-triton", DEVICE_TRITON)) >= 20
