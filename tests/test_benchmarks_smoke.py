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


RESULT_FILES = {
    "tests.log",
    "ops.log",
    "ops.jsonl",
    "train.log",
    "train.jsonl",
    "ds.log",
    "ds.json",
    "summary.md",
}
DRY_OPS = (
    "add_noise",
    "add_noise_uniform",
    "noisy_copies_n4",
    "pgd_init",
    "pgd_step_l2+e",
    "pgd_step_linf+e",
)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow  # ~45 s on 2 busy cores (~30 s of CPU): five Python processes import torch
def test_gpu_run_script_dry_run_returns_every_file_and_summary(tmp_path: Path) -> None:
    """DRY_RUN=1 benchmarks/gpu/run.sh: the GPU run's control flow end to end on this CPU — every
    stage's own entry point (lowering, test collection despite import errors, the ops grid's passes
    with both timer names, compiled and Triton providers and their checks, the tile sweep and its
    winner, a training-step group with floors, the DeepSpeed material and report), the 8 result
    files and the summary. Only the measurements are stand-ins."""
    out = tmp_path / "out"
    stdout = _run_script(
        ["bash", "benchmarks/gpu/run.sh"],
        tmp_path,
        timeout=600,
        DRY_RUN="1",
        OUT=str(out),
        PYTHON=sys.executable,
    )
    assert "DRY RUN" in stdout and "fastrobust from" in stdout
    for stage in ("tests", "ops", "train", "ds"):
        assert f"| {stage} | ok |" in stdout, stdout[-3000:]
    assert {p.name for p in out.iterdir()} == RESULT_FILES
    assert "lowering: dry run" in stdout and " tests collected" in stdout

    ops = _jsonl(out / "ops.jsonl")
    kinds = [r["kind"] for r in ops]
    assert kinds[:2] == ["meta", "plan"] and kinds[-2:] == ["compile", "end"] and "budget" not in kinds
    (plan,), (compiled,) = [r for r in ops if r["kind"] == "plan"], [r for r in ops if r["kind"] == "compile"]
    assert compiled["graphs_built"] == compiled["graphs_expected"] == plan["compile_graphs"] > 0
    results = [r for r in ops if r["kind"] == "result"]
    assert not [r for r in results if "error" in r] and {r["timer"] for r in results} == {"events", "graph"}
    seen = {(r["op"], r["mask"], r["provider"]) for r in results if r["timer"] == "events"}
    for op in DRY_OPS:
        for mask in ("full", "padded"):
            assert {(op, mask, p) for p in ("eager", "compile", "triton")} <= seen, (op, mask)
    assert all(r["check"] == "ok" for r in results if r["provider"] == "triton" and r["timer"] == "events")
    assert {t: sum(r["timer"] == t for r in results) for t in ("events", "graph")} == plan["timings"]
    sweep = [r for r in ops if r["kind"] == "sweep"]
    assert {r["field"] for r in sweep} >= {"default", "pgd_reduce_tile", "pgd_max_split", "noise_warps"}
    assert all(r.get("check", "ok") == "ok" for r in sweep)
    (winner,) = [r for r in ops if r["kind"] == "sweep_winner"]
    from fastrobust.kernels import common

    common.Tuning.from_dict(winner)  # what FASTROBUST_KERNEL_TUNING=ops.jsonl reads
    assert common._tuning_file(str(out / "ops.jsonl")) == common.Tuning(**winner["winner"])

    rows = {r["method"]: r for r in _jsonl(out / "train.jsonl") if r["kind"] == "row"}
    assert set(rows) == {"baseline", "rs-rp", "pgd-k1", "freelb-k2"}
    assert rows["pgd-k1"]["floor"] == pytest.approx(5 / 3, abs=1e-3) and rows["freelb-k2"]["floor"] == 2.0

    ds = json.loads((out / "ds.json").read_text())
    assert [r["zero_stage"] for r in ds["runs"][:2]] == [2, 3] and all(r["ok"] for r in ds["runs"])
    assert all(r["steady_step_s"] == pytest.approx(0.1) for r in ds["runs"])  # the stand-in's 0.1 s
    summary = (out / "summary.md").read_text()
    for heading in ("Kernel lowering", "## Kernels", "### Tile sweep", "## Training step", "## DeepSpeed"):
        assert heading in summary
