"""What the helpers of the step loop read of one method's run, as typed protocols.

:mod:`.resume` (checkpoints) and :mod:`.final` (test evaluation, files, summary) work on a run's
state — its engine (model, optimizer), its dev selection, its progress (step, losses, meter), its
paths and provenance (label, seed, folders, fingerprint) — not on the trainer class:
:class:`CheckpointedRun` and :class:`FinishingRun` name exactly those attributes, and
:class:`fastrobust.training.loop.MethodTrainer` has them. So neither module imports the loop (no
circle, type-only imports included; ``tests/test_import_graph.py``), and a reader or a type checker
follows every attribute to its type.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only
    import torch

    from fastrobust.config import Config
    from fastrobust.methods.base import RobustMethod
    from fastrobust.methods.registry import MethodSection
    from fastrobust.training.averaging import WeightAverage
    from fastrobust.training.distributed import DistContext
    from fastrobust.training.engine import TrainEngine
    from fastrobust.training.guard import DivergenceGuard
    from fastrobust.training.meter import ThroughputMeter
    from fastrobust.training.run import RunContext
    from fastrobust.training.selection import DevSelection


class CheckpointedRun(Protocol):
    """What a checkpoint saves and restores (:mod:`.resume`): the engine's model and optimizer
    state, the dev selection, the progress, and where the checkpoints of the run go."""

    # provenance and paths
    label: str
    cfg: Config
    run: RunContext
    dist: DistContext
    device: torch.device
    ckpt_root: Path
    fingerprint: dict[str, Any]
    # model and optimizer, selection, progress (restored in place by a resume)
    eng: TrainEngine
    selection: DevSelection
    averager: WeightAverage | None
    meter: ThroughputMeter
    step: int
    losses: list[float]
    resumed_from: int | None


class FinishingRun(CheckpointedRun, Protocol):
    """What the final evaluation and the files of a run read (:mod:`.final`), besides the above."""

    seed: int
    dir: Path
    mcfg: MethodSection
    method: RobustMethod
    guard: DivergenceGuard | None
    truncated: int | None
    graphs: list[int]

    def averaged_dir(self) -> Path:
        """The folder of the run's weight-averaged evaluation."""
        ...
