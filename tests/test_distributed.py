"""DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU ranks (gloo) reproduce the single-process run.

The single-process reference runs plain torch with micro-batch 4 and 2 accumulation steps; the
2-rank runs use micro-batch 4 per rank, no accumulation — the same global batch of 8. Because the
data order and every micro-batch's random seed depend on (step, global micro-batch index) only
(fastrobust.training.batches), dropout, RS-RP noise and PGD/FreeLB random starts are identical, and
losses and final parameters agree up to floating-point summation order.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from cli_run import check_exit, distributed_env, without_warnings
from safetensors.torch import load_file

from fastrobust.training.distributed import free_port, init_distributed

METHODS = ["baseline", "rs-rp", "pgd", "freelb"]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _config(tmp: Path, data: Path, model: Path) -> Path:
    cfg = tmp / "dist.yaml"
    cfg.write_text(
        f"""
name: dist
seed: 1
model: {{name_or_path: {model}, max_length: 32}}
task: {{name: pawsx, source: local, path: {data}, languages: [en, de], gxlt: false}}
methods:
  - {{kind: baseline}}
  - {{kind: rs-rp, sigma: 0.5}}
  - {{kind: pgd, steps: 2, init_magnitude: 0.2}}
  - {{kind: freelb, steps: 2, init_magnitude: 0.2}}
optim: {{learning_rate: 2.0e-3, batch_size: 8, micro_batch_size: 4, max_steps: 4, warmup_ratio: 0.25}}
# one dev evaluation, at the end: the saved (best) model is the final one
eval: {{every_steps: 4}}
output: {{log_every: 1, tensorboard: false}}
"""
    )
    return cfg


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, env=distributed_env(), cwd=ROOT, timeout=600, capture_output=True, text=True)
    check_exit(proc, " ".join(cmd[:3]))


def _compare(ref: Path, other: Path, init_dir: Path) -> None:
    for m in METHODS:
        a = json.loads((ref / m / "summary.json").read_text())
        b = json.loads((other / m / "summary.json").read_text())
        assert b["world_size"] == 2 and b["deepspeed"] is not None
        assert len(a["losses"]) == len(b["losses"]) == 4
        assert b["losses"] == pytest.approx(a["losses"], abs=1e-5), m
        assert b["dev_history"] == a["dev_history"], m
        pa = load_file(str(ref / m / "model" / "model.safetensors"))
        pb = load_file(str(other / m / "model" / "model.safetensors"))
        assert pa.keys() == pb.keys()
        for k in pa:
            torch.testing.assert_close(pb[k], pa[k], rtol=0, atol=1e-5, msg=f"{m}: {k}")
        # the 4 updates moved the parameters: the comparison is not between two initial models
        init = load_file(str(init_dir / "model.safetensors"))
        key = "bert.embeddings.word_embeddings.weight"
        assert not torch.allclose(pa[key], init[key], atol=1e-4), m


@pytest.mark.distributed
@pytest.mark.slow
def test_zero2_and_zero3_on_two_ranks_match_single_process(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path
) -> None:
    data, model = tiny_pawsx
    cfg = _config(tmp_path, data, model)
    single, z2, z3 = tmp_path / "single", tmp_path / "z2", tmp_path / "z3"
    train = ["train", "--config", str(cfg)]
    # weight averaging on the single-process and the ZeRO-2 runs (ZeRO-3 refuses it)
    average = ["--set", "average={start: 0.5, every_steps: 1}"]
    _run([sys.executable, "-m", "fastrobust", *train, *average, "--set", f"output.dir={single}"])
    # ZeRO-2 under torchrun
    _run(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "fastrobust",
            *train,
            "--deepspeed",
            "configs/ds/zero2.json",
            *average,
            "--set",
            f"output.dir={z2}",
        ]
    )
    _compare(single, z2, model)
    for m in METHODS:  # the averaged models of the two runs agree too (snapshots at steps 2, 3, 4)
        a = load_file(str(single / f"{m}+avg" / "model" / "model.safetensors"))
        b = load_file(str(z2 / f"{m}+avg" / "model" / "model.safetensors"))
        assert json.loads((z2 / f"{m}+avg" / "summary.json").read_text())["averaged"]["snapshots"] == 3
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=f"{m}+avg: {k}")
    # ZeRO-3 under the deepspeed launcher (which passes --local_rank before the subcommand)
    _run(
        [
            str(BIN / "deepspeed"),
            "--num_accelerators",
            "2",
            "--master_port",
            str(free_port()),
            "--module",
            "fastrobust",
            *train,
            "--deepspeed",
            "configs/ds/zero3.json",
            "--set",
            f"output.dir={z3}",
        ]
    )
    _compare(single, z3, model)


@pytest.mark.distributed
def test_deepspeed_in_a_plain_process_needs_no_launcher(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path
) -> None:
    """``fastrobust train --deepspeed`` without a launcher sets up a 1-rank world (no MPI discovery)."""
    data, model = tiny_pawsx
    cfg = _config(tmp_path, data, model)
    out = tmp_path / "one"
    env = {
        k: v
        for k, v in distributed_env().items()
        if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastrobust",
            "train",
            "--config",
            str(cfg),
            "--method",
            "baseline",
            "--deepspeed",
            "ds/zero2.json",
            "--set",
            f"output.dir={out}",
            "--set",
            "optim.max_steps=2",
        ],
        env=env,
        cwd=tmp_path,
        timeout=600,
        capture_output=True,
        text=True,
    )
    check_exit(proc, "fastrobust train --deepspeed (one plain process)")
    s = json.loads((out / "baseline" / "summary.json").read_text())
    assert s["world_size"] == 1 and s["deepspeed"]["zero_stage"] == 2 and s["grad_accum"] == 2


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_resume_equals_uninterrupted(tiny_pawsx: tuple[Path, Path], tmp_path: Path) -> None:
    """A 2-rank ZeRO-3 run resumed from its step-2 checkpoint ends like the uninterrupted run."""
    data, model = tiny_pawsx
    cfg = _config(tmp_path, data, model)
    out = tmp_path / "z3r"
    sets = [
        "output.checkpoint_every=2",
        "output.keep_checkpoints=3",
        "output.keep_finished_checkpoints=true",
        "eval.every_steps=2",
        f"output.dir={out}",
    ]

    def cmd(*extra: str) -> list[str]:
        launch = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]
        args = ["--config", str(cfg), "--method", "pgd", "--deepspeed", "configs/ds/zero3.json"]
        return [*launch, "-m", "fastrobust", "train", *args, *(x for s in sets for x in ("--set", s)), *extra]

    _run(cmd())
    full = json.loads((out / "pgd" / "summary.json").read_text())
    full_params = load_file(str(out / "pgd" / "model" / "model.safetensors"))
    ckpts = out / "pgd" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000004"]
    # forget everything after step 2, as if the job had died there
    import shutil

    shutil.rmtree(ckpts / "step-000004")
    (out / "pgd" / "summary.json").unlink()
    _run(cmd("--resume"))
    again = json.loads((out / "pgd" / "summary.json").read_text())
    assert again["resumed_from_step"] == 2
    assert again["losses"] == pytest.approx(full["losses"], abs=1e-6)
    assert again["dev_history"] == full["dev_history"] and again["best_step"] == full["best_step"]
    params = load_file(str(out / "pgd" / "model" / "model.safetensors"))
    for k in full_params:
        torch.testing.assert_close(params[k], full_params[k], rtol=0, atol=1e-6, msg=k)


def test_close_leaves_a_callers_group_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process group made before ``init_distributed`` is the caller's: ``close`` waits at its
    barrier and leaves it alive; a context that made its own group ends it."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ctx = init_distributed(use_deepspeed=False)
        assert not ctx.owns_group and ctx.distributed
        ctx.close()
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
    own = dataclasses.replace(ctx, owns_group=True)
    dist.init_process_group("gloo", rank=0, world_size=1)
    own.close()
    assert not dist.is_initialized()


def test_failure_report_keeps_the_error_and_drops_warnings() -> None:
    """What a failed child prints in a test report: Python's warning pairs go, everything else stays."""
    err = (
        "/x/c10d_logger.py:83: FutureWarning: `all_gather_into_tensor` is deprecated.\n"
        "  return func(*args, **kwargs)\n"
        "terminate called after throwing an instance of 'gloo::IoException'\n"
        "  what():  Connection closed by peer\n"
    )
    assert without_warnings(err).splitlines() == [
        "terminate called after throwing an instance of 'gloo::IoException'",
        "  what():  Connection closed by peer",
    ]
