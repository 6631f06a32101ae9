"""The worker processes of ``parallel: N`` and how the parent talks to them and stops them.

Each worker is a ``spawn``ed process with a pipe to the parent: it loads the task and tokenizer
once, then trains the jobs the parent sends, one at a time, and sends back a :class:`JobOutcome`
for each (plain strings and a pickled exception at most: nothing that fails on the way back).

Signals. The workers run in their own process group, so a Ctrl-C at the terminal (which goes to
the whole foreground group) reaches the parent only; the parent hands each signal on to every
worker exactly once, and a worker stops as a single-process run does: after its current step,
with a checkpoint (:mod:`fastrobust.training.signals`). Signals are blocked while a worker
starts, so none is lost or delivered twice in between. A worker that dies (killed, out of memory)
closes its pipe, which the parent reads as a failed job instead of waiting for it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from fastrobust.config import config_from_dict, method_label
from fastrobust.errors import DivergenceError, FastrobustError, Interrupted, RunError
from fastrobust.training import signals

if TYPE_CHECKING:  # the module stays free of torch (which final imports) until runs are trained
    from multiprocessing.context import SpawnContext
    from types import FrameType

    from fastrobust.training.final import FinishedRun

_WORKER: dict[str, Any] = {}


@dataclass
class JobOutcome:
    """What a worker sends back for one job: the finished run (None when none), the message of its
    divergence (the other runs go on, as in the sequential loop), of its interruption (with the
    signal), or the exception it failed with; and the seconds it took."""

    run: FinishedRun | None = None
    diverged: str | None = None
    stopped: str | None = None
    signum: int | None = None
    error: BaseException | None = None
    seconds: float = 0.0


class _Signalled(KeyboardInterrupt):
    """A signal that reached a worker outside the step loop (loading, evaluating, idle)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum: int, frame: FrameType | None) -> None:
    raise _Signalled(signum)


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


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RunError with its one-line description."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RunError(f"{type(exc).__name__}: {exc}")


def _run_job(index: int, seed: int | None) -> JobOutcome:
    from fastrobust.training.loop import MethodTrainer  # torch: loaded in the worker
    from fastrobust.training.resume import skip_finished

    run = _WORKER["run"]
    mcfg = run.cfg.methods[index]
    t0 = time.perf_counter()
    trainer = None
    try:
        trainer = MethodTrainer(run, mcfg, seed=seed)
        skip, done = skip_finished(trainer) if run.resume else (False, None)
        done = done if skip else trainer.train()
        return JobOutcome(run=done, seconds=time.perf_counter() - t0)
    except DivergenceError as exc:
        return JobOutcome(diverged=str(exc), seconds=time.perf_counter() - t0)
    except Interrupted as exc:
        return JobOutcome(stopped=str(exc).partition(": ")[2] or str(exc), signum=exc.signum)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        where = f"seed {seed}" if seed is not None else "its run"
        return JobOutcome(stopped=f"method {method_label(mcfg)} ({where}) stopped at once", signum=signum)
    except BaseException as exc:
        if not isinstance(exc, FastrobustError | OSError):  # a bug: its traceback helps
            traceback.print_exc()
        return JobOutcome(error=_sendable(exc))
    finally:
        if trainer is not None:
            trainer.close()


def worker_main(conn: Connection, cfg_json: dict, resume: bool, overwrite: bool, threads: int) -> None:
    """A worker process: load once, then run the jobs ``conn`` brings until None (or a stop)."""
    os.setpgrp()  # out of the terminal's foreground group: Ctrl-C comes through the parent, once
    signals.ANNOUNCE = False  # the parent says it once for every worker
    for s in signals.SIGNALS:
        signal.signal(s, _raise_signalled)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals.SIGNALS)
        _init_worker(cfg_json, resume, overwrite, threads)
        while (job := conn.recv()) is not None:
            outcome = _run_job(*job)
            conn.send(outcome)
            if outcome.stopped is not None or outcome.error is not None:
                return
    except KeyboardInterrupt as exc:  # while loading or between jobs: no run was under way
        signum = getattr(exc, "signum", signal.SIGINT)
        conn.send(JobOutcome(stopped="a worker stopped before its run began", signum=signum))
    except EOFError:  # the parent is gone
        return
    except BaseException as exc:
        if not isinstance(exc, FastrobustError | OSError):
            traceback.print_exc()
        conn.send(JobOutcome(error=_sendable(exc)))


class Worker:
    """The parent's handle on one worker process: its process, its pipe, its current job."""

    def __init__(self, ctx: SpawnContext, args: tuple) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, *args), daemon=True)
        self.job: int | None = None
        self.process.start()
        child.close()

    def send(self, job: int, payload: tuple | None) -> None:
        self.job = job
        self.conn.send(payload)

    def signal(self, signum: int) -> None:
        if self.process.is_alive() and self.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def receive(self) -> JobOutcome:
        """The outcome of the current job; a failure if the process died without one."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            code = self.process.exitcode
            return JobOutcome(error=RunError(f"a worker process ended without a result (exit code {code})"))


def start_workers(ctx: SpawnContext, n: int, args: tuple) -> list[Worker]:
    """``n`` workers, started with SIGINT and SIGTERM blocked (each unblocks once in its own
    process group); a signal that arrives meanwhile is delivered to the parent afterwards."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signals.SIGNALS)
    try:
        return [Worker(ctx, args) for _ in range(n)]
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals.SIGNALS)


def ready(workers: list[Worker], timeout: float) -> list[Worker]:
    """The busy workers whose outcome (or end) can be read now, waiting up to ``timeout`` s."""
    busy = {w.conn: w for w in workers if w.job is not None}
    return [busy[c] for c in wait(list(busy), timeout)] if busy else []


def close_workers(workers: list[Worker], grace: float = 10.0) -> None:
    """Asks every worker to exit, waits up to ``grace`` seconds in all, then kills what is left."""
    for w in workers:
        with contextlib.suppress(OSError):
            w.conn.send(None)
    deadline = time.monotonic() + grace
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            w.process.kill()
            w.process.join(5)
        w.conn.close()
