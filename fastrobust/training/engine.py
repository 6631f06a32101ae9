"""The engine side of a training step: optimizer, scheduler, precision, backward — and the one call
into a method's per-step code, shared by our trainer and the ``transformers.Trainer`` integration.

A robust-training method (:mod:`fastrobust.methods`) owns the forward passes and the perturbation
of one micro-batch and calls ``backward(loss)`` one or more times (FreeLB: K times, with loss/K).
What ``backward`` does depends on who drives the model:

- plain torch (:func:`torch_backward`): ``(loss / A).backward()`` outside autocast, through the
  fp16 ``GradScaler`` when there is one; A = accumulation steps;
- DeepSpeed (:func:`deepspeed_backward`): ``engine.backward(loss / A, scale_wrt_gas=False)`` and
  ``engine.step()``; every backward is one engine micro-step, so the engine is configured with
  ``A * K`` accumulation steps (see :func:`fastrobust.training.ds_config.resolve_deepspeed_config`);
- Accelerate / ``transformers.Trainer`` (:mod:`fastrobust.integrations.hf`):
  ``accelerator.backward(loss / A)``.

:func:`method_step` runs ``method.training_step`` under autocast with such a backward, counting its
calls. :class:`TrainEngine` builds and steps the optimizer for our own trainer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as tdist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from fastrobust.methods import registry
from fastrobust.methods.base import Backward
from fastrobust.methods.registry import MethodSection
from fastrobust.timing import SectionTimer
from fastrobust.training.compiled import compile_engine, compile_model
from fastrobust.training.ds_config import resolve_deepspeed_config, zero_stage
from fastrobust.training.guard import nonfinite

if TYPE_CHECKING:  # annotations only
    from fastrobust.config import Config
    from fastrobust.methods.base import RobustMethod
    from fastrobust.training.distributed import DistContext

# --------------------------------------------------------------------------------------------
# backward adapters and the per-micro-batch method call


class CountingBackward:
    """Wraps a backward callable and counts how often the method called it."""

    def __init__(self, backward: Backward) -> None:
        self._backward = backward
        self.calls = 0

    def __call__(self, loss: Tensor) -> None:
        self._backward(loss)
        self.calls += 1


def torch_backward(accum: int, scaler: torch.amp.GradScaler | None, device_type: str) -> Backward:
    """``(loss / accum).backward()``, through ``scaler.scale`` when an fp16 grad scaler is given."""

    def backward(loss: Tensor) -> None:
        scaled = loss / accum
        if scaler is not None:
            scaled = scaler.scale(scaled)
        # Backward outside autocast: its ops follow the dtypes autocast chose in forward.
        with torch.autocast(device_type=device_type, enabled=False):
            scaled.backward()

    return backward


def deepspeed_backward(engine: Any, accum: int) -> Backward:  # Any: deepspeed is optional
    """One DeepSpeed engine micro-step per call: backward of ``loss / accum``, then ``engine.step()``."""

    def backward(loss: Tensor) -> None:
        # 1/accum here (the method already divided by K for FreeLB); DeepSpeed's own
        # division by its accumulation count (accum * K) is switched off.
        engine.backward(loss / accum, scale_wrt_gas=False)
        engine.step()

    return backward


def autocast_context(
    precision: str, device_type: str, *, enabled: bool = True
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16/fp16 for ``precision`` in (bf16, fp16); a no-op for fp32 or not enabled."""
    if not enabled or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def method_step(
    method: RobustMethod,
    model: torch.nn.Module,
    batch: Mapping[str, Tensor],
    backward: Backward,
    timer: SectionTimer,
    *,
    autocast: contextlib.AbstractContextManager | None = None,
    expected_calls: int | None = None,
) -> Tensor:
    """``method.training_step(model, batch, backward, timer)`` on one micro-batch; the detached loss.

    autocast: the context the forward passes run in (None: none). expected_calls: when given,
    the number of ``backward`` calls the engine was configured for (DeepSpeed counts its
    micro-steps); a method that calls it another number of times raises RuntimeError.
    """
    counted = CountingBackward(backward)
    with autocast if autocast is not None else contextlib.nullcontext():
        loss = method.training_step(model, batch, counted, timer)
    if expected_calls is not None and counted.calls != expected_calls:
        raise RuntimeError(
            f"method {method.label} called backward {counted.calls} times on one micro-batch; "
            f"the DeepSpeed engine was configured for {expected_calls}"
        )
    return loss


def backward_calls(mcfg: MethodSection) -> int:
    """How many times a method section's ``training_step`` calls backward per micro-batch (the
    method's own declaration, see :mod:`fastrobust.methods.registry`)."""
    return registry.backward_calls(mcfg)


# --------------------------------------------------------------------------------------------
# our own trainer's optimizer side


def use_fused(device: torch.device) -> bool:
    """Whether our AdamW is the fused one: on CUDA only.

    Fused AdamW skips a step on the device when told ``found_inf`` (as grad scalers do): how a
    non-finite step is dropped on a GPU without waiting for the GPU. On the CPU there is nothing to
    wait for, so the step is skipped by reading the flag, and the optimizer stays the unfused one
    whose numbers the measured CPU results (README, docs/synthetic.md) were obtained with.
    """
    return device.type == "cuda"


def total_norm(grads: list[Tensor], device: torch.device) -> Tensor:
    """L2 norm of all gradients together, a 0-d tensor on ``device`` (no synchronisation)."""
    if not grads:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2.0)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Matrices decay; biases and norm scales (1-D) do not — the usual BERT fine-tuning rule.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class EngineRun(Protocol):
    """What :class:`TrainEngine` reads of a run (:class:`fastrobust.training.run.RunContext` has it;
    :func:`standalone_engine` makes one for a single process outside a run)."""

    cfg: Config
    dist: DistContext
    accum: int
    micro: int
    warmup_steps: int
    total_steps: int
    ds_raw: dict[str, Any] | None


@dataclass(frozen=True)
class _Standalone:
    cfg: Config
    dist: DistContext
    accum: int
    micro: int
    warmup_steps: int
    total_steps: int
    ds_raw: dict[str, Any] | None = None


def standalone_engine(
    model: torch.nn.Module,
    cfg: Config,
    device: torch.device,
    *,
    backward_calls: int = 1,
    total_steps: int = 10**6,
) -> TrainEngine:
    """The plain-torch :class:`TrainEngine` of config ``cfg`` for ``model`` in one process, outside a
    run: what the speed benchmarks and profilers step, so that they measure the trainer's own step
    (``micro_step`` then ``optimizer_step``) and not a copy of it. One micro-batch per step, no
    warmup; ``total_steps`` sizes the learning-rate schedule."""
    from fastrobust.training.distributed import DistContext  # torch.distributed: loaded with the engine

    dist = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device(device), deepspeed=False)
    run = _Standalone(cfg, dist, 1, cfg.optim.batch_size, 0, total_steps)
    return TrainEngine(model, run, backward_calls=backward_calls)


class TrainEngine:
    """Optimizer, scheduler and precision for one model: plain torch, or a DeepSpeed engine.

    Plain torch: ``torch.optim.AdamW`` over :func:`param_groups`, a transformers scheduler, an
    fp16 ``GradScaler`` when precision is fp16, autocast around forwards. DeepSpeed (``run.ds_raw``
    set): ``deepspeed.initialize`` with the JSON's ``"auto"`` fields filled from the config, a
    client torch AdamW unless the JSON names an optimizer; the engine does precision,
    clipping, optimizer and scheduler steps itself.

    ``model``: the module the methods drive (the compiled forward with ``model.compile``, see
    :mod:`fastrobust.training.compiled`); ``module``: the HF model itself (evaluation, state dicts).
    """

    def __init__(self, model: torch.nn.Module, run: EngineRun, *, backward_calls: int) -> None:
        from transformers import get_scheduler  # transformers (~1.3 s) loads when an engine is built

        cfg = run.cfg
        self.device = run.dist.device
        self.precision = cfg.model.precision
        self.world_size = run.dist.world_size
        self.accum = run.accum
        self.max_grad_norm = cfg.optim.max_grad_norm
        self.backward_calls = backward_calls
        self.engine: Any = None
        self.scaler: Any = None
        self.ds_cfg: dict[str, Any] | None = None
        self.module = model
        o = cfg.optim
        groups = param_groups(model, o.weight_decay)

        def make_scheduler(optimizer: torch.optim.Optimizer) -> Any:
            return get_scheduler(
                o.scheduler,
                optimizer=optimizer,
                num_warmup_steps=run.warmup_steps,
                num_training_steps=run.total_steps,
            )

        if run.ds_raw is None:
            self.fused = use_fused(self.device)
            self.optimizer: Any = torch.optim.AdamW(
                groups, lr=o.learning_rate, eps=o.adam_epsilon, fused=self.fused or None
            )
            self.scheduler: Any = make_scheduler(self.optimizer)
            if self.precision == "fp16":
                self.scaler = torch.amp.GradScaler(self.device.type)
            self.model: Any = model
            if cfg.model.compile:
                self.model = compile_model(model, cfg.model.compile_mode, cfg.model.compile_backend)
            return
        import deepspeed  # optional: only DeepSpeed runs need it installed

        self.ds_cfg = resolve_deepspeed_config(
            run.ds_raw,
            cfg,
            micro_batch_size=run.micro,
            grad_accum=run.accum,
            total_steps=run.total_steps,
            warmup_steps=run.warmup_steps,
            hidden_size=getattr(model.config, "hidden_size", None),
            backward_calls=backward_calls,
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
        if cfg.model.compile:
            self.model = compile_engine(self.engine, cfg.model.compile_mode, cfg.model.compile_backend)

    @property
    def zero_stage(self) -> int:
        return zero_stage(self.ds_cfg) if self.ds_cfg else 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for forwards on the plain path (DeepSpeed handles precision itself)."""
        return autocast_context(self.precision, self.device.type, enabled=self.engine is None)

    def backward(self) -> Backward:
        """The backward a method gets for one micro-batch (see the module docstring)."""
        if self.engine is not None:
            return deepspeed_backward(self.engine, self.accum)
        return torch_backward(self.accum, self.scaler, self.device.type)

    def micro_step(self, method: RobustMethod, batch: Mapping[str, Tensor], timer: SectionTimer) -> Tensor:
        """One micro-batch through ``method.training_step``; the detached loss."""
        return method_step(
            method,
            self.model,
            batch,
            self.backward(),
            timer,
            autocast=self.autocast(),
            expected_calls=self.backward_calls if self.engine is not None else None,
        )

    @property
    def skips_nonfinite(self) -> bool:
        """Whether a step with a non-finite loss/gradient is skipped (plain path) or already applied
        (DeepSpeed applies its step inside ``backward``; only its fp16 loss scaler skips overflows)."""
        return self.engine is None

    def optimizer_step(self, loss: Tensor | None = None) -> tuple[Any, Tensor]:
        """After the micro-batches of one step: reduce, unscale, clip, step, zero.

        Returns ``(grad norm or None, bad)`` where ``bad`` is a 0-d bool device tensor: this step's
        mean loss (over ranks) or gradient norm was not finite. On the plain path such a step is
        skipped (on CUDA on the device, by fused AdamW's ``found_inf``; the scheduler still advances),
        without a host synchronisation (on the CPU, with the unfused optimizer, the flag is read: there is
        no device to wait for). Under fp16 the grad scaler skips gradient overflows itself (routine:
        it lowers the scale), so only a non-finite loss counts as bad there.
        """
        if self.engine is not None:
            grad_norm = self.engine.get_global_grad_norm()
            return grad_norm, nonfinite(loss, grad_norm, device=self.device)
        params = [p for p in self.module.parameters() if p.requires_grad]
        loss_bad = nonfinite(loss, device=self.device)
        if self.world_size > 1:
            loss_bad = self._all_reduce_grads(params, loss_bad)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        else:
            grad_norm = total_norm([p.grad for p in params if p.grad is not None], self.device)
        if self.scaler is not None:
            bad = loss_bad
            self.scaler.step(self.optimizer)  # passes its own found_inf to the fused optimizer
            self.scaler.update()
        else:
            bad = loss_bad | nonfinite(grad_norm, device=self.device)
            if self.fused:
                self.optimizer.found_inf = bad.to(torch.float32)
                try:
                    self.optimizer.step()
                finally:
                    del self.optimizer.found_inf
            elif not bool(bad):  # unfused (CPU): read the flag; on the CPU that costs no wait
                self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, bad

    def _all_reduce_grads(self, params: list[torch.nn.Parameter], flag: Tensor) -> Tensor:
        """Averages the accumulated gradients over ranks (torchrun without DeepSpeed), in one flat
        buffer that also carries this rank's non-finite-loss ``flag``; returns the flag of any rank."""
        grads = [p.grad for p in params if p.grad is not None]
        flat = _flatten_dense_tensors([*grads, flag.to(grads[0].dtype).reshape(1)])
        tdist.all_reduce(flat)
        any_bad = flat[-1] > 0
        flat = flat[:-1] / self.world_size
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)
        return any_bad

    def lr(self) -> float:
        groups = getattr(self.optimizer, "param_groups", None) or []
        return float(groups[0]["lr"]) if groups else float("nan")

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scheduler and scaler states of the plain path (DeepSpeed saves its own)."""
        if self.engine is not None:
            return {}
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a checkpoint written on another device type
            group["fused"] = self.fused or None
            group["foreach"] = None if self.fused else group.get("foreach")
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])

    def close(self) -> None:
        self.engine = self.model = self.module = self.optimizer = self.scheduler = self.scaler = None
