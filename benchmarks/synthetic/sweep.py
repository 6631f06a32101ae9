"""Each method against the baseline over several seeds, at several misalignments of the synthetic benchmark.

Protocol (docs/synthetic.md, "Methods vs misalignment"):

1. **Scales, on English dev only.** At ``--select-at`` (the demo's misalignment), every value of
   each method's scale grid (GRID below) is trained with ``--select-seeds``; the value with the
   highest mean best-English-dev accuracy is kept. No target-language number is looked at.
2. **Measure.** At every misalignment, the baseline and each method at its chosen scale are
   trained with ``--seeds`` (one run per seed, ``fastrobust train --seeds``; finished runs are
   skipped, so the script resumes after an interruption).
3. **Compare.** Per misalignment, ``fastrobust.evaluate.compare`` gives each method's difference
   to the baseline with a 95% paired bootstrap interval over test examples and seeds; the script
   writes ``summary.md`` / ``summary.json`` and a plot of (method - baseline) vs misalignment.

Runs go to ``<out>/<kind>/m<misalignment>/<label>/seed-<k>/`` (predictions.npz in each). Example::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/synthetic/sweep.py --kind word
    python benchmarks/synthetic/sweep.py --kind word --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from fastrobust.evaluate import compare
from fastrobust.evaluate.runs import load_runs
from fastrobust.fileio import atomic_write_json, atomic_write_text
from fastrobust.training import train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_OUT = (
    ROOT / "runs" / "synthetic-sweep"
)  # the run folders (large); docs copy the summaries to results/sweep/

# label -> method section; scales relative to the RMS of the embedding table (docs/methods.md)
GRID: dict[str, list[dict]] = {
    "rs-rp": [{"kind": "rs-rp", "sigma": s, "sigma_mode": "relative"} for s in (0.05, 0.1, 0.2)],
    "rs-da": [{"kind": "rs-da"}],
    "pgd": [
        {"kind": "pgd", "steps": 1, "norm": "l2", "epsilon": e, "step_size": e, "scale_mode": "relative"}
        for e in (0.003, 0.01, 0.03)
    ],
}
CELLS = [  # (cell key, title in the plot and table)
    ("xlt:en", "English"),
    ("xlt_zero_shot_avg", "XLT zero-shot avg"),
    ("gxlt_cross", "G-XLT cross-language"),
    ("gxlt_gap", "G-XLT gap (same - cross)"),
]


def parse_list(text: str, cast=float) -> list:
    out = []
    for part in text.split(","):
        if "-" in part.strip()[1:] and cast is int:
            lo, hi = part.split("-")
            out += list(range(int(lo), int(hi) + 1))
        else:
            out.append(cast(part))
    return out


def section_label(section: dict) -> str:
    if section["kind"] == "rs-rp":
        return f"rs-rp-s{section['sigma']:g}"
    if section["kind"] == "pgd":
        return f"pgd-e{section['epsilon']:g}"
    return section["kind"]


def run_dir(out: Path, kind: str, m: float) -> Path:
    return out / kind / f"m{m:g}"


def train_runs(config: str | None, overrides: list[str], folder: Path, kind: str, m: float, sections, seeds):
    """``fastrobust train --seeds`` of ``sections`` into ``folder`` (finished runs are skipped)."""
    import torch  # torch and the trainer load only to train: the report stage needs neither

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    labelled = [{**s, "label": section_label(s)} for s in sections]
    sets = [
        *overrides,
        f"task.synthetic.misalignment={m}",
        f"task.synthetic.misalignment_kind={kind}",
        f"methods={json.dumps(labelled)}",
        f"output.dir={folder}",
        "output.save_model=false",
        "output.tensorboard=false",
        "output.keep_checkpoints=1",
    ]
    c0 = time.process_time()
    train(config, sets, seeds=seeds, resume=True)
    print(f"[sweep] {folder.name}: {[s['label'] for s in labelled]} seeds {seeds}: "
          f"{time.process_time() - c0:.0f} CPU s", flush=True)  # fmt: skip


def select_scales(args, out: Path) -> dict[str, dict]:
    """Stage 1: the scale of each method with the best mean English dev accuracy at --select-at."""
    folder = run_dir(out, args.kind, args.select_at)
    sections = [s for grid in GRID.values() for s in grid if len(grid) > 1]
    if not args.report_only:
        train_runs(args.config, args.set, folder, args.kind, args.select_at, sections, args.select_seeds)
    dev: dict[str, list[float]] = {}
    for r in load_runs(folder):
        if r.seed in args.select_seeds and r.path is not None:
            s = json.loads((r.path / "summary.json").read_text())
            dev.setdefault(r.label, []).append(s["best_dev_accuracy"])
    chosen: dict[str, dict] = {}
    table = {}
    for name, grid in GRID.items():
        if len(grid) == 1:
            chosen[name] = grid[0]
            continue
        scores = {section_label(s): float(np.mean(dev.get(section_label(s), [np.nan]))) for s in grid}
        table[name] = scores
        best = max(grid, key=lambda s: np.nan_to_num(scores[section_label(s)], nan=-1.0))
        chosen[name] = best
    selection = {
        "misalignment": args.select_at,
        "seeds": args.select_seeds,
        "mean_best_english_dev": table,
        "chosen": {k: section_label(v) for k, v in chosen.items()},
    }
    atomic_write_json(out / args.kind / "selection.json", selection, indent=1)
    return chosen


def report(args, out: Path, chosen: dict[str, dict]) -> None:
    """Stage 3: per misalignment, compare the chosen runs; summary.md/json and the plot."""
    labels = ["baseline", *(section_label(s) for s in chosen.values())]
    rows, payload = [], {"labels": labels, "misalignments": {}}
    for m in args.misalignments:
        runs = [
            r for r in load_runs(run_dir(out, args.kind, m)) if r.label in labels and r.seed in args.seeds
        ]
        if not runs:
            continue
        comp = compare(runs)
        entry = {}
        for label in labels:
            ms = comp.methods.get(label)
            if ms is None:
                continue
            cells = {}
            for key, _ in CELLS:
                stat, iv = ms.stats.get(key), ms.diffs.get(key)
                cells[key] = {
                    "mean": stat.mean if stat else None,
                    "sd": stat.sd if stat else None,
                    "diff": None if iv is None else [iv.estimate, iv.low, iv.high],
                }
            entry[label] = {"seeds": ms.seeds, "cells": cells}
            row = [f"{m:g}", label, str(len(ms.seeds))]
            for key, _ in CELLS:
                c = cells[key]
                text = "-" if c["mean"] is None else f"{100 * c['mean']:.1f} ± {100 * (c['sd'] or 0):.1f}"
                if c["diff"] is not None:
                    d, lo, hi = (100 * x for x in c["diff"])
                    text += f" ({d:+.1f} [{lo:+.1f}, {hi:+.1f}]{'*' if lo > 0 or hi < 0 else ''})"
                row.append(text)
            rows.append(row)
        payload["misalignments"][f"{m:g}"] = entry
    header = ["misalignment", "method", "seeds", *(t for _, t in CELLS)]
    md = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    text = (
        f"Synthetic benchmark, misalignment kind '{args.kind}'. Accuracy % mean ± sd over seeds; in "
        "parentheses the difference to the baseline in points with its 95% paired bootstrap interval "
        "(test examples and seeds); * = excludes 0.\n\n" + "\n".join(md) + "\n"
    )
    base = out / args.kind
    atomic_write_text(base / "summary.md", text)
    atomic_write_json(base / "summary.json", payload, indent=1)
    plot(payload, labels, base / "methods_vs_misalignment.png", args.kind)
    print(text)


def plot(payload: dict, labels: list[str], path: Path, kind: str) -> None:
    import matplotlib  # ~0.2 s: only to plot, after the runs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed; ~0.4 s

    ms = sorted(float(m) for m in payload["misalignments"])
    fig, axes = plt.subplots(1, len(CELLS), figsize=(4.2 * len(CELLS), 3.8), squeeze=False)
    others = [lab for lab in labels if lab != "baseline"]
    for ax, (key, title) in zip(axes[0], CELLS):
        for k, label in enumerate(others):
            xs, ds, los, his = [], [], [], []
            for m in ms:
                cell = payload["misalignments"][f"{m:g}"].get(label, {}).get("cells", {}).get(key)
                if cell and cell["diff"] is not None:
                    d, lo, hi = (100 * x for x in cell["diff"])
                    xs.append(m + (k - (len(others) - 1) / 2) * 0.04)
                    ds.append(d)
                    los.append(d - lo)
                    his.append(hi - d)
            ax.errorbar(xs, ds, yerr=[los, his], fmt="o-", capsize=3, label=label, color=f"C{k + 1}")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("misalignment")
        ax.set_xticks(ms)
    axes[0, 0].set_ylabel("method - baseline (points), 95% CI")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)
    fig.suptitle(f"Synthetic benchmark ({kind} misalignment): difference to the baseline vs misalignment")
    fig.tight_layout(rect=(0, 0.08, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="word", choices=["word", "rotation"])
    p.add_argument("--config", default=None, help="YAML config (default: the demo)")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument("--misalignments", type=lambda t: parse_list(t, float), default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--seeds", type=lambda t: parse_list(t, int), default=list(range(5)))
    p.add_argument("--select-at", type=float, default=1.0)
    p.add_argument("--select-seeds", type=lambda t: parse_list(t, int), default=[0, 1, 2])
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--report-only", action="store_true", help="no training: tables and plot of finished runs")
    args = p.parse_args(argv)
    out = Path(args.out)
    chosen = select_scales(args, out)
    print(
        f"[sweep] scales chosen on English dev: { {k: section_label(v) for k, v in chosen.items()} }",
        flush=True,
    )
    if not args.report_only:
        for m in args.misalignments:
            train_runs(
                args.config, args.set, run_dir(out, args.kind, m), args.kind, m,
                [{"kind": "baseline"}, *chosen.values()], args.seeds,
            )  # fmt: skip
    report(args, out, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
