"""Figures (matplotlib, Agg backend: no display needed): G-XLT heatmap and method comparison bars."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: figures are only written to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fastrobust.evaluate.metrics import EvalReport  # noqa: E402


def gxlt_heatmap(report: EvalReport, path: str, title: str | None = None) -> None:
    """PNG heatmap of the G-XLT matrix (accuracy %), row = language of sentence1, column = sentence2."""
    mat = 100 * report.gxlt_matrix()
    n = len(report.languages)
    size = max(4.0, 0.55 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    try:
        im = ax.imshow(np.ma.masked_invalid(mat), cmap="viridis", vmin=np.nanmin(mat), vmax=np.nanmax(mat))
        ax.set_xticks(range(n), report.languages)
        ax.set_yticks(range(n), report.languages)
        ax.set_xlabel("language of sentence 2")
        ax.set_ylabel("language of sentence 1")
        ax.set_title(title or f"G-XLT accuracy (%) - {report.task}")
        if n <= 16:  # numbers stay readable up to XNLI's 15 languages
            mid = np.nanmean(mat)
            for i in range(n):
                for j in range(n):
                    if not np.isnan(mat[i, j]):
                        color = "black" if mat[i, j] > mid else "white"
                        ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=8, color=color)
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label("accuracy (%)")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)


def comparison_chart(reports: Mapping[str, EvalReport], path: str) -> None:
    """PNG with grouped bars per method: XLT per language + average (left), G-XLT summary (right)."""
    labels = list(reports)
    first = next(iter(reports.values()))
    langs = list(first.languages)
    has_gxlt = any(r.gxlt for r in reports.values())
    fig, axes = plt.subplots(1, 2 if has_gxlt else 1, figsize=(13 if has_gxlt else 8, 4.5), squeeze=False)
    try:
        groups = [*langs, "avg"]
        width = 0.8 / len(labels)
        x = np.arange(len(groups))
        ax = axes[0, 0]
        for k, label in enumerate(labels):
            rep = reports[label]
            vals = [rep.xlt.get(lang, np.nan) for lang in langs] + [rep.xlt_avg or np.nan]
            ax.bar(x + (k - (len(labels) - 1) / 2) * width, 100 * np.asarray(vals, float), width, label=label)
        ax.set_xticks(x, groups)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("XLT")
        ax.legend(fontsize=8, loc="lower right")
        if has_gxlt:
            ax = axes[0, 1]
            groups = ["avg", "same-lang", "cross-lang"]
            x = np.arange(len(groups))
            for k, label in enumerate(labels):
                rep = reports[label]
                vals = [rep.gxlt_avg, rep.gxlt_same_lang_avg, rep.gxlt_cross_lang_avg]
                vals = [np.nan if v is None else v for v in vals]
                ax.bar(
                    x + (k - (len(labels) - 1) / 2) * width, 100 * np.asarray(vals, float), width, label=label
                )
            ax.set_xticks(x, groups)
            ax.set_title("G-XLT")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)
