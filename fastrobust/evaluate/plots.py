"""Figures (matplotlib, Agg backend: no display needed): G-XLT heatmap and the method comparison."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: figures are only written to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fastrobust.evaluate.metrics import EvalReport  # noqa: E402
from fastrobust.evaluate.stats import Comparison, as_comparison  # noqa: E402


def _heatmap(ax, fig, report: EvalReport, values: EvalReport, name: str) -> None:
    mat = 100 * values.gxlt_matrix()
    n = len(report.languages)
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="viridis", vmin=np.nanmin(mat), vmax=np.nanmax(mat))
    ax.set_xticks(range(n), report.languages)
    ax.set_yticks(range(n), report.languages)
    ax.set_xlabel("language of sentence 2")
    ax.set_ylabel("language of sentence 1")
    ax.set_title(name)
    if n <= 16:  # numbers stay readable up to XNLI's 15 languages
        mid = np.nanmean(mat)
        for i in range(n):
            for j in range(n):
                if not np.isnan(mat[i, j]):
                    color = "black" if mat[i, j] > mid else "white"
                    ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=8, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(name)


HEATMAP_PANELS = (
    ("accuracy", "accuracy (%)"),
    ("calibrated", "calibrated accuracy (%)"),
    ("auc", "ROC-AUC (%)"),
)


def gxlt_heatmap(report: EvalReport, path: str, title: str | None = None) -> None:
    """PNG heatmaps of the G-XLT matrix, row = language of sentence1, column = sentence2: accuracy
    and, when the report has them, accuracy after the label-free correction and ROC-AUC (%)."""
    panels = [
        (report if key == "accuracy" else report.metrics[key], name)
        for key, name in HEATMAP_PANELS
        if key == "accuracy" or (key in report.metrics and report.metrics[key].gxlt)
    ]
    n = len(report.languages)
    size = max(4.0, 0.55 * n + 2.0)
    fig, axes = plt.subplots(1, len(panels), figsize=((size + 1.0) * len(panels), size), squeeze=False)
    try:
        for ax, (values, name) in zip(axes[0], panels, strict=True):
            _heatmap(ax, fig, report, values, name)
        fig.suptitle(title or f"G-XLT - {report.task}")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)


def _bars(ax, comp: Comparison, keys: list[str], labels: list[str]) -> None:
    """Grouped bars (one group per cell, one bar per method): seed mean, sd whisker when there are
    several seeds, and the mean's value written inside each bar, at its visible base."""
    methods = list(comp.methods)
    width = 0.8 / len(methods)
    x = np.arange(len(keys))
    finite = [100 * s.mean for m in comp.methods.values() for key in keys if (s := m.stats.get(key))]
    # Start the axis near the data, so that differences of a few points stay visible.
    low = max(0.0, min(finite) - 15.0) if finite else 0.0
    ax.set_ylim(low, min(100.0, max(finite) + 5.0) if finite else 100.0)
    for k, label in enumerate(methods):
        stats = [comp.methods[label].stats.get(key) for key in keys]
        means = np.array([np.nan if s is None else 100 * s.mean for s in stats])
        sds = np.array([np.nan if s is None or s.sd is None else 100 * s.sd for s in stats])
        pos = x + (k - (len(methods) - 1) / 2) * width
        ax.bar(pos, means, width, label=label, color=f"C{k}")
        if np.isfinite(sds).any():
            ax.errorbar(
                pos, means, yerr=np.nan_to_num(sds), fmt="none", ecolor="black", elinewidth=0.8, capsize=2
            )
        for p_, m in zip(pos, means):
            if np.isfinite(m):
                ax.text(
                    p_,
                    low + 1.0,
                    f"{m:.1f}",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                    color="white",
                )
    ax.set_xticks(x, labels)
    ax.set_ylabel("accuracy (%)")


def comparison_figure(comp: Comparison):
    """The comparison as a matplotlib figure (see :func:`comparison_chart`); the caller closes it."""
    # The gap is a difference, not an accuracy: it is shown in the difference panel only.
    groups = [[c for c in comp.cells if c.group == g and c.key != "gxlt_gap"] for g in ("xlt", "gxlt")]
    groups = [g for g in groups if g]
    key_cells = [
        c
        for c in comp.cells
        if c.key in (f"xlt:{comp.train_language}", "xlt_zero_shot_avg", "xlt_avg", "gxlt_cross", "gxlt_gap")
    ]
    has_diffs = any(m.diffs for m in comp.methods.values())
    ncols = len(groups) + (1 if has_diffs else 0)
    widths = [max(2.5, 0.55 * len(g) * max(1, len(comp.methods)) ** 0.5 + 1.0) for g in groups]
    if has_diffs:
        widths.append(max(3.0, 0.7 * len(key_cells) + 1.5))
    fig, axes = plt.subplots(
        1, ncols, figsize=(sum(widths) + 1.0, 4.8), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, cells, name in zip(axes[0], groups, ("XLT", "G-XLT")):
        _bars(ax, comp, [c.key for c in cells], [c.title for c in cells])
        ax.set_title(f"{name} accuracy, mean ± sd over seeds", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    if has_diffs:
        ax = axes[0, -1]
        others = [label for label in comp.methods if label != comp.baseline]
        width = 0.8 / max(1, len(others))
        x = np.arange(len(key_cells))
        for k, label in enumerate(others):
            ivs = [comp.methods[label].diffs.get(c.key) for c in key_cells]
            pos = x + (k - (len(others) - 1) / 2) * width
            color = f"C{list(comp.methods).index(label)}"
            for p, iv in zip(pos, ivs):
                if iv is None:
                    continue
                err = [[100 * (iv.estimate - iv.low)], [100 * (iv.high - iv.estimate)]]
                fill = color if iv.excludes_zero else "white"
                ax.errorbar(p, 100 * iv.estimate, yerr=err, fmt="o", color=color, mfc=fill, capsize=3, ms=5)
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xticks(x, [c.title if c.group == "xlt" else f"G-XLT {c.title}" for c in key_cells])
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.set_ylabel(f"difference to {comp.baseline} (points)")
        ax.set_title(f"{100 * comp.confidence:.0f}% paired bootstrap CI (filled: excludes 0)", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    # Below the panels, outside every axes: a legend inside a panel covered bars.
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.suptitle(
        f"{comp.task}: {', '.join(f'{k} ({len(m.seeds)} seeds)' for k, m in comp.methods.items())}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return fig


def comparison_chart(comparison: Comparison | Mapping[str, EvalReport], path: str) -> None:
    """PNG: grouped bars per method for the XLT cells and the G-XLT summary (mean over seeds, sd
    whiskers, values on the bars), and a panel of differences to the baseline with their intervals."""
    fig = comparison_figure(as_comparison(comparison))
    try:
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)
