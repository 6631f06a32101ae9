"""The averaging study's tables (protocol: docs/real-benchmark.md, section 6), from
``benchmarks/real/results/averaging/`` alone.

Arms ``baseline``, ``rs-da``, ``baseline+avg``, ``rs-da+avg`` over the whole seeds (those every
arm has) among :data:`~benchmarks.real.protocol.AVERAGING_SEEDS`. Primary: calibrated G-XLT
cross-language accuracy and G-XLT cross-language ROC-AUC of ``rs-da``, ``baseline+avg`` and
``rs-da+avg`` against ``baseline``: six hypotheses, one Holm family at 5%. Secondary (uncorrected):
raw G-XLT cross accuracy, the zero-shot XLT averages, English dev, and ``rs-da+avg`` against
``rs-da``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.real.endpoints import (
    ENDPOINT_TITLES,
    endpoint_differences,
    holm_family,
    iv_text,
    md_table,
    p_text,
)
from benchmarks.real.protocol import AVERAGING_DIR, AVERAGING_LABELS, AVERAGING_SEEDS, finished
from fastrobust.evaluate.runs import read_run

ARMS = (*AVERAGING_LABELS, *(f"{label}+avg" for label in AVERAGING_LABELS))
PRIMARY = (("calibrated", "gxlt_cross"), ("auc", "gxlt_cross"))
SECONDARY = (("accuracy", "gxlt_cross"), ("accuracy", "xlt_zero_shot_avg"), ("auc", "xlt_zero_shot_avg"),
             ("calibrated", "xlt_zero_shot_avg"))  # fmt: skip


def whole_seeds(results: Path) -> list[int]:
    """The averaging study's seeds that every arm has finished."""
    root = results / AVERAGING_DIR
    return [s for s in AVERAGING_SEEDS if all(finished(root / arm / f"seed-{s}") for arm in ARMS)]


def averaging_tables(results: Path, n_boot: int) -> dict | None:
    """Differences, the Holm family and English dev of the averaging study; None before a whole seed."""
    seeds = whole_seeds(results)
    if not seeds:
        return None
    root = results / AVERAGING_DIR
    runs = [read_run(root / arm / f"seed-{s}", label=arm) for arm in ARMS for s in seeds]
    endpoints = [*PRIMARY, *SECONDARY]
    diffs = endpoint_differences(runs, endpoints, n_boot=n_boot)
    others = [a for a in ARMS if a != "baseline"]
    family = holm_family(diffs, [(m, e) for m in others for e in PRIMARY])
    extra = endpoint_differences([r for r in runs if r.label in ("rs-da", "rs-da+avg")], endpoints,
                                 baseline="rs-da", n_boot=n_boot)  # fmt: skip
    dev = {}
    for arm in ARMS:
        vals = [
            json.loads((root / arm / f"seed-{s}" / "summary.json").read_text())["best_dev_accuracy"]
            for s in seeds
        ]
        dev[arm] = float(np.mean(vals))
    complete = seeds == list(AVERAGING_SEEDS)
    return {"seeds": seeds, "complete": complete, "n_boot": n_boot, "diffs": diffs, "holm": family,
            "avg_vs_rsda": extra["rs-da+avg"], "english_dev": dev}  # fmt: skip


def averaging_markdown(t: dict | None) -> str:
    if t is None:
        return "No seed of the averaging study is finished for all four arms yet."
    seeds = ", ".join(map(str, t["seeds"]))
    status = "complete" if t["complete"] else f"incomplete: seeds {seeds} of 6-10, verdicts interim"
    if len(t["seeds"]) == 1:
        status += "; with one seed an interval reflects test-example noise only, not seed-to-seed noise"
    rows = []
    for arm in ARMS[1:]:
        d = t["diffs"][arm]
        row = [arm]
        for e in PRIMARY:
            h = t["holm"][(arm, e)]
            verdict = h["verdict"] + (
                "" if h["verdict"] == "no difference shown" or t["complete"] else " (interim)"
            )
            row += [iv_text(d[e]["difference"]), p_text(h, t["n_boot"]), verdict]
        row += [iv_text(d[e]["difference"]) for e in SECONDARY]
        rows.append(row)
    header = ["arm"]
    for e in PRIMARY:
        header += [ENDPOINT_TITLES[e], "p (Holm threshold)", "verdict"]
    header += [ENDPOINT_TITLES[e] for e in SECONDARY]
    base = t["diffs"]["rs-da"]
    means = "; ".join(
        f"{ENDPOINT_TITLES[e]} {100 * base[e]['baseline_mean']:.1f}" for e in (*PRIMARY, *SECONDARY)
    )
    dev = ", ".join(f"{arm} {100 * v:.1f}" for arm, v in t["english_dev"].items())
    add = t["avg_vs_rsda"]
    what_avg_adds = "; ".join(
        f"{ENDPOINT_TITLES[e]} {iv_text(add[e]['difference'])}" for e in (*PRIMARY, *SECONDARY)
    )
    return "\n".join([
        f"Seeds {seeds} ({status}). Differences in points, arm − baseline, 95% paired bootstrap over test "
        f"examples and seeds ({t['n_boot']} draws; * = excludes 0); Holm over the six primary hypotheses "
        f"(three arms x two endpoints) at family-wise 5%. Baseline: {means}.",
        "",
        md_table(header, rows),
        "",
        f"English dev (mean over seeds): {dev}. What averaging adds to RS-DA (rs-da+avg − rs-da, "
        f"secondary): {what_avg_adds}.",
    ])  # fmt: skip
