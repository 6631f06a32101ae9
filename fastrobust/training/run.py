"""What every method of one ``train()`` call shares: the resolved config, the processes, the task,
the tokenizer and the step budget; plus the small helpers the training modules use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastrobust.config import Config, apply_override, config_from_dict, load_config
from fastrobust.errors import ConfigError
from fastrobust.training import preflight
from fastrobust.training.distributed import DistContext
from fastrobust.training.ds_config import load_deepspeed_json

if TYPE_CHECKING:  # annotations only
    from fastrobust.methods.registry import MethodSection

# --------------------------------------------------------------------------------------------
# config resolution


def resolve_config(config: Config | str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """A validated Config from a Config object, a YAML path or None (the packaged demo), plus overrides."""
    if isinstance(config, Config):
        if not overrides:
            return config.model_copy(deep=True)
        data = config.model_dump(mode="json")
        for o in overrides:
            apply_override(data, o)
        return config_from_dict(data, source="<config>")
    if config is not None and not isinstance(config, str | Path):
        raise ConfigError(f"train: config must be a Config, a path or None, got {type(config).__name__}")
    return load_config(config, list(overrides))


def batch_layout(cfg: Config, world_size: int) -> tuple[int, int]:
    """(micro batch per process, accumulation steps) with batch = micro * accum * world size."""
    b = cfg.optim.batch_size
    micro = cfg.optim.micro_batch_size
    if micro is None:
        if b % world_size:
            raise ConfigError(
                f"optim.batch_size ({b}) must be a multiple of the number of processes ({world_size}); "
                "or set optim.micro_batch_size"
            )
        micro = b // world_size
    if b % (micro * world_size):
        raise ConfigError(
            f"optim.batch_size ({b}) must be a multiple of optim.micro_batch_size ({micro}) x the number "
            f"of processes ({world_size}) = {micro * world_size}"
        )
    return micro, b // (micro * world_size)


# --------------------------------------------------------------------------------------------
# helpers


def log(dist: DistContext, msg: str) -> None:
    """Prints ``msg`` on rank 0 only."""
    if dist.is_main:
        print(msg, flush=True)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    # "Some weights were newly initialized" is expected when fine-tuning a classifier head.
    import transformers  # ~1.3 s: loaded when a model is built, not with this module

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


NOT_FINGERPRINTED: dict[str, set[str]] = {
    # compiling changes how the forward runs, not what it computes: a run resumes either way
    "model": {"compile", "compile_mode", "compile_backend"},
    "optim": {"nonfinite_patience"},
    "task": {"max_gxlt_examples", "gxlt_pairs"},
}


def fingerprint(cfg: Config, mcfg: MethodSection, world_size: int) -> dict[str, str]:
    """Hashes of the config sections a checkpoint depends on (a resume must not silently mix runs)."""
    parts = {
        "seed": cfg.seed,
        # lora only when set: a full fine-tuning checkpoint written before the key existed still resumes
        "model": cfg.model.model_dump(
            mode="json", exclude=NOT_FINGERPRINTED["model"] | ({"lora"} if cfg.model.lora is None else set())
        ),
        "task": cfg.task.model_dump(mode="json", exclude=NOT_FINGERPRINTED["task"]),
        # without the keys that cannot change what training computes (added later: an older
        # checkpoint still resumes)
        "optim": cfg.optim.model_dump(mode="json", exclude=NOT_FINGERPRINTED["optim"]),
        "method": mcfg.model_dump(mode="json"),
        "world_size": world_size,
    }
    if cfg.average is not None:  # only when set: a checkpoint written before the key existed still resumes
        parts["average"] = cfg.average.model_dump(mode="json")
    return {
        k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:16] for k, v in parts.items()
    }


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()``."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# shared state of one train() call


class RunContext:
    """What every method of one ``train()`` call shares: config, processes, task, tokenizer.

    Step budget: ``steps_per_epoch = len(train) // batch_size`` (the incomplete last batch is
    dropped), ``total_steps = optim.max_steps`` or ``ceil(epochs * steps_per_epoch)``,
    ``warmup_steps = ceil(warmup_ratio * total_steps)``.
    """

    def __init__(self, cfg: Config, dist: DistContext, resume: bool, overwrite: bool = False) -> None:
        # transformers and datasets (via fastrobust.data) load when a run starts, not with this module
        from transformers import AutoConfig, AutoTokenizer

        from fastrobust.data import load_task

        self.cfg = cfg
        self.dist = dist
        self.resume = resume
        self.progress_bar = True  # parallel workers switch theirs off
        self.overwrite = overwrite
        self.out_dir = Path(cfg.output.dir)
        # Rank 0 first: the synthetic benchmark and the datasets cache are built once, then read.
        if not dist.is_main:
            dist.barrier()
        self.task = load_task(cfg.task)
        self.model_path = self._model_path()
        preflight.check_model_source(self.model_path)
        with quiet_transformers():
            self.hf_config = preflight.load_pretrained(AutoConfig.from_pretrained, self.model_path)
            self.tokenizer = preflight.load_pretrained(AutoTokenizer.from_pretrained, self.model_path)
        if dist.is_main:
            dist.barrier()
        preflight.check_tokenizer(self.tokenizer, self.hf_config, self.model_path)
        limit = preflight.position_limit(self.hf_config)
        if cfg.model.name_or_path is None and limit is not None and cfg.model.max_length > limit:
            # The synthetic benchmark's own model: its sentences are shorter than its position table.
            cfg.model.max_length = limit
        preflight.check_max_length(cfg.model.max_length, self.hf_config, self.model_path)
        # A checkpoint fine-tuned for another label count: re-initialise its head, as transformers
        # users expect, and say so (its weights would not fit anyway).
        self.head_warning = preflight.head_mismatch(
            self.hf_config, self.task.num_labels, self.model_path, self.task.name
        )
        self.micro, self.accum = batch_layout(cfg, dist.world_size)
        n = len(self.task.train)
        self.steps_per_epoch = n // cfg.optim.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"optim.batch_size ({cfg.optim.batch_size}) is larger than the training set ({n} examples)"
            )
        if cfg.optim.max_steps is not None:
            self.total_steps = cfg.optim.max_steps
        else:
            self.total_steps = max(1, math.ceil(cfg.optim.epochs * self.steps_per_epoch))
        self.warmup_steps = math.ceil(cfg.optim.warmup_ratio * self.total_steps)
        self.ds_raw: dict[str, Any] | None = None
        if cfg.deepspeed.config:
            self.ds_raw = load_deepspeed_json(cfg.deepspeed.config)

    def _model_path(self) -> str:
        if self.cfg.model.name_or_path:
            return self.cfg.model.name_or_path
        if self.cfg.task.name != "synthetic":
            raise ConfigError("model.name_or_path: required unless task.name is 'synthetic'")
        from fastrobust.data.synthetic import prepare_synthetic  # fastrobust.data loads datasets

        return str(prepare_synthetic(self.cfg.task.synthetic).model_dir)
