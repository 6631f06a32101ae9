"""The sweep's report: scales chosen on English dev only, then XLT / G-XLT against the baseline.

``write_sweep_report(OUT, families)`` reads every finished run under ``OUT/seed-*/`` and writes
``OUT/report/``, for the plan's ``families`` (``sweep.families()``: (family, [method sections])):

* ``grid.md`` / ``grid.json``: every label of the plan — seeds, mean ± sd of the best English dev
  accuracy, and (for reading only, never for choosing) the mean XLT average, zero-shot average,
  G-XLT same-language and cross-language averages and the gap;
* ``selected.json``: per family, the label chosen by the rule of ``sweep.py`` (highest mean
  English dev accuracy; < 0.1 point difference goes to the larger scale; a family below 60% English
  dev at every scale did not learn and has no selection);
* ``comparison.*`` (``fastrobust.evaluate.write_comparison``): the baseline and each family's
  selected label, mean ± sd over seeds and differences to the baseline with 95% paired bootstrap
  intervals (test examples and seeds resampled; docs/statistics.md);
* ``comparison-all.*``: the same for every label of the grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fastrobust.evaluate.report import write_comparison
from fastrobust.evaluate.runs import load_runs
from fastrobust.evaluate.stats import compare
from fastrobust.fileio import atomic_write_json, atomic_write_text


def _scale(label: str) -> float:
    tail = label.rsplit("-", 1)[-1]
    try:
        return float(tail)
    except ValueError:
        return 0.0


# A family whose every scale leaves English dev below this did not learn the task at all
# (chance is 50%); it has nothing to select (amendment to the rule, added after the first sweep
# showed PGD collapsing to constant predictions at large radii; it uses English dev only).
COLLAPSED_DEV = 0.60


def select(grid: dict[str, dict], fams: list[tuple[str, list[dict]]]) -> dict[str, str]:
    """family -> chosen label (English dev only; see module doc)."""
    chosen = {}
    for fam, sections in fams:
        labels = [s.get("label", s["kind"]) for s in sections if s.get("label", s["kind"]) in grid]
        if not labels:
            continue
        best = max(grid[x]["dev_mean"] for x in labels)
        if best < COLLAPSED_DEV:
            continue
        near = [x for x in labels if grid[x]["dev_mean"] >= best - 0.001]
        chosen[fam] = max(near, key=_scale)
    return chosen


def write_sweep_report(out: Path, fams: list[tuple[str, list[dict]]]) -> dict:
    """Writes ``out/report/`` (module doc) for the plan's families ``fams``; returns the grid and
    the selection."""
    runs = []
    for seed_dir in sorted(out.glob("seed-*")):
        runs += load_runs(seed_dir)
    by_label: dict[str, list] = {}
    for r in runs:
        by_label.setdefault(r.label, []).append(r)
    grid: dict[str, dict] = {}
    for label, rs in by_label.items():
        summaries = [json.loads((r.path / "summary.json").read_text()) for r in rs]
        dev = [s["best_dev_accuracy"] for s in summaries]
        av = [r.report.averages() for r in rs]

        def mean(key: str, av=av) -> float:
            return float(np.mean([a[key] for a in av]))

        grid[label] = {
            "seeds": sorted(r.seed for r in rs),
            "dev_mean": float(np.mean(dev)),
            "dev_sd": float(np.std(dev, ddof=1)) if len(dev) > 1 else None,
            "xlt_avg": mean("xlt_avg"),
            "gxlt_same": mean("gxlt_same_lang_avg"),
            "gxlt_cross": mean("gxlt_cross_lang_avg"),
            "gap": mean("gap"),
            "train_seconds": float(np.mean([s.get("train_seconds", np.nan) for s in summaries])),
        }
    chosen = select(grid, fams)
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    atomic_write_json(rep / "grid.json", grid, indent=1)
    atomic_write_json(rep / "selected.json", chosen, indent=1)
    lines = [
        "| label | seeds | English dev (mean ± sd) | XLT avg | G-XLT same | G-XLT cross | gap | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fam, sections in fams:
        for s in sections:
            label = s.get("label", s["kind"])
            g = grid.get(label)
            if g is None:
                continue
            sd = "" if g["dev_sd"] is None else f" ± {100 * g['dev_sd']:.2f}"
            mark = " (selected)" if chosen.get(fam) == label and fam != "baseline" else ""
            lines.append(
                f"| {label}{mark} | {len(g['seeds'])} | {100 * g['dev_mean']:.2f}{sd} | "
                f"{100 * g['xlt_avg']:.2f} | "
                f"{100 * g['gxlt_same']:.2f} | {100 * g['gxlt_cross']:.2f} | {100 * g['gap']:.2f} | "
                f"{g['train_seconds']:.0f} |"
            )
    atomic_write_text(rep / "grid.md", "\n".join(lines) + "\n")
    keep = {"baseline"} | set(chosen.values())
    selected_runs = [r for r in runs if r.label in keep]
    text = write_comparison(compare(selected_runs, baseline="baseline"), rep / "selected")
    grid_runs = [r for r in runs if not r.label.startswith("lr-")]
    write_comparison(compare(grid_runs, baseline="baseline"), rep / "all")
    print("\n".join(lines))
    print(text)
    return {"grid": grid, "selected": chosen}
