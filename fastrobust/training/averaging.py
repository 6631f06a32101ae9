"""Weight averaging during fine-tuning: a uniform running average of snapshots of the trainable
weights (stochastic weight averaging; checkpoint averaging for cross-lingual transfer).

With snapshots ``theta_1 .. theta_n`` of the trainable parameters taken at the steps of the
schedule (:class:`fastrobust.config.AverageConfig`: ``s0, s0 + every_steps, ...`` up to the last
step), the averaged model is ``theta_avg = (1/n) sum_k theta_k`` on the trainable parameters and
the final model's values everywhere else (frozen base weights under LoRA, buffers). The update is
``torch.optim.swa_utils.get_swa_multi_avg_fn()`` (``avg += (theta - avg) / (n + 1)``), applied to
fp32 CPU copies held by rank 0, so the average costs one copy of the trainable weights in host
memory and nothing on the accelerator.

The average and its count are part of the training checkpoint (``average.safetensors`` and the
trainer state), so a resumed run reaches the same averaged weights. Snapshots are gathered like
the best-on-dev state (:func:`fastrobust.training.selection.gather_state`): full parameters under
plain torch and DeepSpeed ZeRO-2; ZeRO-3 (partitioned parameters) is refused before training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import get_swa_multi_avg_fn

from fastrobust.config import AverageConfig
from fastrobust.errors import ConfigError

FILE_NAME = "average.safetensors"
SUFFIX = "+avg"


def averaged_label(label: str) -> str:
    """The label of a run's averaged evaluation: ``<label>+avg``."""
    return label + SUFFIX


def schedule(cfg: AverageConfig, total_steps: int) -> list[int]:
    """The optimizer steps (1-based, after the step) at which a snapshot enters the average."""
    if total_steps < 1:
        raise ConfigError("average: the run has no optimizer step, so no snapshot can be taken")
    first = max(1, math.ceil(cfg.start * total_steps))
    return list(range(first, total_steps + 1, cfg.every_steps))


def check_supported(zero_stage: int | None) -> None:
    """Weight averaging needs full parameters on rank 0 at every snapshot: refused under ZeRO-3."""
    if zero_stage == 3:
        raise ConfigError(
            "average: weight averaging is not supported under DeepSpeed ZeRO-3 (parameters are "
            "partitioned); use ZeRO-2 or no DeepSpeed, or set average: null"
        )


class WeightAverage:
    """The running average of the trainable weights ``names`` (rank 0 holds the tensors)."""

    def __init__(self, cfg: AverageConfig, total_steps: int, names: list[str]) -> None:
        self.cfg = cfg
        self.steps = schedule(cfg, total_steps)
        self.names = list(names)
        self.count = 0
        self.taken: list[int] = []
        self.avg: dict[str, torch.Tensor] | None = None
        self._update = get_swa_multi_avg_fn()

    def due(self, step: int) -> bool:
        return step in self.steps and step not in self.taken

    def add(self, step: int, state: dict[str, torch.Tensor] | None) -> None:
        """Adds the snapshot ``state`` (a CPU state dict on rank 0; None on the other ranks)."""
        self.taken.append(step)
        self.count += 1
        if state is None:
            return
        current = [state[n].detach().to(torch.float32) for n in self.names]
        if self.avg is None:
            self.avg = {n: t.clone() for n, t in zip(self.names, current, strict=True)}
            return
        # the update of torch.optim.swa_utils: avg <- avg + (theta - avg) / (count_before + 1)
        self._update([self.avg[n] for n in self.names], current, self.count - 1)

    def snapshot(self, step: int, module: torch.nn.Module, is_main: bool) -> None:
        """Adds ``module``'s current trainable weights at ``step`` (rank 0 copies them to the CPU;
        the other ranks only count the snapshot)."""
        state = None
        if is_main:
            wanted = set(self.names)
            state = {n: p.detach().to("cpu", copy=True) for n, p in module.named_parameters() if n in wanted}
        self.add(step, state)

    def averaged_state(self, final: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The final state with the trainable entries replaced by their averages (in the final
        state's dtypes); ConfigError when no snapshot was taken."""
        if self.avg is None or self.count == 0:
            raise ConfigError("average: no snapshot was taken, so there is no averaged model")
        out = dict(final)
        for n in self.names:
            out[n] = self.avg[n].to(final[n].dtype)
        return out

    def describe(self) -> dict[str, Any]:
        """What the averaged model is, for summaries and model cards."""
        return {
            "start": self.cfg.start,
            "every_steps": self.cfg.every_steps,
            "snapshots": self.count,
            "first_step": self.taken[0] if self.taken else None,
            "last_step": self.taken[-1] if self.taken else None,
            "parameters": len(self.names),
        }

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "taken": list(self.taken)}

    def save(self, folder: Path) -> None:
        """Rank 0: the averaged tensors into ``folder/average.safetensors`` (when any)."""
        if self.avg is not None:
            save_file({n: t.contiguous() for n, t in self.avg.items()}, str(folder / FILE_NAME))

    def load(self, folder: Path, state: dict[str, Any], is_main: bool) -> None:
        """Restores the count, the steps taken and (rank 0) the averaged tensors."""
        self.count = int(state["count"])
        self.taken = [int(s) for s in state["taken"]]
        path = folder / FILE_NAME
        if is_main and self.count:
            if not path.is_file():
                raise ConfigError(f"--resume: {path} is missing (the checkpoint's weight average)")
            tensors = load_file(str(path), device="cpu")
            missing = sorted(set(self.names) - set(tensors))
            if missing:
                raise ConfigError(f"--resume: {path} lacks the average of {missing[0]}")
            self.avg = {n: tensors[n] for n in self.names}


def trainable_names(module: torch.nn.Module, state_keys: set[str] | None = None) -> list[str]:
    """Names of the trainable parameters of ``module`` (as its state dict names them)."""
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    if state_keys is not None:
        names = [n for n in names if n in state_keys]
    return names
