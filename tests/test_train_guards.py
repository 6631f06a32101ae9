"""Training runs that never lie and never lose work: used output folders, head re-initialisation,
divergence, interruptions, full disks."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from fastrobust.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def overrides(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "seeds=null",  # one run per method (the demo config underneath lists 3 seeds)
        "parallel=1",
        "task.name=pawsx",
        f"task.path={data}",
        "task.languages=[en, de]",
        "task.gxlt=false",
        f"model.name_or_path={model}",
        "model.max_length=32",
        "methods=[{kind: baseline}]",
        "optim.batch_size=8",
        "optim.max_steps=2",
        "optim.learning_rate=1e-3",
        "output.log_every=1",
        f"output.dir={out}",
        *extra,
    ]


def test_a_used_output_folder_is_refused_unless_resume_or_overwrite(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path
) -> None:
    from cli_run import run_cli

    from fastrobust.training import train

    data, model = tiny_pawsx
    out = tmp_path / "run"
    train(
        None,
        overrides(data, model, out, "output.checkpoint_every=1", "output.keep_finished_checkpoints=true"),
    )
    summary = out / "baseline" / "summary.json"
    before = summary.read_bytes()
    stamp = summary.stat().st_mtime_ns
    # the real command: one line, exit 2, nothing touched
    args = [x for o in overrides(data, model, out) for x in ("--set", o)]
    res = run_cli("train", *args)
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = res.stderr.strip().splitlines()
    assert f"output.dir: {out} already holds results of baseline (finished)" in line
    assert "--resume" in line and "--overwrite" in line
    assert summary.read_bytes() == before and summary.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (out / "baseline" / "checkpoints").iterdir()) == [
        "step-000001",
        "step-000002",
    ]
    # another method may share the folder
    train(None, overrides(data, model, out, "methods=[{kind: rs-rp, sigma: 0.1}]"))
    assert summary.read_bytes() == before
    # --overwrite replaces the method's folder as a whole (no old checkpoints or events remain)
    (out / "baseline" / "stale.txt").write_text("from the first run")
    train(None, overrides(data, model, out, "seed=3"), overwrite=True)
    assert not (out / "baseline" / "stale.txt").exists()
    assert not (out / "baseline" / "checkpoints" / "step-000001").exists()
    assert json.loads(summary.read_text())["losses"] != json.loads(before)["losses"]
    with pytest.raises(ConfigError, match="choose one"):
        train(None, overrides(data, model, out), overwrite=True, resume=True)


def test_a_head_of_another_label_count_is_reinitialised_with_a_warning(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastrobust.training import train

    data, model = tiny_pawsx
    three = tmp_path / "nli_model"
    AutoModelForSequenceClassification.from_pretrained(model, num_labels=3).save_pretrained(three)
    AutoTokenizer.from_pretrained(model).save_pretrained(three)
    result = train(None, overrides(data, three, tmp_path / "out"))
    printed = capsys.readouterr().out
    assert (
        f"warning: model.name_or_path: {three} has a 3-label classification head but task pawsx has "
        "2 labels; the head is re-initialised" in printed
    )
    assert result["methods"]["baseline"]["steps"] == 2


# ---- divergence ----------------------------------------------------------------------------------


def test_guard_counts_runs_of_bad_steps_whatever_the_check_cadence() -> None:
    from fastrobust.errors import DivergenceError
    from fastrobust.training.distributed import DistContext
    from fastrobust.training.guard import DivergenceGuard

    dist = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), deepspeed=False)
    guard = DivergenceGuard(patience=2, device=torch.device("cpu"), label="m")
    for bad in (1, 1, 0, 1, 1, 0):  # runs of 2: within patience
        guard.observe(torch.tensor(bool(bad)))
    guard.check(6, dist)
    assert guard.skipped == 4
    for bad in (1, 1, 1, 0, 0):  # a run of 3 ended before the check: still seen
        guard.observe(torch.tensor(bool(bad)))
    with pytest.raises(DivergenceError, match=r"3 optimizer steps in a row .*_patience = 2; 7 in all"):
        guard.check(11, dist)


@pytest.mark.parametrize("fused", [False, True])
def test_a_non_finite_step_is_skipped(
    tiny_pawsx: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, fused: bool
) -> None:
    """Parameters and optimizer state stay as they were: unfused AdamW (the CPU's) by reading the
    flag, fused AdamW (CUDA's, forced here on the CPU) by found_inf on the device."""
    from fastrobust.training import engine

    monkeypatch.setattr(engine, "use_fused", lambda device: fused)
    from types import SimpleNamespace

    from transformers import AutoModelForSequenceClassification

    from fastrobust.config import load_config
    from fastrobust.training.distributed import DistContext
    from fastrobust.training.engine import TrainEngine

    _, model_dir = tiny_pawsx
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    cfg = load_config(None, ["optim.max_grad_norm=1.0", "optim.weight_decay=0.01"])
    dist = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), deepspeed=False)
    run = SimpleNamespace(cfg=cfg, dist=dist, accum=1, ds_raw=None, warmup_steps=0, total_steps=10, micro=2)
    eng = TrainEngine(model, run, backward_calls=1)
    assert eng.fused == fused and eng.optimizer.param_groups[0]["fused"] == (fused or None)
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 13, 3]])

    def step(poison: bool) -> torch.Tensor:
        out = model(input_ids=ids, labels=torch.tensor([0, 1]))
        loss = out.loss * (float("nan") if poison else 1.0)
        loss.backward()
        return eng.optimizer_step(loss.detach())[1]

    assert not bool(step(False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in eng.optimizer.state[next(model.parameters())].items()}
    assert bool(step(True))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in eng.optimizer.state[next(model.parameters())].items():
        assert torch.equal(v, state[k]), k  # step count, exp_avg, exp_avg_sq: untouched
    assert not bool(step(False)) and not torch.equal(
        model.state_dict()["classifier.weight"], before["classifier.weight"]
    )


def test_a_diverging_run_stops_and_saves_nothing_as_a_result(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path
) -> None:
    from cli_run import run_cli

    data, model = tiny_pawsx
    out = tmp_path / "run"
    sets = overrides(
        data,
        model,
        out,
        "methods=[{kind: baseline}, {kind: rs-rp, sigma: 0.1}]",
        "optim.learning_rate=1e30",  # finite, accepted by the schema, and certain to blow up
        "optim.max_steps=12",
        "optim.nonfinite_patience=3",
        "output.log_every=4",
        "eval.every_steps=4",
    )
    res = run_cli("train", *(x for o in sets for x in ("--set", o)))
    assert res.returncode == 3, res.stderr[-3000:]
    (line,) = res.stderr.strip().splitlines()[-1:]
    assert (
        line.startswith("fastrobust train: error: method baseline diverged: ")
        and "method rs-rp diverged" in line
    )
    assert "optim.nonfinite_patience = 3" in line and "lower optim.learning_rate (now 1e+30)" in line
    for label in ("baseline", "rs-rp"):  # the second method was still tried after the first diverged
        assert f"[{label}] error: method {label} diverged" in res.stdout
        assert not (out / label / "summary.json").exists() and not (out / label / "model").exists()
    assert not (out / "comparison.md").exists()


# ---- interruptions and full disks ----------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_writes_a_checkpoint_and_exits_128_plus_signum(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path, sig: int, code: int
) -> None:
    from cli_run import cli_env, entry_point

    from fastrobust.training import checkpoint as ckpt

    data, model = tiny_pawsx
    out = tmp_path / "run"
    sets = overrides(data, model, out, "optim.max_steps=100000", "eval.every_steps=3", "output.log_every=50")
    proc = subprocess.Popen(
        [entry_point(), "train", *(x for o in sets for x in ("--set", o))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        for line in proc.stdout:  # training is under way once the first dev evaluation is printed
            if "English dev accuracy" in line:
                break
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    name = signal.Signals(sig).name
    assert last.startswith(f"fastrobust train: error: {name}: method baseline stopped at step "), last
    assert last.endswith("written; continue with --resume"), last
    found = ckpt.complete_checkpoints(out / "baseline" / "checkpoints")
    assert len(found) == 1
    step, path = found[0]
    assert f"stopped at step {step}/100000; checkpoint {path} written" in last
    assert ckpt.load_state(path / ckpt.STATE_FILE)["step"] == step >= 3
    assert not (out / "baseline" / "summary.json").exists()


def _train_until(args: list[str], marker: str, sig: int) -> tuple[int, str, str]:
    """Starts ``fastrobust train ARGS``, sends ``sig`` once a stdout line contains ``marker``;
    (exit code, stdout up to then + rest, stderr)."""
    from cli_run import cli_env, entry_point

    proc = subprocess.Popen(
        [entry_point(), "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                break
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, "".join(seen) + stdout, stderr


@pytest.mark.slow  # three CLI processes, ~20 s
def test_after_sigterm_a_plain_rerun_is_refused_and_resume_continues(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGTERM: one line naming the checkpoint and --resume; the same command again is refused with
    one line (exit 2, nothing touched); with --resume it continues from that checkpoint's step."""
    from cli_run import run_cli

    from fastrobust.training import checkpoint as ckpt

    data, model = tiny_pawsx
    out = tmp_path / "run"
    sets = overrides(data, model, out, "optim.max_steps=100000", "eval.every_steps=3", "output.log_every=50")
    args = [x for o in sets for x in ("--set", o)]
    code, _, stderr = _train_until(args, "English dev accuracy", signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    (step, path), *_ = ckpt.complete_checkpoints(out / "baseline" / "checkpoints")
    last = stderr.strip().splitlines()[-1]
    assert f"checkpoint {path} written; continue with --resume" in last, last

    res = run_cli("train", *args)
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = res.stderr.strip().splitlines()
    assert f"output.dir: {out} already holds results of baseline" in line and "--resume" in line, line
    assert [p for _, p in ckpt.complete_checkpoints(out / "baseline" / "checkpoints")] == [path]

    code, stdout, stderr = _train_until([*args, "--resume"], "English dev accuracy", signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    assert f"[baseline] resumed from {path} (step {step}/100000)" in stdout
    later = max(s for s, _ in ckpt.complete_checkpoints(out / "baseline" / "checkpoints"))
    assert later > step  # it trained on from the checkpoint, and wrote a newer one when stopped
    assert f"stopped at step {later}/100000" in stderr.strip().splitlines()[-1]


def test_a_full_disk_costs_no_finished_result(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers.modeling_utils

    from fastrobust.errors import OutputError
    from fastrobust.training import train

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", args[1] if len(args) > 1 else None)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    data, model = tiny_pawsx
    out = tmp_path / "run"
    with pytest.raises(OutputError) as info:
        train(None, overrides(data, model, out, "output.checkpoint_every=1"))
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert f"cannot write {out / 'baseline' / 'model'}: No space left on device [errno 28]" in msg
    assert f"the results were saved to {out / 'baseline' / 'summary.json'}" in msg
    rescued = json.loads((out / "baseline" / "summary.json").read_text())
    assert rescued["status"].startswith("incomplete: cannot write") and rescued["report"]["xlt"]["de"] >= 0
    assert (out / "baseline" / "report" / "report.json").is_file()  # written before the model
    assert not (out / "baseline" / "model").exists()  # no half-written model folder
    assert not [p.name for p in (out / "baseline").iterdir() if p.name.startswith(".")]
    # checkpoints are insurance; the ones before the failure stay usable for --resume
    assert (out / "baseline" / "checkpoints" / "step-000001" / "COMPLETE").is_file()


def test_no_model_and_no_checkpoint_when_neither_is_asked_for(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from fastrobust.training import train

    data, model = tiny_pawsx
    out = tmp_path / "run"
    # the defaults checkpoint every 10 minutes of training: a short run writes none, and no final one
    train(None, overrides(data, model, out, "output.save_model=false", "output.tensorboard=false"))
    assert sorted(p.name for p in (out / "baseline").iterdir()) == ["report", "summary.json"]
    files = json.loads((out / "baseline" / "summary.json").read_text())["files"]
    assert files["model"] is None and files["checkpoints"] is None and files["tensorboard"] is None
    printed = capsys.readouterr().out
    assert (
        f"Files: {out}/comparison.md|json|csv|png; per run {out}/<method>/{{report/, summary.json}}"
        in printed
    )
    # checkpoints switched off entirely
    out2 = tmp_path / "run2"
    train(None, overrides(data, model, out2, "output.checkpoint_minutes=null", "output.tensorboard=false"))
    assert sorted(p.name for p in (out2 / "baseline").iterdir()) == ["model", "report", "summary.json"]
    assert f"per run {out2}/<method>/{{report/, summary.json, model/}}" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a host synchronisation exists only with a GPU")
def test_a_step_with_the_guard_never_synchronises_the_host() -> None:
    """optimizer_step + observe on CUDA under ``set_sync_debug_mode("error")``: any .item(), bool()
    or device-to-host copy would raise. A poisoned step is skipped on the device all the same."""
    from types import SimpleNamespace

    from fastrobust.training.distributed import DistContext
    from fastrobust.training.engine import TrainEngine
    from fastrobust.training.guard import DivergenceGuard

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)).to(device)
    optim = SimpleNamespace(
        learning_rate=1e-3, weight_decay=0.01, adam_epsilon=1e-8, scheduler="linear", max_grad_norm=1.0
    )
    cfg = SimpleNamespace(model=SimpleNamespace(precision="fp32"), optim=optim)
    dist = DistContext(rank=0, world_size=1, local_rank=0, device=device, deepspeed=False)
    run = SimpleNamespace(cfg=cfg, dist=dist, accum=1, ds_raw=None, warmup_steps=0, total_steps=100, micro=8)
    eng = TrainEngine(model, run, backward_calls=1)
    guard = DivergenceGuard(patience=2, device=device, label="m")
    x, y = torch.randn(8, 16, device=device), torch.randint(0, 2, (8,), device=device)
    nan = torch.tensor(float("nan"), device=device)

    def step(poison: bool) -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if poison:
            loss = loss * nan
        loss.backward()
        guard.observe(eng.optimizer_step(loss.detach())[1])

    step(False)  # the optimizer allocates its state on the first step
    torch.cuda.synchronize()
    before = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(False)
        before = [p.detach().clone() for p in model.parameters()]
        step(True)
        after_poison = [p.detach().clone() for p in model.parameters()]
        step(False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.equal(a, b) for a, b in zip(before, after_poison))
    guard.check(4, dist)
    assert guard.skipped == 1


def test_non_finite_weights_are_never_kept_as_the_best(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from fastrobust.errors import DivergenceError
    from fastrobust.training import selection
    from fastrobust.training.distributed import DistContext

    dist = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), deepspeed=False)
    weights = {"w": torch.ones(3)}
    monkeypatch.setattr(selection, "dev_accuracy", lambda *a, **k: 0.9)
    monkeypatch.setattr(selection, "gather_state", lambda *a, **k: {k: v.clone() for k, v in weights.items()})
    eng = SimpleNamespace(module=None, zero_stage=0, autocast=lambda: None)
    run = SimpleNamespace(dist=dist)
    sel = selection.DevSelection()
    sel.evaluate(eng, run, 4, "m", writer=None)
    assert sel.best_step == 4 and torch.equal(sel.best_state["w"], torch.ones(3))
    weights["w"][1] = float("inf")
    monkeypatch.setattr(selection, "dev_accuracy", lambda *a, **k: 0.95)  # "better", but not finite
    with pytest.raises(DivergenceError, match="weights at step 8 are not finite"):
        sel.evaluate(eng, run, 8, "m", writer=None)
    assert sel.best_step == 4 and torch.equal(sel.best_state["w"], torch.ones(3))


def test_checkpoints_follow_the_clock(tiny_pawsx: tuple[Path, Path], tmp_path: Path) -> None:
    from fastrobust.training import checkpoint as ckpt
    from fastrobust.training import train

    data, model = tiny_pawsx
    out = tmp_path / "run"
    # a minute of 60 microseconds: every step is "due"; no step cadence, so no final checkpoint
    sets = ["optim.max_steps=3", "output.checkpoint_minutes=1e-6", "output.keep_checkpoints=5"]
    sets.append("output.keep_finished_checkpoints=true")
    train(None, overrides(data, model, out, *sets))
    assert [s for s, _ in ckpt.complete_checkpoints(out / "baseline" / "checkpoints")] == [1, 2]
    out = tmp_path / "never"
    train(None, overrides(data, model, out, "optim.max_steps=3"))  # 10 minutes: not reached
    assert not (out / "baseline" / "checkpoints").exists()
