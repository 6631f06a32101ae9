"""Every benchmark file runs end to end in smoke mode (one small shape per provider, no long
compiles), so benchmark code cannot rot. Speed is never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    stdout = _run_benchmark_file(
        "benchmarks/speed/bench_ops.py", drop=("TRITON_INTERPRET", "FASTROBUST_BACKEND")
    )
    assert " passed" in stdout and "failed" not in stdout


def test_bench_train_step_smoke_mode_passes(tmp_path: Path) -> None:
    stdout = _run_benchmark_file(
        "benchmarks/speed/bench_train_step.py",
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


def _run_script(args: list[str], tmp_path: Path, timeout: int = 300, **env_updates: str) -> str:
    """Runs a benchmark script (not through pytest) in a fresh process; returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTROBUST_BACKEND")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", **env_updates)
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow  # ~25 s: the Triton interpreter runs every kernel variant of the grid
def test_ops_cuda_grid_runs_end_to_end_on_cpu_through_the_interpreter(tmp_path: Path) -> None:
    """The CUDA grid's code path (cases, inputs, floors, the three providers' calls, the correctness
    check, JSONL, summary) with a host clock and the Triton interpreter: only the timers differ on a GPU."""
    out = tmp_path / "ops.jsonl"
    ops = "copy,add_noise,pgd_init,pgd_step_l2+e,pgd_step_linf"
    script = "benchmarks/speed/bench_ops.py"
    _run_script(
        [
            sys.executable,
            script,
            "--smoke",
            "--shapes",
            "2x8x32",
            "--dtypes",
            "bf16",
            "--ops",
            ops,
            "--out",
            str(out),
        ],
        tmp_path,
        TRITON_INTERPRET="1",
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    results = [r for r in records if r["kind"] == "result"]
    assert not [r for r in results if "error" in r]
    seen = {(r["op"], r["mask"], r["provider"]) for r in results}
    for op in ops.split(",")[1:]:
        for mask in ("full", "padded"):
            assert {(op, mask, "eager"), (op, mask, "triton")} <= seen
    assert all(r["check"] == "ok" for r in results if r["provider"] == "triton")
    assert records[-1]["kind"] == "end"
    text = _run_script([sys.executable, script, "--summary", str(out)], tmp_path)
    assert "| pgd_step_l2+e | bf16 | padded |" in text and "CPU clock" in text


@pytest.mark.slow  # ~30 s: transformers, datasets and a tokenizer trained for RS-DA's epoch cost
def test_train_step_grid_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    _run_script(
        [
            sys.executable,
            "benchmarks/speed/bench_train_step.py",
            "--smoke",
            "--methods",
            "baseline,rs-da,pgd-k1",
        ]
        + ["--out", str(out)],
        tmp_path,
        FASTROBUST_BACKEND="torch",
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    rows = {r["method"]: r for r in records if r["kind"] == "row"}
    assert set(rows) == {"baseline", "rs-da", "pgd-k1"}
    assert rows["pgd-k1"]["target"] == 2.1 and rows["pgd-k1"]["split"]["perturbation"] > 0
    assert all(r["ratio"] > 0 and r["rounds"] >= 2 for r in rows.values())
    (epoch,) = [r for r in records if r["kind"] == "rsda_epoch"]
    assert epoch["substitute_s_per_example"] > 0 and epoch["tokenize_s_per_example"] > 0


def test_gpu_run_script_sets_up_and_summarises_without_a_gpu(tmp_path: Path) -> None:
    """run.sh's setup (fastrobust importable from the checkout, environment report), its stage
    bookkeeping and its summary, with a stage name that does not exist (no stage runs)."""
    stdout = _run_script(
        ["bash", "benchmarks/gpu/run.sh", "nosuchstage"],
        tmp_path,
        RUN_CPU="1",
        OUT=str(tmp_path / "out"),
        PYTHON=sys.executable,
    )
    assert "fastrobust from" in stdout and "unknown stage 'nosuchstage'" in stdout
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| nosuchstage | unknown stage | 0 |" in summary
