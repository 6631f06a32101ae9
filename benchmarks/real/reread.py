"""The confirmatory study re-read on threshold-free and label-free endpoints (no retraining).

Chosen after the study's primary results were known (docs/real-benchmark.md, section 7): on G-XLT
cross-language pairs every configuration predicts "paraphrase" far less often than on English
pairs, so accuracy at the 0.5 threshold mixes how well a model ranks the pairs with where its
scores drift. Two secondary endpoints read past that drift, each over the same six comparisons
with its own Holm family at 5%:

* G-XLT cross-language **ROC-AUC** (mean of the 20 pairs' AUCs);
* G-XLT cross-language **calibrated accuracy** (after the label-free correction: each pair set's
  decision threshold moved so that its predicted-paraphrase share equals the model's own on the
  English test set; no target label read).

The precision check is re-read on the same endpoints (bf16 − fp32, seeds 0-1).
"""

from __future__ import annotations

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
from benchmarks.real.protocol import CHECK_DIR, CHECK_SEEDS, LABELS, PRECISIONS
from fastrobust.evaluate.runs import read_run

SECONDARY = (("auc", "gxlt_cross"), ("calibrated", "gxlt_cross"))
ALSO = (("auc", "xlt_zero_shot_avg"), ("calibrated", "xlt_zero_shot_avg"))


def positive_rates(run) -> tuple[float, float]:
    """(share predicted positive on the English test set, mean share over the cross-language pairs)."""
    rep = run.report
    cross = [r[1] for (a, b), r in rep.gxlt_pred_rates.items() if a != b]
    return rep.xlt_pred_rates[rep.train_language][1], float(np.mean(cross))


def reread_tables(results: Path, seeds: list[int], n_boot: int) -> dict:
    """Differences, Holm verdicts and predicted-class rates of the re-read (module doc)."""
    runs = [read_run(results / label / f"seed-{s}", label=label) for label in LABELS for s in seeds]
    diffs = endpoint_differences(runs, [*SECONDARY, *ALSO], n_boot=n_boot)
    methods = [x for x in LABELS if x != "baseline"]
    holm = {}
    for endpoint in SECONDARY:  # one family of six per endpoint
        holm.update(holm_family(diffs, [(m, endpoint) for m in methods]))
    rates = {
        label: [float(x) for x in np.mean([positive_rates(r) for r in runs if r.label == label], axis=0)]
        for label in LABELS
    }
    return {"seeds": seeds, "n_boot": n_boot, "diffs": diffs, "holm": holm, "rates": rates}


def precision_reread(results: Path, n_boot: int) -> dict:
    """bf16 − fp32 on the re-read's endpoints and the XLT average (the precision check's runs)."""
    runs = [
        read_run(results / CHECK_DIR / p / "baseline" / f"seed-{s}", label=p)
        for p in PRECISIONS
        for s in CHECK_SEEDS
    ]
    cells = [*SECONDARY, ("auc", "xlt_avg"), ("calibrated", "xlt_avg")]
    return endpoint_differences(runs, cells, baseline="fp32", n_boot=n_boot)["bf16"]


def reread_markdown(r: dict, precision: dict | None) -> str:
    """The re-read's tables: secondary endpoints with Holm, the zero-shot XLT ones, the rates."""
    rows = []
    for label, d in r["diffs"].items():
        if label == "baseline":
            continue
        row = [label]
        for e in SECONDARY:
            h = r["holm"][(label, e)]
            row += [iv_text(d[e]["difference"]), p_text(h, r["n_boot"]), h["verdict"]]
        row += [iv_text(d[e]["difference"]) for e in ALSO]
        rows.append(row)
    header = ["method"]
    for e in SECONDARY:
        header += [ENDPOINT_TITLES[e], "p (Holm threshold)", "verdict"]
    header += [ENDPOINT_TITLES[e] for e in ALSO]
    base = r["diffs"][next(x for x in r["diffs"] if x != "baseline")]
    means = "; ".join(
        f"{ENDPOINT_TITLES[e]} {100 * base[e]['baseline_mean']:.1f}" for e in (*SECONDARY, *ALSO)
    )
    rate_rows = [
        [label, f"{100 * en:.1f}", f"{100 * cross:.1f}"] for label, (en, cross) in r["rates"].items()
    ]
    parts = [
        f"Seeds {', '.join(map(str, r['seeds']))}; secondary endpoints chosen after the primary results "
        f"were known. Differences in points, method − baseline, 95% paired bootstrap ({r['n_boot']} draws; "
        "* = excludes 0); Holm over the six comparisons of each endpoint at family-wise 5%. Baseline: "
        f"{means}.",
        "",
        md_table(header, rows),
        "",
        "Share of pairs predicted as paraphrases (%, mean over seeds; half of every test set are):",
        "",
        md_table(["configuration", "English test", "G-XLT cross-language pairs"], rate_rows),
    ]
    if precision is not None:
        parts += [
            "",
            "Precision check re-read, bf16 − fp32 (seeds 0-1): "
            + "; ".join(
                f"{ENDPOINT_TITLES.get(e, ' '.join(e))} {iv_text(v['difference'])}"
                for e, v in precision.items()
            )
            + ".",
        ]
    return "\n".join(parts)


def readme_table(t: dict, r: dict) -> str:
    """The README's verdict table: the primary endpoint (raw accuracy) and the two secondary ones,
    each with its Holm verdict, the zero-shot XLT difference and the cost."""
    rows = []
    for label, row in t["rows"].items():
        if label == "baseline":
            continue
        c = row["cells"]
        cost = "n/a" if row["cost_ratio"] is None else f"{row['cost_ratio']:.2f}x"
        verdicts = [row["verdict"].replace(" (confirmed)", "")] + [
            r["holm"][(label, e)]["verdict"] for e in SECONDARY
        ]
        short = {"no difference shown": "none", "gain": "gain", "loss": "loss"}
        rows.append(
            [label, cost, iv_text(c["gxlt_cross"]["difference"])]
            + [iv_text(r["diffs"][label][e]["difference"]) for e in SECONDARY]
            + [iv_text(c["xlt_zero_shot_avg"]["difference"]), " / ".join(short.get(v, v) for v in verdicts)]
        )
    header = [
        "method",
        "training time vs baseline",
        "G-XLT cross accuracy (primary)",
        "G-XLT cross ROC-AUC",
        "G-XLT cross calibrated",
        "XLT zero-shot accuracy",
        "Holm verdict (accuracy / AUC / calibrated)",
    ]
    return md_table(header, rows)
