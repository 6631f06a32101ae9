"""``model.compile``: the training forward through ``torch.compile``, compiled once for every length.

Batches are padded to their longest example, so the sequence length L changes from batch to
batch. Dynamo would specialise the first graph on L and recompile for the second length seen
(and then guess which dimensions are dynamic). :class:`CompiledModel` instead marks dimension 1
(L) of every 2-D and 3-D tensor argument dynamic before each call — ``input_ids`` /
``attention_mask`` / ``token_type_ids`` / ``position_ids`` (B, L) and ``inputs_embeds`` (B, L, H)
— so one graph serves every padded length. The micro-batch size B is fixed in training (the
incomplete last batch is dropped) and stays static.

Only training goes through the compiled forward: dev and test evaluation call the module itself
(eval mode, other batch sizes: compiling them would cost graphs that a training step never uses;
under DeepSpeed, whose ``engine.compile`` compiles the module in place, they run in :func:`eager`),
and checkpoints, the selection's best state and the saved model read the module's own parameters,
which the compiled forward shares.

The number of graphs Dynamo compiled is read from ``torch._dynamo.utils.counters`` (process-wide;
one training process compiles only this forward): after the first step it must stay constant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastrobust.errors import ConfigError


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (each recompile counts one)."""
    from torch._dynamo.utils import counters  # Dynamo (~1.7 s to import) loads with model.compile only

    return int(counters["stats"]["unique_graphs"])


def check_backend(backend: str) -> None:
    """ConfigError naming ``model.compile_backend`` when torch knows no such backend."""
    import torch._dynamo  # ~1.7 s to import: loaded with model.compile only

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ConfigError(f"model.compile_backend: unknown torch.compile backend {backend!r}; one of {known}")


def compile_options(mode: str, backend: str) -> dict[str, Any]:
    """Keyword arguments of ``torch.compile`` for ``model.compile_mode`` / ``model.compile_backend``.

    ``dynamic=None``: only the dimensions marked dynamic are symbolic (see the module docstring);
    the mode goes to the backend only when it is not the default (other backends take none).
    """
    check_backend(backend)
    options: dict[str, Any] = {"backend": backend, "dynamic": None}
    if mode != "default":
        options["mode"] = mode
    return options


def mark_length_dynamic(kwargs: dict[str, Any]) -> None:
    """Marks dimension 1 (the sequence length) of every (B, L) / (B, L, H) tensor dynamic.

    ``maybe_mark_dynamic``: if the model specialises L after all, Dynamo recompiles instead of
    failing (the compile count then shows it).
    """
    import torch._dynamo  # ~1.7 s to import: loaded with model.compile only

    for value in kwargs.values():
        if isinstance(value, torch.Tensor) and value.dim() in (2, 3) and value.shape[1] > 1:
            torch._dynamo.maybe_mark_dynamic(value, 1)


class CompiledModel:
    """Calls ``compiled`` (the compiled module or DeepSpeed engine) with the length marked dynamic.

    ``module`` is the HF model (``PeftModel`` with LoRA) whose parameters the compiled forward
    uses; it is exposed as ``.module``, as DDP and DeepSpeed engines do, so the methods find the
    input embeddings on it (:func:`fastrobust.methods.embeddings.unwrap_model`). Attribute reads
    other than the call go to the module.
    """

    def __init__(self, module: nn.Module, compiled: Callable[..., Any]) -> None:
        self.module = module
        self._compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        mark_length_dynamic(kwargs)
        return self._compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # only reached for names not set in __init__
        return getattr(self.__dict__["module"], name)


def eager(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Every compiled function runs eager inside the block (``torch.compiler.set_stance``).

    For evaluation: DeepSpeed's ``engine.compile`` compiles the module in place, so dev and test
    evaluation would otherwise compile graphs of their own (no grad, other batch sizes).
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def compile_model(module: nn.Module, mode: str, backend: str) -> CompiledModel:
    """``module``'s training forward compiled (plain torch path)."""
    return CompiledModel(module, torch.compile(module, **compile_options(mode, backend)))


def compile_engine(engine: Any, mode: str, backend: str) -> CompiledModel:  # Any: deepspeed is optional
    """A DeepSpeed engine's forward compiled with ``engine.compile`` (its hooks stay in place)."""
    options = compile_options(mode, backend)
    backend = options.pop("backend")
    engine.compile(backend=backend, compile_kwargs=options)
    return CompiledModel(engine.module, engine)
