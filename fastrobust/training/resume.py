"""Saving and restoring one method's training state (the folder layout is in :mod:`.checkpoint`).

A checkpoint holds the step, the data position (implied by the step), optimizer, scheduler and
scaler states (DeepSpeed: its own ``ds/`` shards), every random generator, the dev history and
best parameters, the losses and the throughput meter — enough for ``--resume`` to continue
bit-for-bit. A fingerprint of the config sections it depends on refuses a resume into a changed run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from fastrobust.errors import ConfigError
from fastrobust.fileio import describe_os_error, writing
from fastrobust.training import checkpoint as ckpt

if TYPE_CHECKING:  # the loop imports this module: a runtime import would be a circle
    from fastrobust.training.loop import MethodTrainer

STATE_VERSION = 1


def trainer_state(t: MethodTrainer) -> dict[str, Any]:
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


def save_checkpoint(t: MethodTrainer) -> Path | None:
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


def _write_parts(t: MethodTrainer, tmp: Path) -> None:
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


def load_checkpoint(t: MethodTrainer, path: Path) -> None:
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
