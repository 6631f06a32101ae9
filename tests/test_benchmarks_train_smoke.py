"""The training-step benchmark runs end to end in smoke mode (tiny shape, four methods, one round),
so benchmark code cannot rot. Speed is never asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_step_smoke_mode_passes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    env.update(FASTROBUST_BENCH_SMOKE="1", FASTROBUST_BENCH_OUT=str(tmp_path), FASTROBUST_BACKEND="torch")
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/bench_train_step.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-enable",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 passed" in proc.stdout and "failed" not in proc.stdout
    table = (tmp_path / "train_step.md").read_text()
    for method in ("baseline", "rs-rp", "pgd-k1", "freelb-k2"):
        assert f"| {method} |" in table
