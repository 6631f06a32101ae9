"""Several (method, seed) runs at once on a CPU machine: ``parallel: N`` / ``--parallel N``.

A tiny encoder gains little from a second intra-op thread (measured here: 1.27x for a batch of 64 on
2 cores), while two runs side by side, one thread each, use both cores fully. With ``parallel: N``
the runs of a multi-seed (or multi-method) call go to a pool of N worker processes (``spawn``: no
OpenMP state is inherited), each with ``threads // N`` intra-op threads; every worker loads the task
and tokenizer once and then trains one run after another, the most expensive first (PGD / FreeLB
cost ~K+1 baseline steps per step), which balances the workers. Every run is exactly the run the
sequential loop would train (its randomness depends on its seed only, see
:mod:`fastrobust.training.batches`) and writes the same folder; only floating-point summation order
can differ when the thread count differs. The parent then writes the comparison as usual.

Single-process CPU runs only: under DeepSpeed / torchrun the processes already share the work, and
on a GPU several runs would compete for its memory; there the runs go one by one (with a note).
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastrobust.config import Config, method_label
from fastrobust.errors import Interrupted
from fastrobust.methods import registry
from fastrobust.methods.registry import MethodSection
from fastrobust.training.signals import SIGNALS
from fastrobust.training.workers import JobOutcome, Worker, close_workers, ready, start_workers

if TYPE_CHECKING:  # the module stays free of torch (which final imports) until runs are trained
    from types import FrameType

    from fastrobust.training.distributed import DistContext
    from fastrobust.training.final import FinishedRun
    from fastrobust.training.run import RunContext


def parallel_workers(cfg: Config, dist: DistContext) -> tuple[int, str]:
    """How many worker processes ``parallel: N`` gets here, and a note when it is not N.

    Only a single-process CPU run spreads its runs over workers; under DeepSpeed / torchrun (the
    ranks already share the work) or on a GPU (runs would compete for its memory) the runs go one
    after another, with a note, so one config (e.g. the demo's ``parallel: 2``) works everywhere.
    """
    if cfg.parallel <= 1:
        return 1, ""
    if dist.world_size > 1 or cfg.deepspeed.config:
        where = "under DeepSpeed/torchrun"
    elif dist.device.type != "cpu":
        where = f"on {dist.device}"
    else:
        return cfg.parallel, ""
    return (
        1,
        f"note: parallel: {cfg.parallel} applies to single-process CPU runs; {where} the runs go one by one",
    )


def _cost(mcfg: MethodSection) -> float:
    # Forward/backward passes per optimizer step, relative to the baseline's one (the method's own).
    return registry.relative_cost(mcfg)


class ParentStop:
    """SIGINT / SIGTERM in the parent while the workers train: the first is handed on to every
    busy worker once (each stops after its step, with a checkpoint); a second one stops at once
    (the workers are killed: their last complete checkpoints stay)."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> ParentStop:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.getsignal(s) for s in SIGNALS}
            for s in SIGNALS:
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            for w in self.workers:
                w.process.kill()
            raise Interrupted(
                f"{name} again: the runs were stopped at once; their last complete checkpoints stay "
                "(continue with --resume)",
                signum,
            )
        self.signum = signum
        busy = [w for w in self.workers if w.job is not None]
        print(
            f"\nfastrobust: {name} received; the {len(busy)} running run(s) stop after their current step "
            f"and write a checkpoint ({name} again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        self.forward(signum)

    def forward(self, signum: int) -> None:
        """Hands ``signum`` on to every busy worker."""
        for w in self.workers:
            if w.job is not None:
                w.signal(signum)


@dataclass
class Progress:
    """The parent's account of the jobs: finished runs, divergences, stops, the first failure."""

    results: dict[int, FinishedRun] = field(default_factory=dict)
    diverged: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    error: BaseException | None = None


def _record(jobs: list[Any], j: int, outcome: JobOutcome, progress: Progress) -> None:
    """Books (and prints) the outcome of job ``j``."""
    label = method_label(jobs[j][2])
    if outcome.error is not None:
        progress.error = progress.error or outcome.error
    elif outcome.stopped is not None:
        progress.stopped.append(outcome.stopped)
    elif outcome.run is None:
        print(f"[{label}] error: {outcome.diverged}", flush=True)
        progress.diverged.append(str(outcome.diverged))
    else:
        progress.results[j] = outcome.run
        summary = outcome.run.summary
        print(
            f"[parallel] {label} seed {summary.get('seed')}: finished in {outcome.seconds:.0f} s, "
            f"best English dev {100 * summary['best_dev_accuracy']:.1f}% "
            f"({len(progress.results)}/{len(jobs)})",
            flush=True,
        )


def _drive(workers: list[Worker], jobs: list[Any], order: list[int], stop: ParentStop) -> Progress:
    """Hands the jobs out (the most expensive first) and books their outcomes until every started
    job has ended; after a signal or a failure no job starts and the busy workers are stopped."""
    progress = Progress()
    queue = list(order)
    halted = False
    while True:
        if not halted and (stop.signum is not None or progress.error is not None):
            halted = True
            if stop.signum is None:  # a failure: the other runs stop too, resumable
                stop.forward(signal.SIGTERM)
        if not halted:
            for w in workers:
                if w.job is None and queue:
                    j = queue.pop(0)
                    w.send(j, (jobs[j][0], jobs[j][1]))
        if all(w.job is None for w in workers):
            return progress
        for w in ready(workers, 0.2):
            j, outcome = w.job, w.receive()
            w.job = None
            _record(jobs, j, outcome, progress)


def _stopped_error(progress: Progress, signum: int, total: int) -> Interrupted:
    name = signal.Signals(signum).name
    done = f"{len(progress.results)} of {total} run(s) finished"
    stopped = " | ".join(progress.stopped) or "no run was under way"
    return Interrupted(f"{name}: {done}; {stopped}", signum)


def train_parallel(run: RunContext, sections: list[Any], workers: int) -> tuple[list[FinishedRun], list[str]]:
    """Every (seed, section) run of ``run.cfg`` on ``workers`` processes: the finished runs in
    seed-major order (as the sequential loop returns them) and the messages of the runs that diverged."""
    import torch  # this module stays free of torch until runs are trained

    cfg = run.cfg
    multi = cfg.seeds is not None
    index = {id(m): i for i, m in enumerate(cfg.methods)}
    jobs = [(index[id(m)], seed if multi else None, m) for seed in cfg.run_seeds for m in sections]
    order = sorted(range(len(jobs)), key=lambda j: -_cost(jobs[j][2]))  # expensive first
    threads = max(1, torch.get_num_threads() // workers)
    print(
        f"  {len(jobs)} run(s) on {workers} worker processes x {threads} thread(s), the most expensive first",
        flush=True,
    )
    ctx = multiprocessing.get_context("spawn")
    args = (cfg.model_dump(mode="json"), run.resume, run.overwrite, threads)
    with ParentStop() as stop:  # before the workers start: a signal meanwhile is handed on
        stop.workers = start_workers(ctx, min(workers, len(jobs)), args)
        try:
            progress = _drive(stop.workers, jobs, order, stop)
        finally:
            close_workers(stop.workers)
    if stop.signum is not None:
        raise _stopped_error(progress, stop.signum, len(jobs))
    if progress.error is not None:
        if progress.stopped:
            print(f"[parallel] the other runs were stopped: {' | '.join(progress.stopped)}", flush=True)
        raise progress.error
    results, diverged = progress.results, progress.diverged
    return [results[j] for j in range(len(jobs)) if j in results], diverged
