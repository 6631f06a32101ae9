"""fastrobust: fast robust fine-tuning of multilingual encoders.

Public tensor ops (Triton on CUDA, pure torch elsewhere)::

    from fastrobust import add_noise, noisy_copies, pgd_init, pgd_step

and the training entry point ``fastrobust.train(config)``. Heavy modules are
imported lazily so that ``import fastrobust`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "add_noise": "fastrobust.ops",
    "noisy_copies": "fastrobust.ops",
    "pgd_init": "fastrobust.ops",
    "pgd_step": "fastrobust.ops",
    "train": "fastrobust.training",
    "load_config": "fastrobust.config",
    "FastrobustError": "fastrobust.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastrobust' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
