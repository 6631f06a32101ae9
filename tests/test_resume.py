"""Kill a training process after its first checkpoint, resume it, and get the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

LABEL = "pgd"


def _config(tmp: Path, data: Path, model: Path) -> Path:
    cfg = tmp / "resume.yaml"
    cfg.write_text(
        f"""
name: resume
seed: 5
model: {{name_or_path: {model}, max_length: 32}}
task: {{name: pawsx, source: local, path: {data}, languages: [en, de], gxlt: true}}
# PGD with a random start: dropout, the random start and the data order all depend on the seeds
methods: [{{kind: pgd, steps: 2, init_magnitude: 0.2, epsilon: 1.0, step_size: 0.5}}]
optim: {{learning_rate: 2.0e-3, batch_size: 8, micro_batch_size: 4, epochs: 3, warmup_ratio: 0.1}}
eval: {{every_steps: 4}}
output: {{checkpoint_every: 4, keep_checkpoints: 3, keep_finished_checkpoints: true, log_every: 2}}
"""
    )
    return cfg


def _cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fastrobust",
        "train",
        "--config",
        str(cfg),
        "--set",
        f"output.dir={out}",
        *extra,
    ]


def _env() -> dict[str, str]:
    # One intra-op thread: tiny matrices gain nothing from two, and on a shared 2-core machine
    # OpenMP's spin-waiting makes a busy second thread cost up to 40x.
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FASTROBUST_BACKEND="torch",
        OMP_NUM_THREADS="1",
    )


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tiny_pawsx: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = tiny_pawsx
    cfg = _config(tmp_path, data, model)
    full, cut = tmp_path / "full", tmp_path / "cut"

    subprocess.run(_cmd(cfg, full), check=True, env=_env(), timeout=300, capture_output=True)

    proc = subprocess.Popen(_cmd(cfg, cut), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = cut / LABEL / "checkpoints" / "step-000004" / "COMPLETE"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert first.exists(), "the run never wrote its first checkpoint"
    assert not (cut / LABEL / "summary.json").exists(), "the run finished before it could be killed"

    # A half-written newer checkpoint (no COMPLETE marker) and a .tmp folder must be ignored.
    ckpts = cut / LABEL / "checkpoints"
    half = ckpts / "step-000020"
    half.mkdir(exist_ok=True)
    (half / "trainer_state.pt").write_bytes(b"not a checkpoint")
    (ckpts / "step-000024.tmp").mkdir(exist_ok=True)
    complete = sorted(p.name for p in ckpts.iterdir() if (p / "COMPLETE").exists())

    resumed = subprocess.run(
        _cmd(cfg, cut, "--resume"), env=_env(), timeout=300, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpts / complete[-1]}" in resumed.stdout

    a = json.loads((full / LABEL / "summary.json").read_text())
    b = json.loads((cut / LABEL / "summary.json").read_text())
    assert b["resumed_from_step"] == int(complete[-1].split("-")[1]) < a["steps"]
    assert a["steps"] == b["steps"] == 24
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-6)
    assert b["dev_history"] == a["dev_history"]
    assert (b["best_step"], b["best_dev_accuracy"]) == (a["best_step"], a["best_dev_accuracy"])
    assert b["averages"] == a["averages"] and b["xlt"] == a["xlt"]
    pa = load_file(str(full / LABEL / "model" / "model.safetensors"))
    pb = load_file(str(cut / LABEL / "model" / "model.safetensors"))
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], rtol=0, atol=1e-6, msg=k)
    # the final checkpoints of both runs hold the same last-step parameters (not only the best ones)
    fa = load_file(str(full / LABEL / "checkpoints" / "step-000024" / "model.safetensors"))
    fb = load_file(str(ckpts / "step-000024" / "model.safetensors"))
    for k in fa:
        torch.testing.assert_close(fb[k], fa[k], rtol=0, atol=1e-6, msg=k)
