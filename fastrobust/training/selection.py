"""Checkpoint selection on English dev: evaluate, remember the best parameters (on rank 0's CPU).

As in the paper, the model that is tested on every language is the one with the highest accuracy
on the training language's dev set; ties keep the earlier step.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from fastrobust.errors import DivergenceError
from fastrobust.training.compiled import eager
from fastrobust.training.distributed import DistContext
from fastrobust.training.guard import params_finite
from fastrobust.training.run import cpu_state, log

if TYPE_CHECKING:  # annotations only
    from torch.utils.tensorboard import SummaryWriter

    from fastrobust.training.engine import TrainEngine
    from fastrobust.training.run import RunContext


def dev_accuracy(
    module: torch.nn.Module,
    run: RunContext,
    dist: DistContext,
    autocast: contextlib.AbstractContextManager,
) -> float:
    """Accuracy of ``module`` on the training language's dev set; rank 0's number on every rank."""
    from fastrobust.evaluate import evaluate_dev  # datasets: not with this module

    task = run.task
    dev = task.dev[task.train_language]
    # Every rank evaluates (under ZeRO-3 each forward gathers shards collectively); rank 0's
    # number is broadcast so that all ranks take the same best-state decision.
    with autocast, eager(run.cfg.model.compile):
        acc = evaluate_dev(
            module,
            run.tokenizer,
            dev,
            max_length=run.cfg.model.max_length,
            batch_size=run.cfg.eval.batch_size,
            device=dist.device,
        )
    module.train()
    return dist.broadcast_float(float(acc))


def gather_state(
    module: torch.nn.Module, zero_stage: int, dist: DistContext
) -> dict[str, torch.Tensor] | None:
    """Full parameters on rank 0's CPU (None elsewhere); a collective under ZeRO-3."""
    if zero_stage == 3:
        import deepspeed  # optional: only ZeRO-3 runs need it installed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return cpu_state(module) if dist.is_main else None
    return cpu_state(module) if dist.is_main else None


class DevSelection:
    """English-dev history and the best parameters so far (restorable from a checkpoint)."""

    def __init__(self) -> None:
        self.best_acc = -math.inf
        self.best_step = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[list[float]] = []
        self.seconds = 0.0  # wall and process CPU time of the dev evaluations
        self.cpu_seconds = 0.0

    def evaluate(
        self, eng: TrainEngine, run: RunContext, step: int, label: str, writer: SummaryWriter | None
    ) -> None:
        """Evaluates ``eng``'s model (method ``label``) at ``step`` on the run's English dev set and
        keeps its parameters if best; the accuracy also goes to ``writer`` (rank 0's TensorBoard)."""
        dist = run.dist
        t0, c0 = time.perf_counter(), time.process_time()
        acc = dev_accuracy(eng.module, run, dist, eng.autocast())
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0
        self.history.append([step, acc])
        if acc > self.best_acc:
            state = gather_state(eng.module, eng.zero_stage, dist)
            # rank 0 holds the state; its verdict is every rank's (all raise, or none)
            if dist.broadcast_float(1.0 if state is None or params_finite(state) else 0.0) == 0.0:
                raise DivergenceError(
                    f"method {label} diverged: its weights at step {step} are not finite; "
                    "they are neither kept as the best model nor saved"
                )
            self.best_acc, self.best_step = acc, step
            self.best_state = state
        if writer is not None:
            writer.add_scalar("dev/accuracy", acc, step)
        log(
            dist,
            f"[{label}] step {step}: English dev accuracy {100 * acc:.2f}% "
            f"(best {100 * self.best_acc:.2f}% at step {self.best_step})",
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_acc": self.best_acc,
            "best_step": self.best_step,
            "dev_history": self.history,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_acc = float(state["best_acc"])
        self.best_step = int(state["best_step"])
        self.history = [list(x) for x in state["dev_history"]]
        self.seconds = float(state.get("seconds", 0.0))  # checkpoints without the times restore 0
        self.cpu_seconds = float(state.get("cpu_seconds", 0.0))
