"""One real-benchmark run (one method, one seed) through fastrobust's own training loop.

:func:`train_one` calls :func:`fastrobust.training.train` on the benchmark's config with the run's
overrides, in a private work folder, with ``--resume`` semantics: a run killed part-way continues
from its newest checkpoint (``output.checkpoint_minutes`` of the config, 10 by default), and a
finished one is read back instead of trained again. The trainer's console output (step lines,
progress) goes to ``WORK/train.log``, so that parallel workers do not interleave on one terminal.

It returns the run's ``summary.json`` with the study's time fields at the top level:

* ``train_seconds`` / ``train_cpu_seconds``: wall and process CPU time of the training phase,
  dev evaluations included (the reports subtract ``dev_eval_seconds`` / ``dev_eval_cpu_seconds``
  to get the training compute); checkpoint writing excluded;
* ``test_eval_seconds`` / ``test_eval_cpu_seconds``: the XLT and G-XLT test evaluation;
* ``engine``: ``"fastrobust.train"``. Cost ratios compare runs of one engine only;
* ``config``: the run's whole resolved config.

The run's files are in ``WORK/<label>/``: ``summary.json`` and ``report/{report.json,
predictions.npz}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastrobust.fileio import atomic_write_json
from fastrobust.training import train  # cheap: torch and transformers load when train() runs

ENGINE = "fastrobust.train"

# What a benchmark run never writes: the model (the predictions are the result), TensorBoard logs;
# one run per call (the runners parallelise over runs themselves).
RUN_OVERRIDES = ("seeds=null", "parallel=1", "output.save_model=false", "output.tensorboard=false")


def check_device(device: str) -> None:
    """``fastrobust train`` runs on CUDA whenever a GPU is visible, else on the CPU; ``device``
    ("auto", "cpu" or "cuda") states which one the caller expects, and a mismatch is refused
    before anything trains (hide the GPUs with ``CUDA_VISIBLE_DEVICES=`` to train on the CPU)."""
    import torch  # ~1 s: only to check a device; study and sweep import this module for --help too

    if device == "auto":
        return
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected auto, cpu or cuda, got {device!r}")
    have = "cuda" if torch.cuda.is_available() else "cpu"
    if have != device:
        hint = " (set CUDA_VISIBLE_DEVICES= to hide the GPUs)" if have == "cuda" else ""
        raise RuntimeError(f"--device {device}: fastrobust train would run on {have} here{hint}")


def claim_run(path: Path) -> bool:
    """Take the run claim ``path`` (created exclusively, holding "<pid> <time>"); False when
    another process holds it. The sweep's and the study's workers claim runs this way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()} {time.time()}\n".encode())
    os.close(fd)
    return True


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts): the sweep's and the study's
    test for a stale run claim."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def train_one(
    config: str | Path | None, overrides: Sequence[str], work: Path, *, device: str = "auto"
) -> dict[str, Any]:
    """Train, select on English dev and test one run of ``config`` (with ``overrides``, which must
    select exactly one method) in ``work``; returns its summary (module doc). ``device``: see
    :func:`check_device`."""
    check_device(device)
    work.mkdir(parents=True, exist_ok=True)
    overrides = [*overrides, *RUN_OVERRIDES, f"output.dir={work}"]
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # a progress bar redrawn into a log file is noise
    try:
        with (
            open(work / "train.log", "a", encoding="utf-8") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            result = train(config, overrides, resume=True)
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
    # a run with ``average:`` also reports its averaged evaluation, ``<label>+avg``
    labels = [label for label in result["methods"] if not label.endswith("+avg")]
    if len(labels) != 1:
        raise ValueError(f"overrides must select one method, got {labels}")
    return run_summary(work / labels[0])


def run_summary(run_dir: Path) -> dict[str, Any]:
    """``run_dir/summary.json`` with the study's time fields lifted to the top level and the
    config of its output folder (module doc); its ``files`` block is dropped (it names the work
    folder, which does not travel)."""
    s = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    top = json.loads((run_dir.parent / "summary.json").read_text(encoding="utf-8"))

    tp = s["throughput"]
    s.pop("files", None)
    s["engine"] = ENGINE
    s["config"] = top["config"]
    s["train_seconds"] = tp["train_seconds"] + s["dev_eval_seconds"]
    s["train_cpu_seconds"] = tp["train_cpu_seconds"] + s["dev_eval_cpu_seconds"]
    return s


def publish(run_dir: Path, dest: Path, extra: dict, summary: dict | None = None) -> None:
    """Copy a finished run into ``dest`` (a results folder): ``report/{report.json,
    predictions.npz}``, then ``summary.json`` (``summary``, default the run's own, updated with
    ``extra``) last and atomically, so that a run counts as finished only when it is whole."""
    if summary is None:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    (dest / "report").mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "predictions.npz"):
        tmp = dest / "report" / (name + ".tmp")
        shutil.copyfile(run_dir / "report" / name, tmp)
        os.replace(tmp, dest / "report" / name)
    atomic_write_json(dest / "summary.json", {**summary, **extra}, indent=1)
