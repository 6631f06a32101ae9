"""LoRA adapters (PEFT) on the sequence classifier of ``fastrobust train`` (``model.lora:``).

``apply_lora`` wraps the HF model in a ``peft.PeftModel``: every targeted linear layer
W (out x in) computes ``W x + (alpha / r) * B(A(dropout(x)))`` with A (r x in) random and
B (out x r) zero at the start, so the wrapped model starts as the base model. Only A, B and the
``modules_to_save`` (trained in full) have ``requires_grad``; the embedding table is frozen.

The robust methods need nothing else: ``PeftModel.get_input_embeddings()`` is the base model's
word-embedding module and ``inputs_embeds`` / ``position_ids`` / ``token_type_ids`` reach the base
model's forward, so the perturbation (PGD/FreeLB delta, RS-RP noise) is added to the frozen
table's output and its gradient flows through the adapters to delta.

Modules the base checkpoint does not hold (the classifier head, and e.g. BERT's pooler when the
checkpoint was saved by a masked-LM model) are freshly initialised at load time; they are added
to ``modules_to_save`` so that they train and are saved with the adapter — otherwise reloading the
adapter folder would initialise them anew (other logits).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from fastrobust.errors import ConfigError

if TYPE_CHECKING:  # annotations only
    import torch

    from fastrobust.config import LoraSection

# PEFT's sequence-classification task adds these head names to modules_to_save itself.
HEAD_MODULES = ("classifier", "score")


def require_peft() -> Any:
    """The ``peft`` module, or a ConfigError saying how to install it."""
    try:
        import peft  # optional (the peft extra): imported where LoRA is used
    except ImportError:
        raise ConfigError(
            "model.lora: needs the peft package; install it with pip install 'fastrobust[peft]'"
        ) from None
    return peft


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` (or the model inside a DeepSpeed engine / DDP wrapper) is a ``PeftModel``."""
    try:
        from peft import PeftModel  # optional (the peft extra)
    except ImportError:
        return False
    return isinstance(getattr(model, "module", model), PeftModel)


def new_modules(loading_info: dict[str, Any]) -> list[str]:
    """Dotted names of the modules whose weights ``from_pretrained`` initialised afresh.

    ``loading_info``: the dict ``from_pretrained(..., output_loading_info=True)`` returns, whose
    ``missing_keys`` (and ``mismatched_keys``, a re-initialised head) name parameters such as
    ``bert.pooler.dense.weight``. Names under a head module PEFT saves anyway, or under another
    listed module, are dropped (a module is wrapped once).
    """
    keys = list(loading_info.get("missing_keys") or [])
    keys += [k[0] if isinstance(k, (tuple, list)) else k for k in loading_info.get("mismatched_keys") or []]
    names = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    covered = set(HEAD_MODULES) | names

    def under_another(name: str) -> bool:
        parts = name.split(".")
        return any(".".join(parts[:i]) in covered for i in range(1, len(parts)))

    return sorted(n for n in names if n not in HEAD_MODULES and not under_another(n))


def apply_lora(
    model: nn.Module, section: LoraSection, *, base_path: str, fresh: Iterable[str] = ()
) -> nn.Module:
    """``model`` wrapped with LoRA adapters as ``section`` (a ``model.lora`` section) says.

    ``base_path``: the base checkpoint (hub name or folder), written to ``adapter_config.json``
    (a local folder as an absolute path, so the adapter folder loads from any directory);
    ``fresh``: modules the checkpoint lacked (:func:`new_modules`), trained and saved in full
    unless ``section.modules_to_save`` lists the modules itself.
    """
    peft = require_peft()
    save = list(section.modules_to_save) if section.modules_to_save is not None else list(fresh)
    config = peft.LoraConfig(
        task_type=peft.TaskType.SEQ_CLS,
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=list(section.target_modules) if section.target_modules else None,
        modules_to_save=save or None,
    )
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        # PEFT: target modules not found, or no default for this architecture
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        asked = list(section.target_modules) if section.target_modules else "PEFT's default"
        raise ConfigError(
            f"model.lora.target_modules: {asked} for {type(model).__name__}, whose linear layers are "
            f"named {', '.join(linear)}: {exc}"
        ) from None
    local = Path(base_path).expanduser()
    wrapped.peft_config["default"].base_model_name_or_path = (
        str(local.resolve()) if local.is_dir() else base_path
    )
    return wrapped


def full_numel(param: nn.Parameter) -> int:
    """The element count of ``param`` as the model defines it: under ZeRO-3 a partitioned
    parameter holds an empty placeholder (``numel() == 0``) and its real size in ``ds_numel``."""
    return int(getattr(param, "ds_numel", param.numel()))


def lora_summary(model: nn.Module) -> dict[str, Any]:
    """What the model card and ``fastrobust.json`` record of a PEFT model's adapter."""
    inner = getattr(model, "module", model)
    config = inner.peft_config["default"]
    trainable = sum(full_numel(p) for p in inner.parameters() if p.requires_grad)
    total = sum(full_numel(p) for p in inner.parameters())
    return {
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": sorted(config.target_modules or []),
        "modules_to_save": sorted(set(config.modules_to_save or [])),
        "base_model": config.base_model_name_or_path,
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
    }


def rebuild(model: nn.Module, device: torch.device) -> nn.Module:
    """A fresh, unsharded copy of PEFT model ``model``'s architecture (base from its config, same
    adapter layout): where DeepSpeed holds the trained one, the best parameters are loaded into this."""
    from transformers import AutoModelForSequenceClassification  # ~1.3 s: loaded when a model is built

    peft = require_peft()
    inner = getattr(model, "module", model)
    base = AutoModelForSequenceClassification.from_config(inner.base_model.model.config)
    config = copy.deepcopy(inner.peft_config["default"])
    config.inference_mode = False
    return peft.get_peft_model(base, config).to(device)
