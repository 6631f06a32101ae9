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
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastrobust.config import Config, config_from_dict, method_label
from fastrobust.errors import DivergenceError

if TYPE_CHECKING:  # the module stays free of torch (which final imports) until runs are trained
    from fastrobust.training.final import FinishedRun

_WORKER: dict[str, Any] = {}


def parallel_workers(cfg: Config, dist: Any) -> tuple[int, str]:
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


def _cost(mcfg: Any) -> int:
    # Forward/backward passes per optimizer step, relative to the baseline's one.
    return int(getattr(mcfg, "steps", 0)) + 1 if mcfg.kind in ("pgd", "freelb") else 1


def _init_worker(cfg_json: dict, resume: bool, overwrite: bool, threads: int) -> None:
    # torch, datasets and transformers load in each worker when it starts, not with this module
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    from fastrobust.training.distributed import init_distributed
    from fastrobust.training.run import RunContext

    torch.set_num_threads(threads)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    cfg = config_from_dict(cfg_json, source="<parallel worker>")
    run = RunContext(cfg, init_distributed(use_deepspeed=False), resume, overwrite)
    run.progress_bar = False  # N bars on one terminal would garble each other
    _WORKER["run"] = run


@dataclass
class JobOutcome:
    """What a worker sends back for one run: the finished run, or the message of its divergence
    (the other runs go on, as in the sequential loop); and the seconds it took."""

    run: FinishedRun | None
    diverged: str | None
    seconds: float


def _run_job(index: int, seed: int | None) -> JobOutcome:
    from fastrobust.training.loop import MethodTrainer, skip_finished  # torch: loaded in the worker

    run = _WORKER["run"]
    trainer = MethodTrainer(run, run.cfg.methods[index], seed=seed)
    try:
        t0 = time.perf_counter()
        skip, done = skip_finished(trainer) if run.resume else (False, None)
        if not skip:
            try:
                done = trainer.train()
            except DivergenceError as exc:
                return JobOutcome(None, str(exc), time.perf_counter() - t0)
        return JobOutcome(done, None, time.perf_counter() - t0)
    finally:
        trainer.close()


def train_parallel(run: Any, sections: list[Any], workers: int) -> tuple[list[FinishedRun], list[str]]:
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
    results: dict[int, FinishedRun] = {}
    diverged: list[str] = []
    cfg_json = cfg.model_dump(mode="json")
    with ctx.Pool(
        min(workers, len(jobs)),
        initializer=_init_worker,
        initargs=(cfg_json, run.resume, run.overwrite, threads),
    ) as pool:
        pending = {j: pool.apply_async(_run_job, (jobs[j][0], jobs[j][1])) for j in order}
        try:
            while pending:
                done = [j for j, res in pending.items() if res.ready()]
                for j in done:
                    outcome = pending.pop(j).get()  # re-raises a worker's exception here
                    label = method_label(jobs[j][2])
                    if outcome.run is None:
                        print(f"[{label}] error: {outcome.diverged}", flush=True)
                        diverged.append(str(outcome.diverged))
                        continue
                    results[j] = outcome.run
                    summary, took = outcome.run.summary, outcome.seconds
                    print(
                        f"[parallel] {label} seed {summary.get('seed')}: finished in {took:.0f} s, "
                        f"best English dev {100 * summary['best_dev_accuracy']:.1f}% "
                        f"({len(results)}/{len(jobs)})",
                        flush=True,
                    )
                if not done:
                    time.sleep(0.2)
        except BaseException:
            pool.terminate()
            raise
        # a clean shutdown (the context manager's terminate() leaves the workers' semaphores to
        # the resource tracker, which then warns about "leaked semaphore objects")
        pool.close()
        pool.join()
    return [results[j] for j in range(len(jobs)) if j in results], diverged
