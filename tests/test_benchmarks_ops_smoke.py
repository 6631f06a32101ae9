"""The ops benchmark file runs end to end in smoke mode (one small shape per provider, no
torch.compile), so benchmark code cannot rot. Speed is never asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_ops_smoke_mode_passes():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTROBUST_BACKEND")}
    env["FASTROBUST_BENCH_SMOKE"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/bench_ops.py",
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
    assert " passed" in proc.stdout and "failed" not in proc.stdout
