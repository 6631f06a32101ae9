"""Throughput and memory accounting of a training run.

samples/s = examples processed by all ranks / seconds spent in training steps (evaluation and
checkpointing excluded; under ``model.compile`` the first step of a run, in which Dynamo compiles,
is left out too and reported as ``compile_warmup_seconds``); tokens/s counts real tokens
(attention_mask == 1) only. The forward /
backward / perturbation split comes from :class:`fastrobust.timing.SectionTimer`, enabled on
logged steps only (it synchronises CUDA at section edges), and is reported as seconds per step
averaged over those steps; ``other`` is the rest of the step (optimizer, clipping, data).

``train_cpu_seconds`` is the process CPU time (every thread; ``time.process_time``) of the same
steps, measured over the same window as their wall time: other jobs on the same cores do not
inflate it, so it is the cost measure to compare runs made at different times.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

SECTIONS = ("forward", "backward", "perturbation")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA ``max_memory_allocated`` on GPU, else peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


@dataclass
class ThroughputMeter:
    """Accumulates step times, examples and tokens over a run (restorable from a checkpoint)."""

    step_seconds: float = 0.0
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    timed_steps: int = 0
    timed_seconds: float = 0.0
    sections: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in SECTIONS})
    cpu_seconds: float = 0.0
    warmup_seconds: float = 0.0  # steps left out: model.compile's first step, which compiles

    def add_step(self, seconds: float, samples: int, tokens: int, cpu_seconds: float) -> None:
        """One step: its wall ``seconds`` and process ``cpu_seconds`` over the same window."""
        self.cpu_seconds += cpu_seconds
        self.step_seconds += seconds
        self.steps += 1
        self.samples += samples
        self.tokens += tokens

    def add_warmup(self, seconds: float) -> None:
        """A step that compiled (``model.compile``): its time is not throughput, it is kept apart."""
        self.warmup_seconds += seconds

    def add_timed(self, seconds: float, totals: dict[str, float]) -> None:
        self.timed_steps += 1
        self.timed_seconds += seconds
        for k in SECTIONS:
            self.sections[k] += float(totals.get(k, 0.0))

    def summary(self) -> dict[str, Any]:
        t = max(self.step_seconds, 1e-12)
        split = {}
        if self.timed_steps:
            per = {k: v / self.timed_steps for k, v in self.sections.items()}
            step = self.timed_seconds / self.timed_steps
            per["other"] = max(0.0, step - sum(per.values()))
            split = {f"{k}_s_per_step": v for k, v in per.items()}
        return {
            "samples_per_s": self.samples / t,
            "tokens_per_s": self.tokens / t,
            "seconds_per_step": t / max(1, self.steps),
            "train_seconds": self.step_seconds,
            "train_cpu_seconds": self.cpu_seconds,
            "compile_warmup_seconds": self.warmup_seconds,
            "steps_measured": self.steps,
            "samples": self.samples,
            "tokens": self.tokens,
            "time_split": split,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_seconds": self.step_seconds,
            "steps": self.steps,
            "samples": self.samples,
            "tokens": self.tokens,
            "timed_steps": self.timed_steps,
            "timed_seconds": self.timed_seconds,
            "sections": dict(self.sections),
            "cpu_seconds": self.cpu_seconds,
            "warmup_seconds": self.warmup_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (a checkpoint without ``cpu_seconds`` or ``warmup_seconds``
        restores them as 0)."""
        self.cpu_seconds = self.warmup_seconds = 0.0
        for k, v in state.items():
            setattr(self, k, dict(v) if isinstance(v, dict) else v)
