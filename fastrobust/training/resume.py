"""Saving and restoring one method's training state (the folder layout is in :mod:`.checkpoint`).

A checkpoint holds the step, the data position (implied by the step), optimizer, scheduler and
scaler states (DeepSpeed: its own ``ds/`` shards), every random generator, the dev history and
best parameters, the losses and the throughput meter — enough for ``--resume`` to continue
bit-for-bit. A fingerprint of the config sections it depends on refuses a resume into a changed run.
Under ``--resume`` a run that already finished is read back from its folder instead
(:func:`skip_finished`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from fastrobust.errors import ConfigError
from fastrobust.evaluate.runs import read_run
from fastrobust.fileio import describe_os_error, writing
from fastrobust.training import checkpoint as ckpt
from fastrobust.training.final import FinishedRun
from fastrobust.training.run import log

if TYPE_CHECKING:  # annotations only
    from fastrobust.training.state import CheckpointedRun, FinishingRun

STATE_VERSION = 1


def trainer_state(t: CheckpointedRun) -> dict[str, Any]:
    """The picklable-free state of method trainer ``t`` (tensors, numbers, lists, dicts)."""
    sel = t.selection
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "step": t.step,
        "steps_per_epoch": t.run.steps_per_epoch,
        "total_steps": t.run.total_steps,
        "world_size": t.dist.world_size,
        "fingerprint": t.fingerprint,
        "rng": ckpt.rng_state(),
        "best_acc": sel.best_acc,
        "best_step": sel.best_step,
        "dev_history": sel.history,
        "losses": t.losses,
        "meter": t.meter.state_dict(),
    }
    if t.averager is not None:
        state["average"] = t.averager.state_dict()
    state.update(t.eng.state_dict())
    return state


def save_checkpoint(t: CheckpointedRun) -> Path | None:
    """Writes checkpoint ``step-N`` of trainer ``t`` atomically (a collective on every rank).

    A checkpoint is insurance, not a result: if a rank cannot write its part (disk full), the
    half-written ``.tmp`` folder is removed (its space is needed for the results), rank 0 prints one
    warning line, and training goes on. Returns the checkpoint's path, or None when it failed.
    """
    dist, eng = t.dist, t.eng
    name = ckpt.step_dir(t.ckpt_root, t.step).name + ".tmp"
    tmp = t.ckpt_root / name
    error = ""
    if dist.is_main:
        try:
            ckpt.begin(t.ckpt_root, t.step)
        except OSError as exc:
            error = describe_os_error(exc)
    # every rank learns whether rank 0 could create the folder before writing into it
    if dist.broadcast_float(1.0 if error else 0.0) == 0.0:
        if eng.engine is not None:
            try:
                with writing(tmp / "ds"):
                    eng.engine.save_checkpoint(str(tmp), tag="ds")
            except OSError as exc:
                error = describe_os_error(exc)
            dist.barrier()
        if dist.is_main and not error:
            try:
                _write_parts(t, tmp)
            except OSError as exc:
                error = describe_os_error(exc)
    failed = dist.all_reduce_max(torch.tensor([1.0 if error else 0.0])).item() > 0
    path = None
    if dist.is_main:
        if not failed:
            try:
                path = ckpt.commit(tmp, t.cfg.output.keep_checkpoints)
            except OSError as exc:
                error, failed = describe_os_error(exc), True
        if failed:
            shutil.rmtree(tmp, ignore_errors=True)
            print(
                f"[{t.label}] warning: checkpoint at step {t.step} not written "
                f"({error or 'another rank could not write its part'}); training goes on",
                flush=True,
            )
    dist.barrier()
    return path


def _write_parts(t: CheckpointedRun, tmp: Path) -> None:
    """Rank 0's files of a checkpoint into ``tmp``; a failed write is an OSError naming the file."""
    if t.eng.engine is None:
        with writing(tmp / ckpt.MODEL_FILE):
            save_model(t.eng.module, str(tmp / ckpt.MODEL_FILE))
    if t.selection.best_state is not None:
        with writing(tmp / ckpt.BEST_FILE):
            save_file(t.selection.best_state, str(tmp / ckpt.BEST_FILE))
    if t.averager is not None:
        with writing(tmp):
            t.averager.save(tmp)
    with writing(tmp / ckpt.STATE_FILE):
        ckpt.save_state(tmp / ckpt.STATE_FILE, trainer_state(t))


def load_checkpoint(t: CheckpointedRun, path: Path) -> None:
    """Restores trainer ``t`` from the complete checkpoint ``path``; ConfigError if it does not fit."""
    eng = t.eng
    state = ckpt.load_state(path / ckpt.STATE_FILE)
    if state.get("version") != STATE_VERSION:
        raise ConfigError(f"{path}: checkpoint format version {state.get('version')} is not supported")
    changed = [k for k, v in t.fingerprint.items() if state["fingerprint"].get(k) != v]
    if changed:
        raise ConfigError(
            f"--resume: {path} was written with a different {', '.join(changed)} "
            "(config or number of processes changed); start without --resume or restore them"
        )
    if eng.engine is not None:
        eng.engine.load_checkpoint(
            str(path), tag="ds", load_optimizer_states=True, load_lr_scheduler_states=True
        )
    else:
        load_model(eng.module, str(path / ckpt.MODEL_FILE), strict=True, device=str(t.device))
        eng.load_state_dict(state)
    t.step = int(state["step"])
    t.selection.load_state_dict(state)
    t.losses = list(state["losses"])
    t.meter.load_state_dict(state["meter"])
    if t.dist.is_main and (path / ckpt.BEST_FILE).is_file():
        t.selection.best_state = load_file(str(path / ckpt.BEST_FILE), device="cpu")
    if t.averager is not None:
        t.averager.load(path, state["average"], t.dist.is_main)
    ckpt.set_rng_state(state["rng"])
    t.resumed_from = t.step


def finished_run(t: FinishingRun) -> FinishedRun | None:
    """Rank 0: the run already finished on disk for run ``t`` (summary, report, predictions),
    or None. ``--resume`` skips such runs
    instead of training them again; a run that finished with another config (fingerprint) is
    a ConfigError, not retrained over (summaries written before fingerprints count as this run).
    """
    try:
        summary = json.loads((t.dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status", "complete") != "complete":
        return None
    theirs = summary.get("fingerprint")
    if isinstance(theirs, dict):
        changed = [k for k, v in t.fingerprint.items() if theirs.get(k) != v]
        if changed:
            raise ConfigError(
                f"--resume: {t.dir} holds a run finished with a different {', '.join(changed)}; "
                "pass --overwrite to replace it, or set output.dir to a new folder"
            )
    done = read_run(t.dir)
    if done is None:
        return None
    averaged = None
    if isinstance(summary.get("averaged"), dict):
        avg_dir = t.averaged_dir()
        avg_run = read_run(avg_dir)
        if avg_run is not None:
            avg_summary = json.loads((avg_dir / "summary.json").read_text(encoding="utf-8"))
            averaged = FinishedRun(avg_summary, avg_run.report, avg_run.predictions)
    return FinishedRun(summary, done.report, done.predictions, averaged)


def skip_finished(trainer: FinishingRun) -> tuple[bool, FinishedRun | None]:
    """Under --resume: whether this run already finished with this config (rank 0's decision,
    shared with every rank), and on rank 0 the finished run read back from its folder."""
    dist = trainer.dist
    done, refused = None, None
    if dist.is_main:
        try:
            done = finished_run(trainer)
        except ConfigError as exc:  # every rank must stop, not only rank 0
            refused = exc
    code = dist.broadcast_float(2.0 if refused is not None else 1.0 if done is not None else 0.0)
    if code > 1.5:
        raise refused or ConfigError(f"--resume: {trainer.dir} holds a run finished with another config")
    if code < 0.5:
        return False, None
    log(dist, f"[{trainer.label}] seed {trainer.seed}: finished run in {trainer.dir}, skipped (--resume)")
    if done is not None:
        done.summary["skipped"] = True
    return True, done
