"""The benchmark's measurement: every method and scale of the plan, several seeds, resumable.

``python -m benchmarks.real.sweep run --config ~/.cache/fastrobust/real/real.yaml --out runs/real-sweep``
trains every (label, seed) of :func:`plan` that has no finished run in ``OUT/seed-<s>/<label>/``
yet (a finished run has ``summary.json`` and ``report/{report.json, predictions.npz}``), in the
plan's order, through ``fastrobust train`` (:func:`benchmarks.real.runner.train_one`), on
``--workers`` processes that claim runs through lock files (so several can share a GPU, and a
killed sweep resumes where it stopped). On a 2-core CPU: ``--workers 1``, under ``nice -n 10``.

``python -m benchmarks.real.sweep report --out runs/real-sweep`` selects each family's scale on
English dev accuracy only (rule below) and writes ``OUT/report/``: the comparison of the selected
scales against the baseline (``fastrobust.evaluate.compare``: mean ± sd over seeds, paired
bootstrap intervals over test examples and seeds) and a table of every scale's English dev, XLT
and G-XLT numbers.

**The plan** (fixed before any result was seen). Learning rate: chosen first among 2e-5, 5e-5,
1e-4 by the baseline's mean best English dev accuracy over seeds 0 and 1. Then 5 seeds of:
baseline; RS-RP sigma 0.25/0.5/1/2 (relative, word embeddings); PGD K=1 eps 1 step 0.3 (the
recipes' and the issue's setting); PGD K=2 eps 1/8/32 step eps/2; FreeLB K=2 eps 8/32; RS-DA
(WordNet table); and the placement options: RS-RP at layer 6 sigma 0.25/0.5/1; per-sentence shift
noise sigma 0.1/0.2/0.4 on both sentences and 0.2/0.4 on the second only; shift noise at layer 6
sigma 0.2/0.4; PGD with one ball per sentence eps 8/32; PGD at layer 6 eps 4/16. Seeds 0-2 of
every item run before seeds 3-4, so a sweep cut short still has 3 seeds of everything.

**Selection rule** (English dev only): within a family, the scale with the highest mean (over
seeds) best English dev accuracy; a difference of less than 0.1 point goes to the larger scale.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path

import yaml

from benchmarks.real.encoder.convert import convert
from benchmarks.real.protocol import finished
from benchmarks.real.runner import claim_run, pid_alive, publish, train_one
from benchmarks.real.sweep_report import write_sweep_report
from fastrobust.fileio import atomic_write_json

LR_GRID = (2e-5, 5e-5, 1e-4)
LR_SEEDS = (0, 1)
SEEDS = (0, 1, 2, 3, 4)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _noise(family: str, sigmas: tuple[float, ...], **fixed) -> list[dict]:
    """RS-RP sections of one family, one per sigma (label ``<family>-<sigma>``)."""
    return [{"kind": "rs-rp", "label": f"{family}-{_fmt(s)}", "sigma": s, **fixed} for s in sigmas]


def _adversarial(family: str, epsilons: tuple[float, ...], kind: str = "pgd", **fixed) -> list[dict]:
    """Two-step PGD (or FreeLB) sections of one family, one per epsilon, step size epsilon / 2."""
    return [
        {"kind": kind, "label": f"{family}-{_fmt(e)}", "steps": 2, "epsilon": e, "step_size": e / 2, **fixed}
        for e in epsilons
    ]


def families() -> list[tuple[str, list[dict]]]:
    """(family, [method sections]) in priority order; labels encode the scale."""
    return [
        ("baseline", [{"kind": "baseline"}]),
        ("rs-rp", _noise("rs-rp", (0.25, 0.5, 1.0, 2.0))),
        ("pgd-k1", [{"kind": "pgd", "label": "pgd-k1-1", "steps": 1, "epsilon": 1.0, "step_size": 0.3}]),
        ("pgd", _adversarial("pgd", (1.0, 8.0, 32.0))),
        ("freelb", _adversarial("freelb", (8.0, 32.0), kind="freelb")),
        ("rs-da", [{"kind": "rs-da"}]),
        ("rs-rp-l6", _noise("rs-rp-l6", (0.25, 0.5, 1.0), layer=6)),
        ("shift", _noise("shift", (0.1, 0.2, 0.4), shape="sentence")),
        ("shift-s2", _noise("shift-s2", (0.2, 0.4), shape="sentence", sentences="second")),
        ("shift-l6", _noise("shift-l6", (0.2, 0.4), shape="sentence", layer=6)),
        ("pgd-ball", _adversarial("pgd-ball", (8.0, 32.0), ball="sentence")),
        ("pgd-l6", _adversarial("pgd-l6", (4.0, 16.0), layer=6)),
    ]


def plan(seeds=SEEDS) -> list[tuple[str, dict, int]]:
    """(label, section, seed) in run order: seeds 0-2 of everything first, then the rest."""
    sections = [s for _, secs in families() for s in secs]
    early = [s for s in seeds if s < 3]
    late = [s for s in seeds if s >= 3]
    items = []
    for group in (early, late):
        for seed in group:
            for s in sections:
                items.append((s.get("label", s["kind"]), s, seed))
    return items


def lr_plan() -> list[tuple[str, dict, int, float]]:
    return [
        (f"lr-{_fmt(lr)}", {"kind": "baseline", "label": f"lr-{_fmt(lr)}"}, s, lr)
        for s in LR_SEEDS
        for lr in LR_GRID
    ]


# --------------------------------------------------------------------------------------------
# running


def release_stale_claims(out: Path) -> int:
    """Remove the claims of unfinished runs whose process is gone (a killed sweep), so that a
    resumed sweep runs them; returns how many were removed."""
    n = 0
    for claim in (out / "claims").glob("*@*"):
        if claim.suffix == ".error":
            continue
        label, seed = claim.name.rsplit("@", 1)
        if finished(out / f"seed-{seed}" / label):
            continue
        try:
            pid = int(claim.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = -1
        if pid <= 0 or not pid_alive(pid):
            claim.unlink(missing_ok=True)
            n += 1
    return n


def run_items(
    config: Path, out: Path, items, *, device: str, deadline: float | None, worker: int = 0, extra=()
) -> None:
    """Claim and run items in order until none is left (or the deadline passed). Each run trains
    in ``OUT/work/<label>@<seed>/`` (resumed from its checkpoint if a sweep was killed) and is
    published into ``OUT/seed-<seed>/<label>/`` when finished."""
    claims = out / "claims"
    for item in items:
        label, section, seed = item[:3]
        lr = item[3] if len(item) > 3 else None
        if deadline is not None and time.time() > deadline:
            print(f"[worker {worker}] deadline reached", flush=True)
            return
        seed_dir = out / f"seed-{seed}"
        if finished(seed_dir / label) or not claim_run(claims / f"{label}@{seed}"):
            continue
        overrides = [*extra, f"seed={seed}", f"methods=[{json.dumps(section)}]"]
        if lr is None and (out / "lr.json").is_file():
            lr = json.loads((out / "lr.json").read_text())["learning_rate"]
        if lr is not None:
            overrides.append(f"optim.learning_rate={lr}")
        t0 = time.time()
        try:
            work = out / "work" / f"{label}@{seed}"
            s = train_one(config, overrides, work, device=device)
            publish(work / label, seed_dir / label, {"wall_seconds": time.time() - t0}, summary=s)
            shutil.rmtree(work)  # its checkpoints (GBs for a real model) served their purpose
            print(
                f"[worker {worker}] {label} seed {seed}: dev {100 * s['best_dev_accuracy']:.2f} "
                f"XLT {100 * s['averages']['xlt_avg']:.2f} "
                f"G-XLT cross {100 * s['averages']['gxlt_cross_lang_avg']:.2f} "
                f"({time.time() - t0:.0f} s)",
                flush=True,
            )
        except Exception:
            (claims / f"{label}@{seed}.error").write_text(traceback.format_exc())
            print(f"[worker {worker}] {label} seed {seed} FAILED:\n{traceback.format_exc()}", flush=True)
        finally:
            if device.startswith("cuda"):
                import torch  # ~1 s: only where runs train, not for plan, pack or report

                torch.cuda.empty_cache()


def _worker(args) -> None:
    config, out, items, device, deadline, worker, threads, extra = args
    import torch  # only in the worker processes that train

    torch.set_num_threads(threads)
    run_items(Path(config), Path(out), items, device=device, deadline=deadline, worker=worker, extra=extra)


def run_parallel(
    config: Path,
    out: Path,
    items,
    *,
    workers: int,
    device: str,
    deadline: float | None,
    hard_deadline: float | None = None,
    threads: int = 1,
    extra=(),
) -> None:
    """``workers`` processes over one item list (claims keep them apart); waits until done or
    ``hard_deadline``, then ends the stragglers (their runs stay unfinished and rerun on resume)."""
    if workers <= 1:
        run_items(config, out, items, device=device, deadline=deadline, extra=extra)
        return
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker, args=((str(config), str(out), items, device, deadline, w, threads, tuple(extra)),)
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        timeout = None if hard_deadline is None else max(0.0, hard_deadline - time.time())
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5)
    # claims of runs that did not finish are released, so a later sweep reruns them
    for claim in (out / "claims").glob("*@*"):
        if claim.suffix == ".error":
            continue
        label, seed = claim.name.rsplit("@", 1)
        if not finished(out / f"seed-{seed}" / label):
            claim.unlink(missing_ok=True)


def choose_lr(out: Path) -> float:
    """The LR_GRID value whose baseline runs have the highest mean best English dev accuracy."""
    best = None
    for lr in LR_GRID:
        accs = []
        for s in LR_SEEDS:
            p = out / f"seed-{s}" / f"lr-{_fmt(lr)}" / "summary.json"
            if p.is_file():
                accs.append(json.loads(p.read_text())["best_dev_accuracy"])
        if accs:
            mean = sum(accs) / len(accs)
            if best is None or mean > best[0]:
                best = (mean, lr)
    if best is None:
        raise RuntimeError("no finished learning-rate run to choose from")
    atomic_write_json(out / "lr.json", {"learning_rate": best[1], "mean_dev": best[0]}, indent=None)
    return best[1]


def sweep(
    config: Path,
    out: Path,
    *,
    workers: int,
    device: str,
    budget: float | None,
    threads: int,
    seeds=SEEDS,
    only: set[str] | None = None,
    extra=(),
) -> None:
    """The learning-rate phase (once), then the plan; ``extra``: config overrides for every run."""
    t0 = time.time()
    deadline = None if budget is None else t0 + budget
    hard = None if budget is None else t0 + budget + 45
    out.mkdir(parents=True, exist_ok=True)
    stale = release_stale_claims(out)
    if stale:
        print(f"sweep: released {stale} claim(s) of runs whose process is gone", flush=True)

    def run(items) -> None:
        run_parallel(
            config,
            out,
            items,
            workers=workers,
            device=device,
            deadline=deadline,
            hard_deadline=hard,
            threads=threads,
            extra=extra,
        )

    if not (out / "lr.json").is_file():
        run(lr_plan())
        lr = choose_lr(out)
        print(f"learning rate chosen on English dev: {lr}", flush=True)
    items = [it for it in plan(seeds) if only is None or it[0] in only]
    run(items)
    done = sum(finished(out / f"seed-{s}" / label) for label, _, s in items)
    print(f"sweep: {done}/{len(items)} runs finished in {time.time() - t0:.0f} s", flush=True)


def pack(out: Path, dest: Path, max_bytes: int = 15 << 20, max_files: int = 7) -> list[Path]:
    """Tar the finished runs (summary, report.json, predictions) into at most ``max_files``
    archives of at most ``max_bytes`` each (the device returns few, small files)."""
    files = [
        p for p in sorted(out.rglob("*")) if p.is_file() and ("claims" not in p.parts or p.suffix == ".error")
    ]
    dest.mkdir(parents=True, exist_ok=True)
    chunks: list[list[Path]] = []
    size = 0
    for p in files:
        n = p.stat().st_size
        if not chunks or size + n > max_bytes * 0.9:
            if len(chunks) == max_files:
                print(f"pack: stopped at {p} (archive limit)", flush=True)
                break
            chunks.append([])
            size = 0
        chunks[-1].append(p)
        size += n
    archives: list[Path] = []
    for i, chunk in enumerate(chunks):
        archives.append(dest / f"sweep-{i}.tar.gz")
        with tarfile.open(archives[-1], "w:gz") as tar:
            for p in chunk:
                tar.add(p, arcname=str(p.relative_to(out)))
    return archives


# --------------------------------------------------------------------------------------------
# on the device machine


def prepare_device(carry: Path, work: Path) -> Path:
    """Model folder from the carried trimmed Q4 file, task folder, and a config pointing at both."""
    model = convert(carry / "e5-trimmed-q4.bin", work / "model")
    cfg = yaml.safe_load((Path(__file__).parent / "real.yaml").read_text())
    cfg["model"]["name_or_path"] = str(model)
    cfg["task"]["path"] = str((carry / "task").resolve())
    path = work / "real.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real.sweep", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the plan's runs that are not finished yet")
    r.add_argument("--config", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    r.add_argument("--budget", type=float, default=None, help="seconds after which no new run starts")
    r.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    r.add_argument("--only", default=None, help="comma-separated labels")
    r.add_argument("--set", action="append", default=[], help="config override for every run (key=value)")
    d = sub.add_parser("device", help="prepare from carried files, run, pack into --pack")
    d.add_argument("--carry", required=True)
    d.add_argument("--work", default="/tmp/real-work")
    d.add_argument("--pack", required=True)
    d.add_argument("--workers", type=int, default=8)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--budget", type=float, default=420)
    d.add_argument("--device", default="cuda", help="cuda on the GPU machine; cpu for a rehearsal here")
    d.add_argument("--set", action="append", default=[], help="config override for every run (key=value)")
    rep = sub.add_parser("report", help="select scales on English dev and compare against the baseline")
    rep.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        seeds = tuple(int(x) for x in args.seeds.split(","))
        only = set(args.only.split(",")) if args.only else None
        sweep(
            Path(args.config),
            Path(args.out),
            workers=args.workers,
            device=args.device,
            budget=args.budget,
            threads=args.threads,
            seeds=seeds,
            only=only,
            extra=args.set,
        )
    elif args.cmd == "device":
        t0 = time.time()
        work = Path(args.work)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        config = prepare_device(Path(args.carry), work)
        print(f"prepared in {time.time() - t0:.0f} s", flush=True)
        try:
            budget = args.budget - (time.time() - t0)
            sweep(
                config,
                work / "runs",
                workers=args.workers,
                device=args.device,
                budget=budget,
                threads=args.threads,
                extra=args.set,
            )
        finally:
            archives = pack(work / "runs", Path(args.pack))
            print(
                "packed: " + ", ".join(f"{a.name} {a.stat().st_size >> 10} KiB" for a in archives), flush=True
            )
    else:
        write_sweep_report(Path(args.out), families())
    return 0


if __name__ == "__main__":
    sys.exit(main())
