"""Where the seed-to-seed spread of a spread.py experiment comes from (needs its saved predictions).

For a cell (English, zero-shot average), the sd over seeds of the accuracy is split into:
- the part due to *which* test examples each seed gets right (seed-by-example disagreement):
  sqrt(mean_i var_s c[s, i] / N), which shrinks with the test-set size N;
- and the rest, a shift of the whole seed's accuracy (e.g. a calibration shift: every seed predicts
  "paraphrase" at its own rate in a misaligned language), which a larger test set does not reduce.
Also prints each seed's positive-prediction rate per language.

    python benchmarks/synthetic/spread_analysis.py benchmarks/synthetic/results/spread/<tag>
    python benchmarks/synthetic/spread_analysis.py runs/demo      # a `fastrobust train --seeds` folder
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fastrobust.evaluate import TaskPredictions


def main(folder: str) -> None:
    files = sorted(Path(folder).glob("baseline-seed*.npz"))
    preds = [TaskPredictions.load(f) for f in files]
    if not files:  # a training output folder: the baseline's runs, by seed
        from fastrobust.evaluate.runs import load_runs

        runs = sorted(
            (r for r in load_runs(folder) if r.label == "baseline" and r.predictions), key=lambda r: r.seed
        )
        files = [Path(f"baseline-seed{r.seed}") for r in runs]
        preds = [r.predictions for r in runs]
    if len(preds) < 2:
        raise SystemExit(f"{folder}: fewer than 2 runs with predictions")
    langs = preds[0].languages
    train = preds[0].train_language
    cells = {
        train: [train],
        "zero-shot avg": [lang for lang in langs if lang != train],
        "XLT avg": list(langs),
    }
    print(f"{folder}: {len(preds)} seeds, test sizes {[len(preds[0].xlt[lang]) for lang in langs]}")
    for name, group in cells.items():
        c = np.stack([np.concatenate([p.xlt[lang].correct for lang in group]) for p in preds]).astype(float)
        acc = 100 * c.mean(axis=1)
        example_part = 100 * np.sqrt(c.var(axis=0, ddof=1).mean() / c.shape[1])
        print(
            f"  {name}: {' '.join(f'{a:.1f}' for a in acc)}; sd {acc.std(ddof=1):.2f}; "
            f"from seed-by-example disagreement ~{example_part:.2f}"
        )
    for p, f in zip(preds, files):
        rates = [f"{lang} {100 * p.xlt[lang].predicted.mean():.0f}%" for lang in langs]
        print(f"  {f.stem}: predicted positive {', '.join(rates)}")


if __name__ == "__main__":
    main(sys.argv[1])
