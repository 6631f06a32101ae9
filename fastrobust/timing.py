"""Wall-clock accounting of a training step by section (forward, backward, perturbation).

CUDA kernels run asynchronously, so a section's time is only meaningful if the
device is synchronised at its edges. Synchronising every step would stall the
pipeline (and break CUDA-graph capture), so the trainer enables the timer only on
the steps it logs; a disabled timer costs one attribute check per section.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class SectionTimer:
    """Accumulates seconds per named section.

    ``with timer.section("forward"): ...`` adds the elapsed time to
    ``timer.totals["forward"]`` when the timer is enabled; nested sections are
    allowed but each is counted on its own (callers avoid double counting).
    """

    def __init__(self, enabled: bool = True, device: torch.device | str | None = None) -> None:
        self.enabled = enabled
        self.device = torch.device(device) if device is not None else None
        self.totals: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] += time.perf_counter() - start

    def reset(self) -> dict[str, float]:
        """Returns the totals so far and starts again from zero."""
        totals = dict(self.totals)
        self.totals.clear()
        return totals


NULL_TIMER = SectionTimer(enabled=False)
