"""Training orchestration: ``train(config)`` (also ``fastrobust.train``) and the ``fastrobust
train`` command.

``train`` fine-tunes every method section of a config (plain torch, or a DeepSpeed engine when a
DeepSpeed JSON is given), selects on English dev, evaluates XLT and G-XLT, and writes models,
reports, checkpoints and throughput summaries; see :mod:`fastrobust.training.trainer`.
Imported lazily so that ``fastrobust --help`` does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastrobust.config import Config

__all__ = ["train"]


def train(
    config: Config | str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    methods: Sequence[str] | None = None,
    resume: bool = False,
    deepspeed: str | None = None,
    seeds: Sequence[int] | None = None,
    parallel: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tunes and evaluates every selected method of ``config``.

    See :func:`fastrobust.training.trainer.train` for the arguments and the output layout.
    """
    from fastrobust.training.trainer import train as _train  # torch and transformers: not for --help

    return _train(
        config,
        overrides,
        methods=methods,
        resume=resume,
        deepspeed=deepspeed,
        seeds=seeds,
        parallel=parallel,
        overwrite=overwrite,
    )
