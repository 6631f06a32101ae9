"""Where the seed-to-seed spread of a spread.py experiment comes from (needs its saved predictions).

For a cell (English, zero-shot average), the sd over seeds of the accuracy is split into:
- the part due to *which* test examples each seed gets right (seed-by-example disagreement):
  sqrt(mean_i var_s c[s, i] / N), which shrinks with the test-set size N;
- and the rest, a shift of the whole seed's accuracy (e.g. a calibration shift: every seed predicts
  "paraphrase" at its own rate in a misaligned language), which a larger test set does not reduce.
Also prints each seed's positive-prediction rate per language.

    python benchmarks/synthetic/spread_analysis.py benchmarks/synthetic/results/spread/<tag>
    python benchmarks/synthetic/spread_analysis.py runs/demo      # a `fastrobust train --seeds` folder
    python benchmarks/synthetic/spread_analysis.py RUNS_A RUNS_B --json OUT.json  # seeds of both, as JSON

With 6 or more seeds it also gives the sd of the first and the second half of the seeds (two
independent 5-seed estimates when there are 10), since one sd from 5 seeds is itself noisy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastrobust.evaluate import TaskPredictions
from fastrobust.evaluate.runs import load_runs
from fastrobust.fileio import atomic_write_json


def load_baseline(folder: str) -> list[tuple[int, TaskPredictions]]:
    """(seed, predictions) of the baseline's runs, by seed, in a spread.py results folder
    (``baseline-seed<k>.npz``) or a training output folder."""
    files = {int(f.stem.removeprefix("baseline-seed")): f for f in Path(folder).glob("baseline-seed*.npz")}
    if files:
        return [(seed, TaskPredictions.load(files[seed])) for seed in sorted(files)]
    runs = sorted(
        (r for r in load_runs(folder) if r.label == "baseline" and r.predictions), key=lambda r: r.seed
    )
    return [(r.seed, r.predictions) for r in runs]


def sd(values: np.ndarray) -> float:
    """Sample standard deviation (callers pass at least 2 values)."""
    return float(values.std(ddof=1))


def main(folders: list[str], json_out: str | None = None) -> None:
    seeded = [pair for folder in folders for pair in load_baseline(folder)]
    if len(seeded) < 2:
        raise SystemExit(f"{' '.join(folders)}: fewer than 2 baseline runs with predictions")
    seeds = [seed for seed, _ in seeded]
    preds = [p for _, p in seeded]
    langs = preds[0].languages
    train = preds[0].train_language
    cells = {
        train: [train],
        "zero-shot avg": [lang for lang in langs if lang != train],
        "XLT avg": list(langs),
    }
    half = len(preds) // 2 if len(preds) >= 6 else None
    report: dict = {"folders": [Path(f).name for f in folders], "seeds": seeds, "cells": {}}
    print(
        f"{' '.join(folders)}: {len(preds)} seeds, test sizes {[len(preds[0].xlt[lang]) for lang in langs]}"
    )
    for name, group in cells.items():
        c = np.stack([np.concatenate([p.xlt[lang].correct for lang in group]) for p in preds]).astype(float)
        acc = 100 * c.mean(axis=1)
        example_part = 100 * np.sqrt(c.var(axis=0, ddof=1).mean() / c.shape[1])
        cell = {"accuracy": [round(float(a), 2) for a in acc], "mean": float(acc.mean()), "sd": sd(acc)}
        cell["example_part"] = float(example_part)
        halves = ""
        if half:
            cell["sd_halves"] = [sd(acc[:half]), sd(acc[half:])]
            halves = f" (halves {cell['sd_halves'][0]:.2f} / {cell['sd_halves'][1]:.2f})"
        report["cells"][name] = cell
        print(
            f"  {name}: {' '.join(f'{a:.1f}' for a in acc)}; mean {acc.mean():.1f}, "
            f"sd {cell['sd']:.2f}{halves}; from seed-by-example disagreement ~{example_part:.2f}"
        )
    for seed, p in seeded:
        rates = [f"{lang} {100 * p.xlt[lang].predicted.mean():.0f}%" for lang in langs]
        print(f"  baseline-seed{seed}: predicted positive {', '.join(rates)}")
    if json_out:
        atomic_write_json(json_out, report, indent=1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "folders", nargs="+", help="spread.py results folders or `fastrobust train` output folders"
    )
    ap.add_argument("--json", default=None, help="also write the per-seed accuracies and sds here")
    args = ap.parse_args()
    main(args.folders, args.json)
