"""``train(config)``: fine-tune every method of a config, select on English dev, evaluate XLT + G-XLT.

For each method section (same initial model, same data order):

1. build the HF sequence classifier (seeded, so every method starts from the same weights),
   ``method.setup(model)``, then either a plain torch AdamW + transformers scheduler, or a
   DeepSpeed engine when ``deepspeed.config`` is set (its ``"auto"`` fields filled from ``optim``);
2. loop over optimizer steps; each step runs ``A`` micro-batches through
   ``method.training_step(model, batch, backward, timer)``; then clipping, optimizer and
   scheduler steps (the engine does these under DeepSpeed);
3. evaluate English dev every ``eval.every_steps`` (or every epoch) and at the end, keeping the
   best parameters on CPU (gathered from ZeRO-3 shards; rank 0 holds them);
4. checkpoint atomically every ``output.checkpoint_every`` steps and at the end (``--resume``
   continues from the newest complete one, bit-for-bit on the same hardware);
5. load the best parameters, evaluate XLT and G-XLT, save ``model/`` (safetensors + tokenizer +
   ``fastrobust.json``), ``report/`` and ``summary.json``.

Then ``write_comparison`` over the methods and a short console summary (rank 0 only).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fastrobust.config import Config, apply_override, config_from_dict, load_config, method_label
from fastrobust.errors import ConfigError
from fastrobust.timing import SectionTimer
from fastrobust.train import checkpoint as ckpt
from fastrobust.train.batches import GlobalBatchSampler, micro_seed
from fastrobust.train.distributed import DistContext, init_distributed
from fastrobust.train.meter import ThroughputMeter, peak_memory_mb

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")
STATE_VERSION = 1


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


def _log(dist: DistContext, msg: str) -> None:
    if dist.is_main:
        print(msg, flush=True)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # "Some weights were newly initialized" is expected when fine-tuning a classifier head.
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def _fingerprint(cfg: Config, mcfg: Any, world_size: int) -> dict[str, str]:
    """Hashes of the config sections a checkpoint depends on (a resume must not silently mix runs)."""
    parts = {
        "seed": cfg.seed,
        "model": cfg.model.model_dump(mode="json"),
        "task": cfg.task.model_dump(mode="json"),
        "optim": cfg.optim.model_dump(mode="json"),
        "method": mcfg.model_dump(mode="json"),
        "world_size": world_size,
    }
    return {
        k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:16] for k, v in parts.items()
    }


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Matrices decay; biases and norm scales (1-D) do not — the usual BERT fine-tuning rule.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _json_default(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# shared state of one train() call


class _Run:
    """What every method of one ``train()`` call shares: config, processes, task, tokenizer."""

    def __init__(self, cfg: Config, dist: DistContext, resume: bool) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from fastrobust.data import load_task

        self.cfg = cfg
        self.dist = dist
        self.resume = resume
        self.out_dir = Path(cfg.output.dir)
        # Rank 0 first: the synthetic benchmark and the datasets cache are built once, then read.
        if not dist.is_main:
            dist.barrier()
        self.task = load_task(cfg.task)
        self.model_path = self._model_path()
        with _quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self.hf_config = AutoConfig.from_pretrained(self.model_path)
        if dist.is_main:
            dist.barrier()
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
            from fastrobust.train.ds_config import load_deepspeed_json

            self.ds_raw = load_deepspeed_json(cfg.deepspeed.config)

    def _model_path(self) -> str:
        if self.cfg.model.name_or_path:
            return self.cfg.model.name_or_path
        if self.cfg.task.name != "synthetic":
            raise ConfigError("model.name_or_path: required unless task.name is 'synthetic'")
        from fastrobust.data.synthetic import prepare_synthetic

        return str(prepare_synthetic(self.cfg.task.synthetic).model_dir)


# --------------------------------------------------------------------------------------------
# one method


class _MethodTrainer:
    """Trains, selects, evaluates and saves one method section."""

    def __init__(self, run: _Run, mcfg: Any) -> None:
        from fastrobust.methods import build_method

        self.run = run
        self.cfg = run.cfg
        self.dist = run.dist
        self.mcfg = mcfg
        self.label = method_label(mcfg)
        self.dir = run.out_dir / self.label
        self.ckpt_root = self.dir / "checkpoints"
        self.method = build_method(mcfg, task_synonyms=run.task.synonyms)
        self.device = run.dist.device
        self.precision = self.cfg.model.precision
        self.engine: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.scaler: Any = None
        self.ds_cfg: dict[str, Any] | None = None
        self.step = 0
        self.best_acc = -math.inf
        self.best_step = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.dev_history: list[list[float]] = []
        self.losses: list[float] = []
        self.meter = ThroughputMeter()
        self.resumed_from: int | None = None
        self._pending_losses: list[torch.Tensor] = []
        self._pending_tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        self._encoded: dict[int, Any] = {}
        self.fingerprint = _fingerprint(self.cfg, mcfg, run.dist.world_size)
        # FreeLB back-propagates K times per micro-batch; under DeepSpeed each backward is one
        # engine micro-step (see ds_config.resolve_deepspeed_config).
        self.backward_calls = int(mcfg.steps) if mcfg.kind == "freelb" else 1
        self._calls_this_micro = 0

    # ---- building -------------------------------------------------------------------------

    def build(self) -> None:
        from transformers import AutoModelForSequenceClassification, get_scheduler

        task = self.run.task
        names = list(task.label_names)
        # Same seed before every method's model: the freshly initialised head is identical.
        torch.manual_seed(self.cfg.seed)
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                self.run.model_path,
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
            )
        model.to(self.device)
        model.train()
        # Relative scales are resolved on the full embedding table, before ZeRO-3 partitions it.
        self.method.setup(model)
        self.module = model
        o = self.cfg.optim
        groups = _param_groups(model, o.weight_decay)

        def make_scheduler(optimizer: Any) -> Any:
            return get_scheduler(
                o.scheduler,
                optimizer=optimizer,
                num_warmup_steps=self.run.warmup_steps,
                num_training_steps=self.run.total_steps,
            )

        if self.run.ds_raw is None:
            self.optimizer = torch.optim.AdamW(groups, lr=o.learning_rate, eps=o.adam_epsilon)
            self.scheduler = make_scheduler(self.optimizer)
            if self.precision == "fp16":
                self.scaler = torch.amp.GradScaler(self.device.type)
            self.model = model
            return
        import deepspeed

        from fastrobust.train.ds_config import resolve_deepspeed_config

        self.ds_cfg = resolve_deepspeed_config(
            self.run.ds_raw,
            self.cfg,
            micro_batch_size=self.run.micro,
            grad_accum=self.run.accum,
            total_steps=self.run.total_steps,
            warmup_steps=self.run.warmup_steps,
            hidden_size=getattr(model.config, "hidden_size", None),
            backward_calls=self.backward_calls,
        )
        ds_cfg = dict(self.ds_cfg)
        ds_cfg.setdefault("steps_per_print", 10**9)  # we log ourselves
        optimizer = None
        if "optimizer" not in ds_cfg:
            # A client torch AdamW: no C++ op to compile, same update as the plain path.
            optimizer = torch.optim.AdamW(groups, lr=o.learning_rate, eps=o.adam_epsilon)
        scheduler = None if "scheduler" in ds_cfg else make_scheduler
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            model_parameters=groups if optimizer is None else None,
            lr_scheduler=scheduler,
            config=ds_cfg,
        )
        self.model = self.engine
        self.module = self.engine.module

    @property
    def zero_stage(self) -> int:
        from fastrobust.train.ds_config import zero_stage

        return zero_stage(self.ds_cfg) if self.ds_cfg else 0

    # ---- data -----------------------------------------------------------------------------

    def _loader(self, epoch: int, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        from fastrobust.data import encode_dataset, make_collator

        train = self.method.epoch_train_dataset(self.run.task.train, epoch, self.cfg.seed)
        key = id(train) if train is self.run.task.train else -1
        encoded = self._encoded.get(key)
        if encoded is None:
            encoded = encode_dataset(train, self.run.tokenizer, self.cfg.model.max_length)
            encoded = encoded.select_columns([c for c in MODEL_INPUTS if c in encoded.column_names])
            if key != -1:
                self._encoded[key] = encoded  # unchanged across epochs: tokenize once
        if len(encoded) != len(self.run.task.train):
            raise ConfigError(
                f"method {self.label}: epoch_train_dataset changed the training-set size "
                f"({len(self.run.task.train)} -> {len(encoded)})"
            )
        sampler = GlobalBatchSampler(
            len(encoded),
            global_batch=self.cfg.optim.batch_size,
            micro_batch=self.run.micro,
            world_size=self.dist.world_size,
            rank=self.dist.rank,
            seed=self.cfg.seed,
            epoch=epoch,
            start_step=start_step,
        )
        loader = torch.utils.data.DataLoader(
            encoded, batch_size=self.run.micro, sampler=sampler, collate_fn=make_collator(self.run.tokenizer)
        )
        return iter(loader)

    # ---- one optimizer step ---------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.engine is not None or self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _backward_fn(self) -> Callable[[torch.Tensor], None]:
        accum = self.run.accum
        if self.engine is not None:
            engine = self.engine

            def ds_backward(loss: torch.Tensor) -> None:
                # 1/accum here (the method already divided by K for FreeLB); DeepSpeed's own
                # division by its accumulation count (accum * K) is switched off.
                engine.backward(loss / accum, scale_wrt_gas=False)
                engine.step()
                self._calls_this_micro += 1

            return ds_backward
        scaler = self.scaler
        device_type = self.device.type

        def backward(loss: torch.Tensor) -> None:
            scaled = loss / accum
            if scaler is not None:
                scaled = scaler.scale(scaled)
            # Backward outside autocast: its ops follow the dtypes autocast chose in forward.
            with torch.autocast(device_type=device_type, enabled=False):
                scaled.backward()

        return backward

    def _train_step(
        self, it: Iterator[dict[str, torch.Tensor]], timer: SectionTimer
    ) -> tuple[torch.Tensor, Any]:
        """Runs A micro-batches and one optimizer step; returns (mean micro loss, grad norm or None)."""
        backward = self._backward_fn()
        losses = []
        for k in range(self.run.accum):
            batch = next(it)
            batch = {key: v.to(self.device, non_blocking=True) for key, v in batch.items()}
            self._pending_tokens += batch["attention_mask"].sum()
            q = k * self.dist.world_size + self.dist.rank
            # Randomness of this micro-batch depends on (seed, step, q) only: see batches.py.
            torch.manual_seed(micro_seed(self.cfg.seed, self.step, q))
            self._calls_this_micro = 0
            with self._autocast():
                loss = self.method.training_step(self.model, batch, backward, timer)
            losses.append(loss.detach().float())
            if self.engine is not None and self._calls_this_micro != self.backward_calls:
                raise RuntimeError(
                    f"method {self.label} called backward {self._calls_this_micro} times on one micro-batch; "
                    f"the DeepSpeed engine was configured for {self.backward_calls}"
                )
        grad_norm = None
        if self.engine is not None:
            grad_norm = self.engine.get_global_grad_norm()
        else:
            params = [p for p in self.module.parameters() if p.requires_grad]
            if self.dist.world_size > 1:
                self._all_reduce_grads(params)
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if self.cfg.optim.max_grad_norm:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return torch.stack(losses).mean(), grad_norm

    def _all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        # Plain torch on several processes (torchrun without DeepSpeed): average the accumulated
        # gradients once per optimizer step, in one flat buffer.
        import torch.distributed as tdist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad for p in params if p.grad is not None]
        flat = _flatten_dense_tensors(grads)
        tdist.all_reduce(flat)
        flat /= self.dist.world_size
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)

    def _lr(self) -> float:
        opt = self.optimizer
        groups = getattr(opt, "param_groups", None) or []
        return float(groups[0]["lr"]) if groups else float("nan")

    def _flush(self) -> list[float]:
        """Mean-over-ranks losses of the steps since the last flush (a collective on every rank)."""
        if not self._pending_losses:
            return []
        local = torch.stack(self._pending_losses).to(torch.float64)
        values = self.dist.all_reduce_mean(local).cpu().tolist()
        tokens = self.dist.all_reduce_sum(self._pending_tokens.clone()).item()
        self.meter.tokens += int(tokens)
        self._pending_tokens.zero_()
        self._pending_losses = []
        self.losses.extend(values)
        return values

    # ---- evaluation and best state ---------------------------------------------------------

    def _dev_accuracy(self) -> float:
        from fastrobust.evaluate import evaluate_dev

        task = self.run.task
        dev = task.dev[task.train_language]
        # Every rank evaluates (under ZeRO-3 each forward gathers shards collectively); rank 0's
        # number is broadcast so that all ranks take the same best-state decision.
        with self._autocast():
            acc = evaluate_dev(
                self.module,
                self.run.tokenizer,
                dev,
                max_length=self.cfg.model.max_length,
                batch_size=self.cfg.eval.batch_size,
                device=self.device,
            )
        self.module.train()
        return self.dist.broadcast_float(float(acc))

    def _gather_state(self) -> dict[str, torch.Tensor] | None:
        """Full parameters on rank 0's CPU (None elsewhere); a collective under ZeRO-3."""
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                return _cpu_state(self.module) if self.dist.is_main else None
        return _cpu_state(self.module) if self.dist.is_main else None

    def _evaluate_dev(self, writer: Any) -> None:
        acc = self._dev_accuracy()
        self.dev_history.append([self.step, acc])
        if acc > self.best_acc:
            self.best_acc, self.best_step = acc, self.step
            self.best_state = self._gather_state()
        if writer is not None:
            writer.add_scalar("dev/accuracy", acc, self.step)
        _log(
            self.dist,
            f"[{self.label}] step {self.step}: English dev accuracy {100 * acc:.2f}% "
            f"(best {100 * self.best_acc:.2f}% at step {self.best_step})",
        )

    # ---- checkpoints ----------------------------------------------------------------------

    def _trainer_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "step": self.step,
            "steps_per_epoch": self.run.steps_per_epoch,
            "total_steps": self.run.total_steps,
            "world_size": self.dist.world_size,
            "fingerprint": self.fingerprint,
            "rng": ckpt.rng_state(),
            "best_acc": self.best_acc,
            "best_step": self.best_step,
            "dev_history": self.dev_history,
            "losses": self.losses,
            "meter": self.meter.state_dict(),
        }
        if self.engine is None:
            state["optimizer"] = self.optimizer.state_dict()
            state["scheduler"] = self.scheduler.state_dict()
            state["scaler"] = self.scaler.state_dict() if self.scaler is not None else {}
        return state

    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file, save_model

        name = ckpt.step_dir(self.ckpt_root, self.step).name + ".tmp"
        tmp = self.ckpt_root / name
        if self.dist.is_main:
            ckpt.begin(self.ckpt_root, self.step)
        self.dist.barrier()
        if self.engine is not None:
            self.engine.save_checkpoint(str(tmp), tag="ds")
            self.dist.barrier()
        if self.dist.is_main:
            if self.engine is None:
                save_model(self.module, str(tmp / ckpt.MODEL_FILE))
            if self.best_state is not None:
                save_file(self.best_state, str(tmp / ckpt.BEST_FILE))
            ckpt.save_state(tmp / ckpt.STATE_FILE, self._trainer_state())
            ckpt.commit(tmp, self.cfg.output.keep_checkpoints)
        self.dist.barrier()

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file, load_model

        state = ckpt.load_state(path / ckpt.STATE_FILE)
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"{path}: checkpoint format version {state.get('version')} is not supported")
        changed = [k for k, v in self.fingerprint.items() if state["fingerprint"].get(k) != v]
        if changed:
            raise ConfigError(
                f"--resume: {path} was written with a different {', '.join(changed)} "
                "(config or number of processes changed); start without --resume or restore them"
            )
        if self.engine is not None:
            self.engine.load_checkpoint(
                str(path), tag="ds", load_optimizer_states=True, load_lr_scheduler_states=True
            )
        else:
            load_model(self.module, str(path / ckpt.MODEL_FILE), strict=True, device=str(self.device))
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_acc = float(state["best_acc"])
        self.best_step = int(state["best_step"])
        self.dev_history = [list(x) for x in state["dev_history"]]
        self.losses = list(state["losses"])
        self.meter.load_state_dict(state["meter"])
        if self.dist.is_main and (path / ckpt.BEST_FILE).is_file():
            self.best_state = load_file(str(path / ckpt.BEST_FILE), device="cpu")
        ckpt.set_rng_state(state["rng"])
        self.resumed_from = self.step

    # ---- the loop -------------------------------------------------------------------------

    def _due(self, every: int | None) -> bool:
        return bool(every) and self.step % every == 0

    def train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        run, cfg, dist = self.run, self.cfg, self.dist
        t_start = time.perf_counter()
        self.build()
        if run.resume:
            found = ckpt.latest(self.ckpt_root)
            if found is not None:
                self.load_checkpoint(found)
                _log(dist, f"[{self.label}] resumed from {found} (step {self.step}/{run.total_steps})")
            else:
                _log(
                    dist,
                    f"[{self.label}] --resume: no complete checkpoint under {self.ckpt_root}; starting anew",
                )
        elif dist.is_main and self.ckpt_root.exists():
            # A fresh run must not leave older checkpoints for a later --resume to mix in.
            import shutil

            shutil.rmtree(self.ckpt_root)
        dist.barrier()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        writer = None
        if dist.is_main and cfg.output.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.dir / "tb"))
        spe, total, log_every = run.steps_per_epoch, run.total_steps, cfg.output.log_every
        bar = tqdm(
            total=total,
            initial=self.step,
            desc=self.label,
            unit="step",
            disable=not dist.is_main,
            dynamic_ncols=True,
            mininterval=1.0,
            file=sys.stderr,
        )
        it: Iterator[dict[str, torch.Tensor]] | None = None
        eval_seconds = 0.0
        while self.step < total:
            if it is None or self.step % spe == 0:
                it = self._loader(self.step // spe, self.step % spe)
            logged = (self.step + 1) % log_every == 0 or self.step + 1 == total
            timer = SectionTimer(enabled=logged, device=self.device)
            t0 = time.perf_counter()
            loss, grad_norm = self._train_step(it, timer)
            self._pending_losses.append(loss)
            self.step += 1
            if logged and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - t0
            self.meter.add_step(seconds, cfg.optim.batch_size, 0)
            if logged:
                self.meter.add_timed(seconds, timer.totals)
                values = self._flush()
                s = self.meter.summary()
                if dist.is_main:
                    bar.set_postfix(loss=f"{values[-1]:.4f}", samples_s=f"{s['samples_per_s']:.1f}")
                if writer is not None:
                    for i, v in enumerate(values):
                        writer.add_scalar("train/loss", v, self.step - len(values) + i + 1)
                    writer.add_scalar("train/lr", self._lr(), self.step)
                    if grad_norm is not None:
                        writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
                    writer.add_scalar("throughput/samples_per_s", s["samples_per_s"], self.step)
                    writer.add_scalar("throughput/tokens_per_s", s["tokens_per_s"], self.step)
                    for k, v in timer.totals.items():
                        writer.add_scalar(f"time/{k}_s", v, self.step)
                    writer.add_scalar("time/step_s", seconds, self.step)
                    writer.add_scalar("memory/peak_mb", peak_memory_mb(self.device), self.step)
            bar.update(1)
            every = cfg.eval.every_steps or spe
            t_eval = time.perf_counter()
            if self._due(every) or self.step == total:
                self._evaluate_dev(writer)
            if self._due(cfg.output.checkpoint_every) or self.step == total:
                self._flush()
                self.save_checkpoint()
            eval_seconds += time.perf_counter() - t_eval
        bar.close()
        self._flush()
        if writer is not None:
            writer.flush()
        if not self.dev_history:  # defensive: a resumed final checkpoint without any dev evaluation
            self._evaluate_dev(writer)
        summary = self.finish(time.perf_counter() - t_start, eval_seconds)
        if writer is not None:
            writer.close()
        return summary

    # ---- after training -------------------------------------------------------------------

    def _eval_model(self) -> torch.nn.Module:
        """Rank 0: a plain HF model holding the best parameters."""
        if self.engine is None:
            model = self.module
        else:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_config(self.module.config)
            model.to(self.device)
        if self.best_state is not None:
            model.load_state_dict(self.best_state, strict=True)
        model.eval()
        return model

    def finish(self, wall_seconds: float, eval_seconds: float) -> dict[str, Any]:
        from fastrobust.evaluate import evaluate_task, write_report

        cfg, dist = self.cfg, self.dist
        summary: dict[str, Any] = {}
        if dist.is_main:
            model = self._eval_model()
            t0 = time.perf_counter()
            with self._autocast():
                report = evaluate_task(
                    model,
                    self.run.tokenizer,
                    self.run.task,
                    max_length=cfg.model.max_length,
                    batch_size=cfg.eval.batch_size,
                    device=self.device,
                    gxlt=cfg.eval.gxlt and cfg.task.gxlt,
                )
            test_seconds = time.perf_counter() - t0
            report_dir = self.dir / "report"
            write_report(report, report_dir, title=f"{cfg.name} / {self.label}")
            model_dir = self.dir / "model"
            if cfg.output.save_model:
                model_dir.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(str(model_dir))
                self.run.tokenizer.save_pretrained(str(model_dir))
                _write_json(
                    model_dir / "fastrobust.json",
                    {
                        "task": cfg.task.model_dump(mode="json"),
                        "max_length": cfg.model.max_length,
                        "method": self.mcfg.model_dump(mode="json"),
                    },
                )
            throughput = self.meter.summary()
            throughput["peak_memory_mb"] = peak_memory_mb(self.device)
            throughput["peak_memory_kind"] = (
                "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"
            )
            summary = {
                "label": self.label,
                "kind": self.mcfg.kind,
                "method": self.mcfg.model_dump(mode="json"),
                "model": self.run.model_path,
                "task": cfg.task.name,
                "precision": self.precision,
                "world_size": dist.world_size,
                "device": str(self.device),
                "deepspeed": (
                    {"config": cfg.deepspeed.config, "zero_stage": self.zero_stage}
                    if self.engine is not None
                    else None
                ),
                "steps": self.run.total_steps,
                "steps_per_epoch": self.run.steps_per_epoch,
                "epochs": self.run.total_steps / self.run.steps_per_epoch,
                "batch_size": cfg.optim.batch_size,
                "micro_batch_size": self.run.micro,
                "grad_accum": self.run.accum,
                "best_dev_accuracy": self.best_acc,
                "best_step": self.best_step,
                "dev_history": self.dev_history,
                "final_loss": self.losses[-1] if self.losses else None,
                "losses": self.losses,
                "throughput": throughput,
                "averages": report.averages(),
                "xlt": dict(report.xlt),
                "resumed_from_step": self.resumed_from,
                "wall_seconds": wall_seconds,
                "eval_and_checkpoint_seconds": eval_seconds,
                "test_eval_seconds": test_seconds,
                "files": {
                    "model": str(model_dir) if cfg.output.save_model else None,
                    "report": str(report_dir),
                    "tensorboard": str(self.dir / "tb") if cfg.output.tensorboard else None,
                    "checkpoints": str(self.ckpt_root),
                },
            }
            _write_json(self.dir / "summary.json", summary)
            summary["_report"] = report
        dist.barrier()
        return summary

    def close(self) -> None:
        self.engine = self.model = self.module = self.optimizer = self.scheduler = None
        self.best_state = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# console summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def console_summary(summaries: dict[str, dict[str, Any]], out_dir: Path) -> str:
    """One table per setting (XLT, G-XLT) with the averages per method, and throughput vs baseline."""
    reports = {k: s["_report"] for k, s in summaries.items()}
    first = next(iter(reports.values()))
    langs = list(first.languages)
    parts = []
    rows = [[k, *(_pct(r.xlt.get(lang)) for lang in langs), _pct(r.xlt_avg)] for k, r in reports.items()]
    parts.append(
        "XLT accuracy (%), trained on "
        + str(first.train_language)
        + ":\n"
        + _table(["method", *langs, "avg"], rows)
    )
    if any(r.gxlt for r in reports.values()):
        rows = [
            [k, _pct(r.gxlt_same_lang_avg), _pct(r.gxlt_cross_lang_avg), _pct(r.gxlt_avg), _pct(r.gap)]
            for k, r in reports.items()
        ]
        parts.append(
            f"G-XLT accuracy (%), {len(first.gxlt)} language pairs:\n"
            + _table(["method", "same-lang", "cross-lang", "avg", "gap"], rows)
        )
    base_label = next((k for k, s in summaries.items() if s["kind"] == "baseline"), next(iter(summaries)))
    base = summaries[base_label]["throughput"]["samples_per_s"]
    rows = []
    for k, s in summaries.items():
        t = s["throughput"]
        rows.append(
            [
                k,
                f"{t['samples_per_s']:.1f}",
                f"{t['samples_per_s'] / base:.2f}x" if base else "-",
                f"{t['tokens_per_s']:.0f}",
                f"{t['peak_memory_mb']:.0f}",
                _pct(s["best_dev_accuracy"]),
            ]
        )
    parts.append(
        f"Throughput (relative to {base_label}):\n"
        + _table(["method", "samples/s", f"vs {base_label}", "tokens/s", "peak MiB", "best dev"], rows)
    )
    parts.append(
        f"Files: {out_dir}/comparison.md|json|png; per method {out_dir}/<method>/"
        "{model/, report/, summary.json, tb/, checkpoints/}"
    )
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# entry point


def train(
    config: Config | str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    methods: Sequence[str] | None = None,
    resume: bool = False,
    deepspeed: str | None = None,
) -> dict[str, Any]:
    """Fine-tunes every (selected) method of ``config`` and evaluates it; see the module docstring.

    Args:
        config: a ``Config``, a YAML path, or None for the packaged demo.
        overrides: ``key=value`` strings (as ``--set``), applied on top of ``config``.
        methods: labels of the method sections to run (default: all).
        resume: continue every method from its newest complete checkpoint.
        deepspeed: a DeepSpeed JSON (overrides ``deepspeed.config``).

    Returns ``{"output_dir", "methods": {label: summary dict}, "comparison": markdown}``; on ranks
    other than 0 the summaries are empty dicts.
    """
    import datasets
    from transformers.utils import logging as hf_logging

    # Our tqdm bar is the progress display; datasets' per-map bars and transformers' weight
    # loading/saving bars would interleave with it.
    bars = datasets.utils.logging.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        return _train(config, overrides, methods=methods, resume=resume, deepspeed=deepspeed)
    finally:
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            hf_logging.enable_progress_bar()


def _train(
    config: Config | str | Path | None,
    overrides: Sequence[str],
    *,
    methods: Sequence[str] | None,
    resume: bool,
    deepspeed: str | None,
) -> dict[str, Any]:
    cfg = resolve_config(config, overrides)
    if deepspeed is not None:
        cfg.deepspeed.config = deepspeed
    sections = list(cfg.methods)
    if methods:
        labels = [method_label(m) for m in sections]
        unknown = [m for m in methods if m not in labels]
        if unknown:
            raise ConfigError(
                f"--method {', '.join(unknown)}: no such method section; the config has {labels}"
            )
        sections = [m for m in sections if method_label(m) in methods]
    dist = init_distributed(use_deepspeed=bool(cfg.deepspeed.config))
    run = _Run(cfg, dist, resume)
    from fastrobust.methods import build_method

    for mcfg in sections:  # fail before any training if a section cannot be built (e.g. no synonyms)
        build_method(mcfg, task_synonyms=run.task.synonyms)
    out_dir = run.out_dir
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        ds = f", DeepSpeed {cfg.deepspeed.config}" if cfg.deepspeed.config else ""
        _log(
            dist,
            (
                f"fastrobust train: {cfg.name} — task {cfg.task.name} ({len(run.task.train)} train examples, "
                f"languages {', '.join(run.task.languages)}), model {run.model_path}\n"
                f"  {len(sections)} method(s): {', '.join(method_label(m) for m in sections)}; "
                f"{run.total_steps} steps of batch {cfg.optim.batch_size} "
                f"({dist.world_size} process(es) x micro {run.micro} x accum {run.accum}) "
                f"on {dist.device}{ds}"
            ),
        )
    summaries: dict[str, dict[str, Any]] = {}
    for mcfg in sections:
        trainer = _MethodTrainer(run, mcfg)
        try:
            summaries[trainer.label] = trainer.train()
        finally:
            trainer.close()
    result: dict[str, Any] = {"output_dir": str(out_dir), "methods": {}, "comparison": ""}
    if dist.is_main:
        from fastrobust.evaluate import write_comparison

        reports = {k: s["_report"] for k, s in summaries.items()}
        result["comparison"] = write_comparison(reports, out_dir)
        text = console_summary(summaries, out_dir)
        print("\n" + text, flush=True)
        result["methods"] = {
            k: {kk: v for kk, v in s.items() if kk != "_report"} for k, s in summaries.items()
        }
        result["reports"] = reports
        _write_json(
            out_dir / "summary.json",
            {
                "name": cfg.name,
                "config": cfg.model_dump(mode="json"),
                "methods": {
                    k: {kk: v for kk, v in s.items() if kk not in ("losses", "dev_history")}
                    for k, s in result["methods"].items()
                },
            },
        )
    dist.barrier()
    return result
