"""Divergence guard: optimizer steps with a non-finite loss or gradient norm are skipped, counted on
the device, and the run stops once more than ``optim.nonfinite_patience`` of them come in a row.

Counting costs no host synchronisation: :meth:`DivergenceGuard.observe` only updates 0-d device
tensors (run length ``r <- (r + 1) * bad``, its maximum, the total). The host reads them in
:meth:`DivergenceGuard.check`, called where the loop synchronises anyway (logged steps, dev
evaluation, checkpoints, the end). Because the maximum run length is kept, the decision does not
depend on how often ``check`` runs. The step itself is skipped by the optimizer on the device on
CUDA (fused AdamW's ``found_inf``, as mixed-precision grad scalers do), by reading the flag on the
CPU, where there is no device to wait for (see :mod:`.engine`).

Every rank takes the same decision: on the plain multi-process path the loss flag travels with the
gradient all-reduce, so all ranks see the same flags; :meth:`check` also takes the maximum over
ranks (needed under DeepSpeed, where each rank sees its own loss).
"""

from __future__ import annotations

import torch

from fastrobust.errors import DivergenceError
from fastrobust.training.distributed import DistContext


def nonfinite(*values: object, device: torch.device) -> torch.Tensor:
    """0-d bool tensor on ``device``: True when any of ``values`` (tensors or numbers; None ignored)
    is NaN or infinite. Device tensors stay on the device (no synchronisation)."""
    flag = torch.zeros((), dtype=torch.bool, device=device)
    for v in values:
        if v is None:
            continue
        t = v if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        flag = flag | ~torch.isfinite(t.detach().to(device, non_blocking=True)).all()
    return flag


def params_finite(state: dict[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of a state dict is finite (a host decision)."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


class DivergenceGuard:
    """Counts non-finite steps on the device; :meth:`check` stops the run beyond ``patience`` in a row."""

    def __init__(self, patience: int, device: torch.device, label: str) -> None:
        self.patience = patience
        self.label = label
        z = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731
        self._run, self._worst, self._total = z(), z(), z()
        self.skipped = 0  # host copy of the total, updated by check()

    def observe(self, bad: torch.Tensor) -> None:
        """Records one optimizer step; ``bad``: its 0-d bool non-finite flag (stays on the device)."""
        b = bad.to(torch.int64)
        self._run = (self._run + 1) * b
        self._worst = torch.maximum(self._worst, self._run)
        self._total = self._total + b

    def check(self, step: int, dist: DistContext, hint: str = "") -> None:
        """Host side (synchronises): raises DivergenceError when a run of bad steps exceeded patience."""
        counts = torch.stack([self._worst, self._total]).to(torch.float64)
        counts = dist.all_reduce_max(counts) if dist.world_size > 1 else counts
        worst, total = (int(x) for x in counts.cpu().tolist())
        self.skipped = total
        if worst > self.patience:
            raise DivergenceError(
                f"method {self.label} diverged: {worst} optimizer steps in a row had a non-finite loss or "
                f"gradient norm (optim.nonfinite_patience = {self.patience}; {total} in all, checked at "
                f"step {step}); nothing of it is saved as a result{hint}"
            )
