"""Weight averaging inside ``transformers.Trainer``: :class:`WeightAveragingCallback`.

The same running average as ``fastrobust train``'s ``average:`` block
(:class:`fastrobust.training.averaging.WeightAverage`, built on ``torch.optim.swa_utils``): the
trainable parameters (a LoRA adapter's under PEFT) are snapshotted after the optimizer steps of
the schedule ``ceil(start * max_steps), + every_steps, ...``. Every Trainer checkpoint
(``checkpoint-N/``) gets the average in ``average.safetensors`` and ``average.json``, and a run
resumed with ``resume_from_checkpoint`` continues it, so it reaches the same averaged weights.

After ``train()``, :meth:`WeightAveragingCallback.averaged_state` is the model's state dict with the
trainable entries averaged, and :meth:`save_averaged` writes a model folder of the averaged model
(``save_pretrained`` + tokenizer, ``fastrobust.json`` with an ``averaged`` entry) that
``from_pretrained`` and ``fastrobust evaluate`` load. Under DeepSpeed ZeRO-3 (partitioned
parameters) it is refused when training begins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from fastrobust.config import AverageConfig
from fastrobust.errors import ConfigError
from fastrobust.fileio import atomic_write_json
from fastrobust.training.averaging import WeightAverage, check_supported, trainable_names
from fastrobust.training.ds_config import zero_stage

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

STATE_FILE = "average.json"


def _zero_stage(args: TrainingArguments) -> int | None:
    """The ZeRO stage of the Trainer's DeepSpeed config (None without DeepSpeed)."""
    ds = getattr(args, "hf_deepspeed_config", None)
    return zero_stage(ds.config) if ds is not None else None


class WeightAveragingCallback(TrainerCallback):
    """Averages snapshots of the trainable weights during ``Trainer.train`` (module doc).

    ``average``: an :class:`AverageConfig` or its fields as a dict (``start``, ``every_steps``).
    """

    def __init__(self, average: AverageConfig | dict[str, Any] | None = None) -> None:
        self.cfg = average if isinstance(average, AverageConfig) else AverageConfig(**(average or {}))
        self.avg: WeightAverage | None = None
        self.model: torch.nn.Module | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        check_supported(_zero_stage(args))
        self.model = model
        names = trainable_names(model, set(model.state_dict()))
        self.avg = WeightAverage(self.cfg, state.max_steps, names)
        if state.global_step > 0:  # resumed: the checkpoint it resumed from holds the average so far
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            path = folder / STATE_FILE
            if not path.is_file():
                raise ConfigError(f"resume: {path} is missing (the checkpoint's weight average)")
            self.avg.load(folder, json.loads(path.read_text(encoding="utf-8")), is_main=True)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if self.avg is None or not self.avg.due(state.global_step):
            return
        self.avg.snapshot(state.global_step, self.model, is_main=True)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.avg is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        self.avg.save(folder)
        atomic_write_json(folder / STATE_FILE, self.avg.state_dict())

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict (CPU) with the trainable entries replaced by their averages."""
        if self.avg is None or self.model is None:
            raise ConfigError("average: train() has not run, so there is no averaged model")
        final = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return self.avg.averaged_state(final)

    def save_averaged(self, trainer: Trainer, output_dir: str | Path) -> Path:
        """A model folder of the averaged model (the trainer's model is left as trained)."""
        out = Path(output_dir)
        trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.averaged_state())
        try:
            trainer.save_model(str(out))
        finally:
            self.model.load_state_dict(trained)
        meta_path = out / "fastrobust.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        meta["averaged"] = self.avg.describe()
        atomic_write_json(meta_path, meta)
        return out
