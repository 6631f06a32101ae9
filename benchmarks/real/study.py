"""The confirmatory study on the real benchmark: seven configurations x seeds 1-5, kept in git.

``python -m benchmarks.real.study run --config ~/.cache/fastrobust/real/real.yaml`` trains, in
this order, every run that ``benchmarks/real/results/`` does not hold yet:

1. **the precision check**: the baseline, seeds 0 and 1, in fp32 and in bf16
   (``results/precision-check/<precision>/baseline/seed-<k>/``); then the pre-registered rule of
   :func:`precision_decision` picks the study's precision and writes
   ``results/precision-check/decision.json``;
2. **the study**: :data:`LABELS` x :data:`SEEDS`, seed by seed (all seven configurations of seed 1
   before seed 2, so a study cut short has whole seeds), in ``results/<label>/seed-<k>/``.

Each finished run is moved into the results folder as ``summary.json`` (with a ``provenance``
block: project commit, precision, device, threads, CPU, library versions), ``report/report.json``
and ``report/predictions.npz``; ``summary.json`` is written last, so a run counts as finished
exactly when it has one. Runs train in a scratch folder (``--scratch``, default
``runs/real-study``) on ``--workers`` processes that claim runs through lock files, so a killed
study resumes where it stopped and several machines can add seeds to the same folder through git.

The protocol (configurations, seeds, endpoints, the Holm correction) is in
docs/real-benchmark.md, written before the first run. ``python -m benchmarks.real.study report``
regenerates the tables from the results folder alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks.real.protocol import (
    AVERAGING_OVERRIDES,
    AVERAGING_SEEDS,
    CHECK_DIR,
    CHECK_SEEDS,
    LABELS,
    PRECISIONS,
    RESULTS,
    SEEDS,
    averaged_folder,
    averaging_items,
    check_items,
    finished,
    study_items,
)
from benchmarks.real.runner import claim_run, pid_alive, publish, train_one
from benchmarks.real.study_report import write_study_report
from benchmarks.real.sweep import families
from fastrobust.evaluate.runs import read_run
from fastrobust.evaluate.stats import compare
from fastrobust.fileio import atomic_write_json


def sections() -> dict[str, dict]:
    """label -> method section, from the sweep's plan (the same definitions, not copies)."""
    return {s.get("label", s["kind"]): s for _, secs in families() for s in secs}


# --------------------------------------------------------------------------------------------
# provenance


def _git(*args: str, cwd: Path) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(*, precision: str, device: str, threads: int, workers: int) -> dict:
    """What produced a run: the code (commit; whether the tree had edits), the machine, the settings."""
    import torch  # torch and transformers (~1.7 s): only once a run finished, not for report or --help
    import transformers

    root = Path(__file__).resolve().parents[2]
    commit = _git("rev-parse", "HEAD", cwd=root)
    if commit:
        modified: bool | None = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=root))
    else:  # a copy of the tree without .git (the GPU machine's): the commit its sender names
        commit, modified = os.environ.get("FASTROBUST_COMMIT", ""), None
    info = {
        "commit": commit,
        "tree_modified": modified,
        "precision": precision,
        "device": device,
        "threads": threads,
        "workers": workers,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# --------------------------------------------------------------------------------------------
# running


def _claim_name(item) -> str:
    return str(item[3]).replace(os.sep, "__")


def release_stale_claims(scratch: Path, results: Path) -> int:
    """Remove claims of unfinished runs whose process is gone (a killed study)."""
    n = 0
    for claim in (scratch / "claims").glob("*"):
        if claim.suffix == ".error":
            continue
        if finished(results / claim.name.replace("__", os.sep)):
            continue
        try:
            pid = int(claim.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = -1
        if pid <= 0 or not pid_alive(pid):
            claim.unlink(missing_ok=True)
            n += 1
    return n


def run_items(config: Path, results: Path, scratch: Path, items, *, device: str, threads: int, workers: int,
              worker: int = 0, extra=()) -> None:  # fmt: skip
    """Claim and train the unfinished items in order (one process). A run killed part-way
    continues from its newest checkpoint in ``scratch`` (:func:`benchmarks.real.runner.train_one`)."""
    table = sections()
    for item in items:
        label, seed, precision, rel = item
        dest = results / rel
        if finished(dest) or not claim_run(scratch / "claims" / _claim_name(item)):
            continue
        work = scratch / rel
        method = f"methods=[{json.dumps(table[label])}]"
        overrides = [*extra, f"seed={seed}", f"model.precision={precision}", method]
        t0 = time.time()
        try:
            s = train_one(config, overrides, work, device=device)
            prov = provenance(precision=precision, device=s["device"], threads=threads, workers=workers)
            prov["wall_seconds"] = time.time() - t0
            averaged = work / f"{label}+avg"
            if (averaged / "summary.json").is_file():  # average: its evaluation first, the run last
                avg = json.loads((averaged / "summary.json").read_text(encoding="utf-8"))
                avg.pop("files", None)
                avg["config"] = s["config"]
                publish(averaged, results / averaged_folder(rel), {"provenance": prov}, summary=avg)
            publish(work / label, dest, {"provenance": prov}, summary=s)
            shutil.rmtree(work)  # its checkpoints (GBs for a real model) served their purpose
            print(
                f"[worker {worker}] {rel}: dev {100 * s['best_dev_accuracy']:.2f} "
                f"XLT {100 * s['averages']['xlt_avg']:.2f} "
                f"G-XLT cross {100 * s['averages']['gxlt_cross_lang_avg']:.2f} "
                f"(train {s['train_seconds']:.0f} s, test {s['test_eval_seconds']:.0f} s)",
                flush=True,
            )
        except Exception:
            (scratch / "claims" / (_claim_name(item) + ".error")).write_text(traceback.format_exc())
            print(f"[worker {worker}] {rel} FAILED:\n{traceback.format_exc()}", flush=True)


def _worker(args) -> None:
    config, results, scratch, items, device, threads, workers, worker, extra = args
    import torch  # ~1 s: only in the processes that train

    torch.set_num_threads(threads)
    run_items(Path(config), Path(results), Path(scratch), items, device=device, threads=threads,
              workers=workers, worker=worker, extra=extra)  # fmt: skip


def run_parallel(config: Path, results: Path, scratch: Path, items, *, workers: int, device: str,
                 threads: int, extra=()) -> None:  # fmt: skip
    if workers <= 1:
        import torch  # ~1 s: only where runs train, not for report or --help

        torch.set_num_threads(threads)
        run_items(config, results, scratch, items, device=device, threads=threads, workers=1, extra=extra)
        return
    ctx = mp.get_context("spawn")
    args = (str(config), str(results), str(scratch), items, device, threads, workers)
    procs = [ctx.Process(target=_worker, args=((*args, w, tuple(extra)),)) for w in range(workers)]

    def stop(signum, _frame):  # the workers are separate processes: a stopped study ends them too
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# the precision decision (rule fixed before the check ran; docs/real-benchmark.md)

DEV_TOLERANCE = 0.005  # English dev: |mean bf16 - fp32| may be up to max(seed spread, 0.5 point)


def precision_decision(results: Path) -> dict:
    """bf16 is used for the study iff (a) the 95% paired bootstrap interval of bf16 - fp32 (test
    examples and seeds 0-1 resampled) contains 0 for the XLT average and for the G-XLT
    cross-language average, and (b) the mean English dev difference is at most the larger of the
    seed spread (mean |seed 0 - seed 1| over the two precisions) and 0.5 point."""
    runs, dev = [], {}
    for p in PRECISIONS:
        for s in CHECK_SEEDS:
            folder = results / CHECK_DIR / p / "baseline" / f"seed-{s}"
            r = read_run(folder, label=p)
            if r is None:
                raise RuntimeError(f"{folder}: the precision check's run is not finished")
            runs.append(r)
            dev[(p, s)] = json.loads((folder / "summary.json").read_text())["best_dev_accuracy"]
    cmp = compare(runs, baseline="fp32", seed=0)
    d = cmp.to_dict()
    diffs = {cell: d["methods"]["bf16"]["cells"][cell]["difference"] for cell in ("xlt_avg", "gxlt_cross")}
    dev_diff = float(np.mean([dev[("bf16", s)] - dev[("fp32", s)] for s in CHECK_SEEDS]))
    seed_spread = float(np.mean([abs(dev[(p, 0)] - dev[(p, 1)]) for p in PRECISIONS]))
    ok_cells = {cell: iv["low"] <= 0.0 <= iv["high"] for cell, iv in diffs.items()}
    ok_dev = abs(dev_diff) <= max(seed_spread, DEV_TOLERANCE)
    decision = {
        "precision": "bf16" if all(ok_cells.values()) and ok_dev else "fp32",
        "differences": diffs,
        "interval_contains_zero": ok_cells,
        "english_dev": {
            "bf16_minus_fp32": dev_diff,
            "seed_spread": seed_spread,
            "tolerance": max(seed_spread, DEV_TOLERANCE),
            "ok": ok_dev,
        },
        "dev": {f"{p}/seed-{s}": v for (p, s), v in dev.items()},
    }
    return decision


def decide_precision(results: Path) -> str:
    path = results / CHECK_DIR / "decision.json"
    if path.is_file():
        return json.loads(path.read_text())["precision"]
    decision = precision_decision(results)
    atomic_write_json(path, decision, indent=1)
    return decision["precision"]


def reuse_check_run(results: Path, precision: str) -> None:
    """The study's baseline seed 1 is the check's run of the same precision (same code, config,
    seed and thread count: the same run), copied rather than trained again."""
    src = results / CHECK_DIR / precision / "baseline" / "seed-1"
    dest = results / "baseline" / "seed-1"
    if 1 in SEEDS and finished(src) and not finished(dest):
        publish(src, dest, {"copied_from": str(src.relative_to(results))})


def study(config: Path, results: Path, scratch: Path, *, workers: int, device: str, threads: int,
          seeds=SEEDS, labels=LABELS, extra=()) -> None:  # fmt: skip
    t0 = time.time()
    results.mkdir(parents=True, exist_ok=True)
    stale = release_stale_claims(scratch, results)
    if stale:
        print(f"study: released {stale} claim(s) of runs whose process is gone", flush=True)
    kw = dict(workers=workers, device=device, threads=threads, extra=extra)
    run_parallel(config, results, scratch, check_items(), **kw)
    precision = decide_precision(results)
    print(f"study: precision {precision} (results/{CHECK_DIR}/decision.json)", flush=True)
    reuse_check_run(results, precision)
    items = study_items(precision, seeds, labels)
    run_parallel(config, results, scratch, items, **kw)
    done = sum(finished(results / it[3]) for it in items)
    print(f"study: {done}/{len(items)} runs finished ({time.time() - t0:.0f} s)", flush=True)


def averaging_study(config: Path, results: Path, scratch: Path, *, workers: int, device: str,
                    threads: int, seeds=AVERAGING_SEEDS, extra=()) -> None:  # fmt: skip
    """The averaging study (docs/real-benchmark.md, section 6): baseline and rs-da on fresh seeds,
    each run evaluated as trained and weight-averaged, in ``results/averaging/``."""
    t0 = time.time()
    results.mkdir(parents=True, exist_ok=True)
    stale = release_stale_claims(scratch, results)
    if stale:
        print(f"study: released {stale} claim(s) of runs whose process is gone", flush=True)
    items = averaging_items(seeds)
    kw = dict(workers=workers, device=device, threads=threads)
    run_parallel(config, results, scratch, items, extra=(*AVERAGING_OVERRIDES, *extra), **kw)
    done = sum(finished(results / it[3]) for it in items)
    print(f"averaging study: {done}/{len(items)} runs finished ({time.time() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real.study", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the study's runs that the results folder does not hold yet")
    r.add_argument("--config", required=True, help="the built real.yaml (make real-bench)")
    r.add_argument("--results", default=str(RESULTS))
    r.add_argument("--scratch", default="runs/real-study")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    r.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="fastrobust train takes CUDA when visible; cpu / cuda refuse the other",
    )
    r.add_argument(
        "--study",
        default="confirmatory",
        choices=("confirmatory", "averaging"),
        help="confirmatory: seven configurations, seeds 1-5 (section 5); averaging: baseline and "
        "rs-da, trained and averaged, seeds 6-10 (section 6)",
    )
    r.add_argument("--seeds", default=None, help="default: the study's own seeds")
    r.add_argument("--set", action="append", default=[], help="config override for every run (key=value)")
    rep = sub.add_parser("report", help="the confirmatory tables, from the results folder alone")
    rep.add_argument("--results", default=str(RESULTS))
    rep.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the generated blocks of README.md and docs/real-benchmark.md",
    )
    args = parser.parse_args(argv)
    if args.cmd == "run":
        runner, planned = (averaging_study, AVERAGING_SEEDS) if args.study == "averaging" else (study, SEEDS)
        seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else planned
        runner(
            Path(args.config),
            Path(args.results),
            Path(args.scratch),
            workers=args.workers,
            device=args.device,
            threads=args.threads,
            seeds=seeds,
            extra=args.set,
        )
        return 0
    write_study_report(Path(args.results), update_docs=args.update_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
