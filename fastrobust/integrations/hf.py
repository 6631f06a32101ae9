"""Robust training inside ``transformers.Trainer``: ``RobustTrainer`` and ``EmbeddingNoiseCallback``.

``RobustTrainer`` is a ``Trainer`` whose ``training_step`` hands each micro-batch to a fastrobust
method (baseline, PGD, FreeLB, RS-RP, RS-DA) through :func:`fastrobust.training.engine.method_step`
— the same per-step code ``fastrobust train`` runs — with a backward that goes through
``accelerator.backward``, so Trainer's gradient accumulation, fp16 grad scaler, bf16, DDP,
DeepSpeed ZeRO-2/3, ``torch_compile``, evaluation and checkpoints work as usual::

    trainer = RobustTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                            processing_class=tokenizer, method="freelb", steps=3, epsilon=0.1)
    trainer.train()

The method is a config section of :mod:`fastrobust.config.methods` given as its ``kind`` plus
keyword arguments (``method="rs-rp", sigma=0.5``), a dict, a section object or a built method.

LoRA: ``model`` may be a ``peft.PeftModel`` (:func:`lora_model` builds one with the defaults of
``fastrobust train``'s ``model.lora``). The methods perturb the output of the base model's frozen
word-embedding table, only the adapter (and the modules PEFT saves) train, and ``save_model``
writes the adapter folder, which ``AutoModelForSequenceClassification.from_pretrained`` and
``fastrobust evaluate`` load.

Loss scaling: a method calls ``backward(loss)`` with the mean cross-entropy of its micro-batch
(FreeLB: K times with loss/K); the backward multiplies by 1/(accumulation steps) and calls
``accelerator.backward`` — Trainer's own convention for models without token-level loss
normalisation. Under DeepSpeed, FreeLB's K backwards of one micro-batch are K engine backwards
of which only the last of the accumulation window is the boundary (one optimizer step).

Datasets: tokenized ones (``input_ids``, ``attention_mask``, ``[token_type_ids]``, ``label(s)``)
are used as given; a text dataset (``sentence1``, optional ``sentence2``, ``label``) is
tokenized like ``fastrobust train`` does — and is required for RS-DA, whose substitution is
re-drawn at every epoch through the dataset's ``set_epoch`` (same draws as ``fastrobust train``).
Batches are right-padded (the embedding perturbations and XLM-R positions assume it).

``data_order="fastrobust"`` makes the training order that of ``fastrobust train``
(``randperm(n, seed + epoch)``, incomplete last global batch dropped), and ``reseed=True``
(default) re-seeds torch before every micro-batch from (seed, step, micro-batch index), so the
randomness of a step does not depend on the number of processes or accumulation steps and a
resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from torch.utils.data import Sampler
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from fastrobust.config import LoraSection
from fastrobust.config.methods import AdversarialConfig, BaselineConfig, NoiseConfig, SynonymConfig
from fastrobust.errors import ConfigError, DataError
from fastrobust.fileio import atomic_write_json
from fastrobust.integrations.hf_average import WeightAveragingCallback
from fastrobust.integrations.hf_data import (
    EpochPermutationSampler,
    RightPadding,
    TextClassificationDataset,
    redraws_per_epoch,
)
from fastrobust.methods import RobustMethod, add_embedding_noise, build_method
from fastrobust.timing import NULL_TIMER
from fastrobust.training.batches import micro_seed
from fastrobust.training.engine import Backward, backward_calls, method_step
from fastrobust.training.lora import apply_lora, new_modules, require_peft
from fastrobust.training.model_card import resolved_scales
from fastrobust.training.run import batch_layout, resolve_config

if TYPE_CHECKING:  # annotations only
    from collections.abc import Sequence

    from torch import nn
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from fastrobust.config import AverageConfig, Config, TaskConfig
    from fastrobust.methods.registry import MethodSection

__all__ = [
    "EmbeddingNoiseCallback",
    "EpochPermutationSampler",
    "RobustTrainer",
    "TextClassificationDataset",
    "WeightAveragingCallback",
    "lora_model",
    "resolve_method",
    "training_arguments",
]

# RobustTrainer's keyword arguments that are not Trainer's: the fields of the method sections
_METHOD_FIELDS = frozenset(
    name
    for section in (BaselineConfig, AdversarialConfig, NoiseConfig, SynonymConfig)
    for name in section.model_fields
    if name != "kind"
)


def resolve_method(
    method: str | Mapping[str, Any] | RobustMethod | Any = "baseline",
    *,
    task_synonyms: Mapping[str, list[str]] | None = None,
    **fields: Any,
) -> RobustMethod:
    """A built fastrobust method from a kind (plus the section's fields), a dict, a section or a method.

    ``resolve_method("pgd", epsilon=0.1, steps=2)`` equals the config section
    ``{kind: pgd, epsilon: 0.1, steps: 2}``; invalid fields raise ConfigError naming them.
    """
    if isinstance(method, RobustMethod):
        if fields:
            raise ConfigError(f"RobustTrainer: method fields {sorted(fields)} given with a built method")
        return method
    if isinstance(method, str):
        section: Any = {"kind": method, **fields}
    elif isinstance(method, Mapping):
        section = {**method, **fields}
    elif hasattr(method, "kind") and hasattr(method, "model_dump"):
        section = {**method.model_dump(), **fields} if fields else method
    else:
        raise ConfigError(
            f"RobustTrainer: method must be a kind, a dict, a method section or a RobustMethod, "
            f"got {type(method).__name__}"
        )
    return build_method(section, task_synonyms=task_synonyms)


def training_arguments(cfg: Config, output_dir: str | Path, **overrides: Any) -> Any:
    """``TrainingArguments`` equal to a fastrobust config's ``optim``/``seed``/precision sections.

    per-device batch = micro batch, accumulation = batch / (micro x WORLD_SIZE), torch AdamW
    (``adamw_torch``), linear-style scheduler with ``ceil(warmup_ratio * steps)`` warmup steps,
    clipping at ``max_grad_norm``; ``overrides`` are passed on (e.g. ``logging_steps=1``).
    ``cfg``: a :class:`fastrobust.config.Config`, a YAML path or None (the demo).
    """
    cfg = resolve_config(cfg)
    o = cfg.optim
    micro, accum = batch_layout(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": cfg.seed,
        "per_device_train_batch_size": micro,
        "per_device_eval_batch_size": cfg.eval.batch_size,
        "gradient_accumulation_steps": accum,
        "learning_rate": o.learning_rate,
        "weight_decay": o.weight_decay,
        "adam_epsilon": o.adam_epsilon,
        "max_grad_norm": o.max_grad_norm or 0.0,
        "lr_scheduler_type": o.scheduler,
        "optim": "adamw_torch",
        "bf16": cfg.model.precision == "bf16",
        "fp16": cfg.model.precision == "fp16",
        "report_to": "none",
    }
    if o.max_steps is not None:
        kwargs["max_steps"] = o.max_steps
    else:
        kwargs["num_train_epochs"] = o.epochs
    # A float in [0, 1) is a ratio for Trainer, rounded up like ours: ceil(ratio * total steps).
    kwargs["warmup_steps"] = o.warmup_ratio
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def lora_model(name_or_path: str | Path, num_labels: int, **lora: Any) -> Any:
    """A sequence classifier from ``name_or_path`` with LoRA adapters, as ``model.lora`` builds it.

    ``lora``: the fields of :class:`fastrobust.config.LoraSection` (``r=8``, ``alpha=16``,
    ``dropout=0.1``, ``target_modules=None`` = PEFT's default for the architecture, i.e. query and
    value for BERT/XLM-R, ``modules_to_save=None`` = the head plus every module the checkpoint
    lacks); invalid ones raise ConfigError naming them. Needs ``pip install fastrobust[peft]``.
    Seed torch before calling it for a reproducible head and adapter initialisation.
    """
    require_peft()
    try:
        section = LoraSection(**lora)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"lora_model: {where}: {first['msg']}") from None
    # ignore_mismatched_sizes: a checkpoint's own head of another size is re-initialised (num_labels
    # is the only size this call changes); the head trains in full with the adapter anyway.
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(name_or_path), num_labels=num_labels, ignore_mismatched_sizes=True, output_loading_info=True
    )
    return apply_lora(model, section, base_path=str(name_or_path), fresh=new_modules(info))


# --------------------------------------------------------------------------------------------
# the trainer


def _trainer_kwargs() -> set[str]:
    return set(inspect.signature(Trainer.__init__).parameters)


class RobustTrainer(Trainer):
    """``transformers.Trainer`` that trains with a fastrobust method (see the module docstring).

    Extra keyword arguments (besides Trainer's): ``method`` (kind, dict, section or built
    method; default ``"baseline"``) and the method section's fields (``epsilon=``, ``sigma=`` ...),
    ``task_synonyms`` (RS-DA's word -> [synonyms] table when the section names no file),
    ``max_length`` (for text datasets; default 128), ``data_order`` (``"trainer"`` or
    ``"fastrobust"``), ``reseed`` (default True) and ``task`` (a fastrobust task section, written
    to ``fastrobust.json`` so that ``fastrobust evaluate MODEL_DIR`` knows what to test on).
    ``evaluate``/``predict`` also accept text datasets.

    Metrics: without a ``compute_metrics`` of the caller's, every evaluation reports ``accuracy``,
    ``roc_auc``, ``ece`` and the predicted-class rates (``rate_<class id>``); with
    ``calibration_reference`` (C rates, or ``"first"``, the default: the predicted rates of the
    first set of a dict ``eval_dataset`` — put the training language first) also
    ``calibrated_accuracy`` after the label-free correction
    (:func:`fastrobust.evaluate.calibration.classification_metrics`).

    ``average`` (``{"start": 0.5, "every_steps": 30}`` or an :class:`AverageConfig`): weight
    averaging; after ``train()``, ``trainer.averaging.save_averaged(trainer, DIR)`` writes the
    averaged model (:mod:`fastrobust.integrations.hf_average`).
    """

    def __init__(
        self,
        *args: Any,
        method: str | Mapping[str, Any] | MethodSection | RobustMethod = "baseline",
        task_synonyms: Mapping[str, list[str]] | None = None,
        max_length: int = 128,
        data_order: str = "trainer",
        reseed: bool = True,
        task: TaskConfig | Mapping[str, Any] | None = None,
        calibration_reference: str | Sequence[float] = "first",
        average: AverageConfig | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        accepted = _trainer_kwargs()
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in accepted}
        unknown = sorted(set(fields) - _METHOD_FIELDS)
        if unknown:
            raise ConfigError(
                f"RobustTrainer: unknown keyword argument(s) {unknown} (neither Trainer's nor a method field)"
            )
        if data_order not in ("trainer", "fastrobust"):
            raise ConfigError(
                f"RobustTrainer: data_order must be 'trainer' or 'fastrobust', got {data_order!r}"
            )
        self.robust_method = resolve_method(method, task_synonyms=task_synonyms, **fields)
        self.data_order = data_order
        self.reseed = reseed
        self.max_length = max_length
        self.task_section = task.model_dump(mode="json") if hasattr(task, "model_dump") else task
        tokenizer = kwargs.get("processing_class")
        if tokenizer is None and len(args) > 5:
            tokenizer = args[5]
        if kwargs.get("data_collator") is None and len(args) <= 2 and tokenizer is not None:
            kwargs["data_collator"] = RightPadding(tokenizer)
        self._reference = None if isinstance(calibration_reference, str) else list(calibration_reference)
        self._reference_from_first = calibration_reference == "first"
        self._last_rates: list[float] | None = None
        if kwargs.get("compute_metrics") is None and len(args) <= 7:
            kwargs["compute_metrics"] = self._robust_metrics
        super().__init__(*args, **kwargs)
        # average: weight averaging of the trainable weights (fastrobust.integrations.hf_average)
        self.averaging = WeightAveragingCallback(average) if average is not None else None
        if self.averaging is not None:
            self.add_callback(self.averaging)
        self.train_dataset = self._prepare_text(self.train_dataset, train=True)
        if isinstance(self.eval_dataset, Mapping):
            self.eval_dataset = {k: self._prepare_text(v, train=False) for k, v in self.eval_dataset.items()}
        else:
            self.eval_dataset = self._prepare_text(self.eval_dataset, train=False)
        # Relative scales are measured on the embedding table as it is now (before training).
        self.robust_method.setup(self.model)
        self._calls = backward_calls(self.robust_method.cfg) if self.robust_method.cfg is not None else 1
        self._micro_step = (-1, 0)  # (global step, micro-batches run in it)

    # ---- data -----------------------------------------------------------------------------
    # Any in the overrides below: transformers.Trainer's own signatures (any dataset, its
    # EvalPrediction, num_items_in_batch) stay as Trainer declares them.

    def _prepare_text(self, dataset: Any, *, train: bool) -> Any:
        names = getattr(dataset, "column_names", None)
        per_epoch = redraws_per_epoch(self.robust_method)
        if names is None or "input_ids" in names:
            if train and per_epoch:
                raise DataError(
                    f"{self.robust_method.label}: re-draws the training text every epoch; pass a text "
                    "train_dataset (columns sentence1, [sentence2], label), not a tokenized one"
                )
            return dataset
        if "sentence1" not in names:
            return dataset
        if self.processing_class is None:
            raise ConfigError("RobustTrainer: a text dataset needs processing_class=tokenizer")
        return TextClassificationDataset(
            dataset,
            self.processing_class,
            self.max_length,
            method=self.robust_method if train else None,
            seed=self.args.seed,
        )

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler | None:
        if self.data_order != "fastrobust":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        return EpochPermutationSampler(len(dataset), batch, args.seed)

    def evaluate(self, eval_dataset: Any = None, *args: Any, **kwargs: Any) -> dict[str, float]:
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._prepare_text(eval_dataset, train=False)
        first = (
            isinstance(eval_dataset, str)
            and isinstance(self.eval_dataset, Mapping)
            and eval_dataset == next(iter(self.eval_dataset), None)
        )
        if first and self._reference_from_first:
            self._reference = None  # the first set's own rates become the reference (below)
        metrics = super().evaluate(eval_dataset, *args, **kwargs)
        if first and self._reference_from_first:
            self._reference = self._last_rates
        return metrics

    def _robust_metrics(self, eval_pred: Any) -> dict[str, float]:
        """accuracy, roc_auc, ece, rate_<c> and (with a reference) calibrated_accuracy."""
        from fastrobust.evaluate.calibration import classification_metrics

        logits = (
            eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        )
        m = classification_metrics(logits, eval_pred.label_ids, self._reference)
        self._last_rates = m["predicted_rates"]
        out = {k: v for k, v in m.items() if isinstance(v, float)}
        out.update({f"rate_{c}": r for c, r in enumerate(m["predicted_rates"])})
        return out

    def predict(self, test_dataset: Any, *args: Any, **kwargs: Any) -> Any:
        return super().predict(self._prepare_text(test_dataset, train=False), *args, **kwargs)

    # ---- one micro-batch ------------------------------------------------------------------

    def _backward(self, deepspeed: bool) -> Backward:
        accelerator = self.accelerator
        scale = 1.0 / self.current_gradient_accumulation_steps
        calls = self._calls
        done = [0]

        def backward(loss: torch.Tensor) -> None:
            done[0] += 1
            if not deepspeed:
                accelerator.backward(loss * scale)
                return
            # One optimizer step per accumulation window: FreeLB's earlier backwards of the
            # boundary micro-batch must not be boundaries themselves.
            state = accelerator.gradient_state
            sync = state.sync_gradients
            state._set_sync_gradients(sync and done[0] >= calls)
            try:
                accelerator.backward(loss * scale, scale_wrt_gas=False)
            finally:
                state._set_sync_gradients(sync)

        return backward

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """One micro-batch through the method; returns loss / accumulation steps, as Trainer does."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        if "labels" not in inputs and "label" in inputs:
            inputs["labels"] = inputs.pop("label")
        step, k = self._micro_step
        k = k + 1 if step == self.state.global_step else 0
        self._micro_step = (self.state.global_step, k)
        if self.reseed:
            # As fastrobust train: the randomness of micro-batch q of step s depends on (seed, s, q).
            q = k * max(1, self.args.world_size) + self.args.process_index
            torch.manual_seed(micro_seed(self.args.seed, self.state.global_step, q))
        from accelerate.utils import DistributedType  # transformers' optional backend: read per step only

        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        with self.compute_loss_context_manager():
            loss = method_step(
                self.robust_method,
                model,
                inputs,
                self._backward(deepspeed),
                NULL_TIMER,
                autocast=contextlib.nullcontext(),
                expected_calls=self._calls if deepspeed else None,
            )
        return loss.detach().float() / self.current_gradient_accumulation_steps

    # ---- saving ---------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        out = Path(output_dir if output_dir is not None else self.args.output_dir)
        m = self.robust_method
        info: dict[str, Any] = {
            "method": m.cfg.model_dump(mode="json") if m.cfg is not None else {"kind": m.kind},
            "embedding_rms": m.embedding_rms,
            "max_length": self.max_length,
        }
        if m.cfg is not None and (scales := resolved_scales(m)):
            info["resolved_scales"] = scales
        if self.task_section is not None:
            info["task"] = self.task_section
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "fastrobust.json", info)


# --------------------------------------------------------------------------------------------
# RS-RP as a callback for any Trainer


class EmbeddingNoiseCallback(TrainerCallback):
    """RS-RP for an unchanged ``Trainer``: fused, masked noise on the input embeddings in training.

    Adds :func:`fastrobust.methods.add_embedding_noise` to the model when training begins and
    removes it when training ends (evaluation runs in eval mode, so it sees no noise).
    ``sigma_mode``: ``absolute``, ``relative`` (x RMS of the embedding table) or ``neftune``.
    """

    def __init__(
        self,
        sigma: float,
        *,
        sigma_mode: str = "relative",
        distribution: str = "gaussian",
        seed: int | None = None,
    ) -> None:
        self.sigma, self.sigma_mode, self.distribution, self.seed = sigma, sigma_mode, distribution, seed
        self.handle: Any = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ConfigError("EmbeddingNoiseCallback: the Trainer passed no model to on_train_begin")
        if self.handle is None:
            self.handle = add_embedding_noise(
                model, self.sigma, sigma_mode=self.sigma_mode, distribution=self.distribution, seed=self.seed
            )

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
