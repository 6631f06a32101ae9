"""Every benchmark file runs end to end in smoke mode (one small shape per provider, no long
compiles), so benchmark code cannot rot. Speed is never asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_benchmark_file(path: str, *, drop: tuple[str, ...], **env_updates: str) -> str:
    """Runs ``pytest <path> --benchmark-enable`` in smoke mode in a fresh process; returns stdout.

    ``drop``: variables of this test process not to pass on (e.g. TRITON_INTERPRET, which the
    benchmark process must decide for itself before importing torch)."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(FASTROBUST_BENCH_SMOKE="1", **env_updates)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider", "--benchmark-enable"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bench_ops_smoke_mode_passes() -> None:
    stdout = _run_benchmark_file("benchmarks/bench_ops.py", drop=("TRITON_INTERPRET", "FASTROBUST_BACKEND"))
    assert " passed" in stdout and "failed" not in stdout


def test_bench_train_step_smoke_mode_passes(tmp_path: Path) -> None:
    stdout = _run_benchmark_file(
        "benchmarks/bench_train_step.py",
        drop=("TRITON_INTERPRET",),
        FASTROBUST_BENCH_OUT=str(tmp_path),
        FASTROBUST_BACKEND="torch",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    assert "4 passed" in stdout and "failed" not in stdout
    table = (tmp_path / "train_step.md").read_text()
    for method in ("baseline", "rs-rp", "pgd-k1", "freelb-k2"):
        assert f"| {method} |" in table
