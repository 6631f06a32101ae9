"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during ``--parallel 2``:
every worker stops after its step with a checkpoint, and the command ends at once with exit 130,
one announcement and one error line (it used to hang with a traceback from the pool's thread)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_run import cli_env, without_warnings

from fastrobust.training import checkpoint as ckpt


def _start(data: Path, model: Path, out: Path) -> subprocess.Popen:
    args = [
        "--set", "task.name=pawsx", "--set", "task.source=local", "--set", f"task.path={data}",
        "--set", f"model.name_or_path={model}", "--set", "model.max_length=32",
        "--set", "task.languages=[en, de, fr]", "--set", "methods=[{kind: baseline}]",
        "--set", "optim.batch_size=8",
        "--set", "optim.max_steps=100000", "--set", "eval.every_steps=100000",
        "--set", "eval.gxlt=false", "--set", "output.checkpoint_every=20",
        "--set", "output.save_model=false", "--set", "output.tensorboard=false",
        "--set", f"output.dir={out}",
    ]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "fastrobust", "train", "--seeds", "0,1", "--parallel", "2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        start_new_session=True,  # its own process group, like a shell's foreground job
    )


@pytest.mark.slow
def test_ctrl_c_stops_a_parallel_run_at_once_with_resumable_checkpoints(tiny_pawsx, tmp_path: Path) -> None:
    data, model = tiny_pawsx
    out = tmp_path / "out"
    proc = _start(data, model, out)
    roots = [out / "baseline" / f"seed-{s}" / "checkpoints" for s in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not all(ckpt.latest(r) for r in roots):  # both workers are training
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert took < 20, took  # a tiny model stops in ~5 s (it used to hang for minutes)
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 2, stderr
    assert lines[0].startswith(
        "fastrobust: SIGINT received; the 2 running run(s) stop after their current step"
    )
    assert lines[1].startswith("fastrobust train: error: SIGINT: 0 of 2 run(s) finished; method baseline")
    assert lines[1].count("written; continue with --resume") == 2
    steps = [ckpt.complete_checkpoints(r)[-1][0] for r in roots]
    assert all(s > 0 for s in steps) and "Traceback" not in stdout + stderr


def _children(pid: int) -> list[int]:
    """The worker processes of ``pid`` (its children running fastrobust's worker, by /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"multiprocessing.spawn" in cmdline:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_others_with_one_line(tiny_pawsx, tmp_path: Path) -> None:
    data, model = tiny_pawsx
    out = tmp_path / "out"
    proc = _start(data, model, out)
    roots = [out / "baseline" / f"seed-{s}" / "checkpoints" for s in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not all(ckpt.latest(r) for r in roots):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        t0 = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)  # e.g. the out-of-memory killer
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, stderr
    assert took < 20, took
    # (less the resource tracker's warning about the semaphore the killed process never released)
    lines = [x for x in without_warnings(stderr).splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    (line,) = lines
    assert line == "fastrobust train: error: a worker process ended without a result (exit code -9)"
    assert "[parallel] the other runs were stopped: method baseline stopped at step" in stdout
    assert "written; continue with --resume" in stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_survives_the_trip_back_from_a_worker(signum: int) -> None:
    import pickle

    from fastrobust.errors import Interrupted

    back = pickle.loads(pickle.dumps(Interrupted("stopped at step 3", signum)))
    assert (str(back), back.signum, back.exit_code) == ("stopped at step 3", signum, 128 + signum)
