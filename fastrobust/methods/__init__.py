"""Robust fine-tuning methods: baseline, PGD-AT, FreeLB, RS-RP (embedding noise), RS-DA (synonyms).

For the trainer::

    method = build_method(cfg.methods[i], task_synonyms=task.synonyms)
    method.setup(model)
    train_set = method.epoch_train_dataset(task.train, epoch, seed)
    loss = method.training_step(model, batch, backward, timer)

For users' own training loops (any HF sequence classifier, or a DeepSpeed engine)::

    handle = add_embedding_noise(model, sigma=0.1, sigma_mode="relative")   # fused, masked, train mode only
    handle.remove()
    loss = adversarial_step(model, batch, backward, steps=3, epsilon=0.1, step_size=0.03)
    loss = freelb_step(model, batch, backward, steps=3, epsilon=0.1, step_size=0.03)

Smoothed prediction and certification (Cohen et al. 2019) in the embedding space:
``smoothed_predict`` and ``certify`` (see :mod:`fastrobust.methods.smoothing`).

Heavy submodules are imported on first use so that ``import fastrobust.methods`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastrobust.errors import ConfigError
from fastrobust.methods.registry import kinds, lookup, register_method  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # base imports torch; the registry and the config layer must not
    from fastrobust.methods.base import RobustMethod
    from fastrobust.methods.registry import MethodSection

_LAZY = {
    "RobustMethod": "fastrobust.methods.base",
    "Baseline": "fastrobust.methods.baseline",
    "PGD": "fastrobust.methods.adversarial",
    "FreeLB": "fastrobust.methods.adversarial",
    "adversarial_step": "fastrobust.methods.adversarial",
    "freelb_step": "fastrobust.methods.adversarial",
    "find_perturbation": "fastrobust.methods.adversarial",
    "RandomPerturbation": "fastrobust.methods.noise",
    "noisy_embedding_step": "fastrobust.methods.noise",
    "neftune_sigma": "fastrobust.methods.noise",
    "SynonymSubstitution": "fastrobust.methods.synonyms",
    "SynonymTable": "fastrobust.methods.synonyms",
    "load_synonym_table": "fastrobust.methods.synonyms",
    "augment_dataset": "fastrobust.methods.synonyms",
    "substitute_sentence": "fastrobust.methods.synonyms",
    "embed_inputs": "fastrobust.methods.embeddings",
    "forward_from_embeds": "fastrobust.methods.embeddings",
    "embedding_rms": "fastrobust.methods.embeddings",
    "add_embedding_noise": "fastrobust.methods.hooks",
    "EmbeddingNoiseHandle": "fastrobust.methods.hooks",
    "smoothed_predict": "fastrobust.methods.smoothing",
    "predict": "fastrobust.methods.smoothing",
    "CertifyResult": "fastrobust.methods.smoothing",
    "certify": "fastrobust.methods.smoothing",
    "ABSTAIN": "fastrobust.methods.smoothing",
}

__all__ = sorted([*_LAZY, "build_method", "kinds", "register_method"])


def build_method(
    cfg: MethodSection | Mapping[str, Any], *, task_synonyms: Mapping[str, list[str]] | None = None
) -> RobustMethod:
    """The method a config section describes (its class is the registry's entry of its ``kind``).

    cfg: a method section (an instance of a registered method's ``config_class``), or a dict
    with ``kind`` that validates as one.
    task_synonyms: the task's own synonym table, used by ``rs-da`` when its section names no file.
    Raises ConfigError for an unknown kind or an invalid section.
    """
    if isinstance(cfg, Mapping):
        cfg = _validate_section(dict(cfg))
    return lookup(getattr(cfg, "kind", None)).method_class().build(cfg, task_synonyms=task_synonyms)


def _validate_section(data: dict[str, Any]) -> Any:
    # pydantic's schemas load only when a plain dict has to be validated
    from pydantic import ValidationError

    entry = lookup(data.get("kind"))
    try:
        return entry.config_class().model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<section>"
        raise ConfigError(
            f"methods ({entry.kind}): {loc}: {first['msg']} (got {first.get('input')!r})"
        ) from None


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastrobust.methods' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
