"""Endpoints of the real-benchmark studies beyond raw accuracy, with Holm families.

An *endpoint* is a comparison cell (``gxlt_cross``, ``xlt_zero_shot_avg``, ...) of one metric of
:func:`fastrobust.evaluate.stats.compare` (``accuracy``; ``calibrated``: accuracy after the
label-free correction; ``auc``: ROC-AUC). :func:`endpoint_differences` computes, for every
method against the baseline, the difference of each endpoint with its 95% paired bootstrap
interval and p-value (the same draws as the accuracy comparison: same seed, same count);
:func:`holm_family` applies Holm's step-down correction over any set of (method, endpoint)
hypotheses.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastrobust.evaluate.multiplicity import holm
from fastrobust.evaluate.stats import RunResult, compare

ENDPOINT_TITLES = {
    ("accuracy", "gxlt_cross"): "G-XLT cross accuracy",
    ("calibrated", "gxlt_cross"): "G-XLT cross calibrated accuracy",
    ("auc", "gxlt_cross"): "G-XLT cross ROC-AUC",
    ("accuracy", "xlt_zero_shot_avg"): "XLT zero-shot accuracy",
    ("calibrated", "xlt_zero_shot_avg"): "XLT zero-shot calibrated accuracy",
    ("auc", "xlt_zero_shot_avg"): "XLT zero-shot ROC-AUC",
    ("auc", "xlt_avg"): "XLT ROC-AUC",
    ("calibrated", "xlt_avg"): "XLT calibrated accuracy",
    ("calibrated", "gxlt_gap"): "gap, calibrated accuracy",
    ("auc", "gxlt_gap"): "gap, ROC-AUC",
}


def endpoint_differences(
    runs: Sequence[RunResult],
    endpoints: Sequence[tuple[str, str]],
    *,
    baseline: str = "baseline",
    n_boot: int,
    seed: int = 0,
) -> dict[str, dict[tuple[str, str], dict]]:
    """``{method: {(metric, cell): {"mean", "sd", "baseline_mean", "difference": interval dict}}}``
    for every method but the baseline and every endpoint (one comparison per metric)."""
    out: dict[str, dict[tuple[str, str], dict]] = {}
    for metric in sorted({m for m, _ in endpoints}):
        d = compare(runs, baseline=baseline, n_boot=n_boot, seed=seed, metric=metric).to_dict()["methods"]
        base = d[baseline]["cells"]
        for label, m in d.items():
            for mm, cell in endpoints:
                if mm != metric:
                    continue
                c = m["cells"][cell]
                entry = {"mean": c["mean"], "sd": c["sd"], "baseline_mean": base[cell]["mean"]}
                entry["difference"] = c["difference"]
                out.setdefault(label, {})[(metric, cell)] = entry
    return out


def holm_family(
    diffs: dict[str, dict[tuple[str, str], dict]],
    hypotheses: Sequence[tuple[str, tuple[str, str]]],
    alpha: float = 0.05,
) -> dict[tuple[str, tuple[str, str]], dict]:
    """Holm over the (method, endpoint) ``hypotheses`` at family-wise ``alpha``: per hypothesis
    its p-value, rank, threshold, whether it is rejected, and the verdict (gain / loss / no
    difference shown)."""
    names = {f"{m}|{e[0]}|{e[1]}": (m, e) for m, e in hypotheses}
    p = {k: diffs[m][e]["difference"]["p_value"] for k, (m, e) in names.items()}
    result = holm(p, alpha)
    out = {}
    for k, (m, e) in names.items():
        h = result[k].to_dict()
        est = diffs[m][e]["difference"]["estimate"]
        h["verdict"] = ("gain" if est > 0 else "loss") if h["rejected"] else "no difference shown"
        out[(m, e)] = h
    return out


def iv_text(d: dict | None) -> str:
    """'+1.2 [-0.5, +2.9]' in points, '*' when the interval excludes 0."""
    if d is None:
        return "-"
    star = "*" if d["excludes_zero"] else ""
    return f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]{star}"


def p_text(h: dict, n_boot: int) -> str:
    """A bootstrap p-value and its Holm threshold; no draw across 0 shows as p < 1/n_boot."""
    shown = f"< {1 / n_boot:.4f}" if h["p_value"] == 0 else f"{h['p_value']:.4f}"
    return f"{shown} ({h['threshold']:.4f})"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (the study reports' layout: ``|---|`` separators)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
