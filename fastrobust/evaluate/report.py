"""Reports: JSON, CSV, markdown tables and PNG figures of one EvalReport or a comparison of several.

Every file is written atomically (to a temporary file in the same folder, then ``os.replace``), so
a reader never sees a half-written report, even if the writer is killed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from fastrobust.evaluate.comparison import METRIC_TITLES
from fastrobust.evaluate.metrics import EvalReport
from fastrobust.evaluate.stats import SCOPE_EXAMPLES, CellStat, Comparison, Interval, as_comparison
from fastrobust.fileio import atomic_write, atomic_write_json, atomic_write_text


def _fmt(x: float | None, digits: int = 1) -> str:
    """An accuracy in [0, 1] as a percentage with ``digits`` decimals ('-' when absent). The value
    is first rounded to 9 decimals, so that the mean of equal values rounds as they do (a mean of
    0.4375s computed as 0.43749999... must print 43.8 like each of them, not 43.7)."""
    return "-" if x is None else f"{round(100 * x, 9):.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---- one report --------------------------------------------------------------------------------
def _rate_classes(report: EvalReport) -> list[tuple[int, str]]:
    """(class id, name) whose predicted rate the markdown shows: class 1 ("positive") for two
    classes, every class otherwise; none when the report has no rates."""
    if not (report.xlt_pred_rates or report.gxlt_pred_rates):
        return []
    some = next(iter({**report.xlt_pred_rates, **report.gxlt_pred_rates}.values()))
    names = report.label_names or [str(c) for c in range(len(some))]
    return [(1, names[1])] if len(names) == 2 else list(enumerate(names))


METRIC_ROWS = (("calibrated", "calibrated accuracy"), ("auc", "ROC-AUC"), ("ece", "ECE"))


def _metric_views(report: EvalReport) -> list[tuple[str, EvalReport]]:
    """(row title, per-set values) of the report's other metrics, in a fixed order."""
    return [(title, report.metrics[key]) for key, title in METRIC_ROWS if key in report.metrics]


def xlt_markdown(report: EvalReport) -> str:
    """Markdown table: a column per language, then macro and weighted averages; rows: accuracy,
    and when known the accuracy after the label-free correction, ROC-AUC, ECE (all %) and the
    share of each set predicted as a class (the positive class for two; after the correction too)."""
    header = ["", *report.languages, "avg", "weighted avg"]
    rows = []
    for title, values in [("accuracy", report), *_metric_views(report)]:
        row = [title, *(_fmt(values.xlt.get(lang)) for lang in report.languages)]
        rows.append(row + [_fmt(values.xlt_avg), _fmt(values.xlt_weighted)])
    calibrated = report.metrics.get("calibrated")
    for c, name in _rate_classes(report):
        for what, source in (("", report), (" after correction", calibrated)):
            if source is None:
                continue
            rates = [source.xlt_pred_rates.get(lang) for lang in report.languages]
            rows.append([f"predicted {name}{what}", *(_fmt(r[c] if r else None) for r in rates), "", ""])
    return _md_table(header, rows)


def _gxlt_summary(report: EvalReport) -> str:
    """One row per metric: the G-XLT averages (all pairs, weighted, same-language, cross, gap)."""
    rows = []
    for title, v in [("accuracy", report), *_metric_views(report)]:
        if v.gxlt:
            rows.append(
                [title, *(_fmt(x) for x in (v.gxlt_avg, v.gxlt_weighted, v.gxlt_same_lang_avg))]
                + [_fmt(v.gxlt_cross_lang_avg), _fmt(v.gap)]
            )
    header = ["", "avg", "weighted avg", "same-language avg", "cross-language avg", "gap (same - cross)"]
    return _md_table(header, rows)


def _gxlt_grid(report: EvalReport, values: EvalReport) -> str:
    header = ["sentence1 \\ sentence2", *report.languages, "row avg"]
    rows = []
    for a in report.languages:
        vals = [values.gxlt.get((a, b)) for b in report.languages]
        present = [v for v in vals if v is not None]
        rows.append([a, *(_fmt(v) for v in vals), _fmt(sum(present) / len(present) if present else None)])
    return _md_table(header, rows)


def gxlt_markdown(report: EvalReport) -> str:
    """Markdown G-XLT matrices: row = language of sentence1, column = language of sentence2
    (accuracy %; then, when known, calibrated accuracy and ROC-AUC), the averages of every metric,
    and the share of each pair set predicted as a class."""
    if not report.gxlt:
        return "G-XLT not evaluated."
    parts = [_gxlt_grid(report, report), _gxlt_summary(report)]
    for key, title in METRIC_ROWS[:2]:
        if key in report.metrics and report.metrics[key].gxlt:
            parts.append(f"{title[0].upper() + title[1:]} (%):\n\n" + _gxlt_grid(report, report.metrics[key]))
    header = ["sentence1 \\ sentence2", *report.languages]
    for c, name in _rate_classes(report):
        if not report.gxlt_pred_rates:
            break
        grid = []
        for a in report.languages:
            vals = [report.gxlt_pred_rates.get((a, b)) for b in report.languages]
            grid.append([a, *(_fmt(v[c] if v else None) for v in vals)])
        parts.append(f"Predicted {name} (%):\n\n" + _md_table(header, grid))
    return "\n\n".join(parts)


def report_markdown(report: EvalReport, title: str | None = None) -> str:
    """The full markdown report: XLT table and G-XLT matrix with its averages."""
    title = title or f"Evaluation report: {report.task}"
    sizes = ", ".join(f"{lang} {report.xlt_sizes.get(lang, 0)}" for lang in report.languages)
    parts = [
        f"# {title}",
        "",
        f"Accuracy in %. Train language: {report.train_language or '-'}. Test examples: {sizes}."
        + (
            " Calibrated accuracy: after the label-free correction (each set's decision rule moved so "
            "that its predicted-class rates equal the model's own on the training language; no target "
            "label read). ROC-AUC and ECE (expected calibration error) do not depend on a threshold."
            if report.metrics
            else ""
        ),
        "",
        "## Zero-shot cross-lingual transfer (XLT)",
        "",
        xlt_markdown(report),
        "",
        "## Generalized cross-lingual transfer (G-XLT)",
        "",
        gxlt_markdown(report),
        "",
    ]
    return "\n".join(parts)


def _csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_report(report: EvalReport, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write report.json, xlt.csv, report.md and, when G-XLT was evaluated, gxlt.csv and gxlt_heatmap.png;
    sets.csv when the report holds predicted-class rates.

    xlt.csv: ``language,accuracy,examples`` per language. sets.csv: one row per test set (XLT
    language or G-XLT pair) with its accuracy, size and the share predicted as each class.
    gxlt.csv: the matrix, first column the language of sentence1, header the languages of
    sentence2. Accuracies are fractions in [0, 1] in JSON/CSV and percentages in markdown.
    Returns {file name: path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    written["report.json"] = atomic_write_json(out / "report.json", report.to_dict())
    extra = [key for key, _ in METRIC_ROWS if key in report.metrics]
    rows: list[list] = [["language", "accuracy", "examples", *(_CSV_NAMES[k] for k in extra)]]
    rows += [
        [lang, report.xlt[lang], report.xlt_sizes.get(lang, "")]
        + [report.metrics[k].xlt.get(lang, "") for k in extra]
        for lang in report.languages
        if lang in report.xlt
    ]
    written["xlt.csv"] = atomic_write_text(out / "xlt.csv", _csv_text(rows))
    written["report.md"] = atomic_write_text(out / "report.md", report_markdown(report, title))
    if report.gxlt:
        grid: list[list] = [["sentence1\\sentence2", *report.languages]]
        for a in report.languages:
            grid.append([a, *(report.gxlt.get((a, b), "") for b in report.languages)])
        written["gxlt.csv"] = atomic_write_text(out / "gxlt.csv", _csv_text(grid))
        from fastrobust.evaluate.plots import gxlt_heatmap  # matplotlib loads only to draw a figure

        path = out / "gxlt_heatmap.png"
        atomic_write(path, lambda tmp: gxlt_heatmap(report, tmp, title=title))
        written["gxlt_heatmap.png"] = path
    if report.xlt_pred_rates or report.gxlt_pred_rates:
        written["sets.csv"] = atomic_write_text(out / "sets.csv", _sets_csv(report))
    return written


_CSV_NAMES = {"calibrated": "calibrated_accuracy", "auc": "roc_auc", "ece": "ece"}


def _sets_csv(report: EvalReport) -> str:
    some = next(iter({**report.xlt_pred_rates, **report.gxlt_pred_rates}.values()))
    names = report.label_names or [str(c) for c in range(len(some))]
    extra = [key for key, _ in METRIC_ROWS if key in report.metrics]
    cal = report.metrics.get("calibrated")
    rows: list[list] = [
        ["kind", "language1", "language2", "examples", "accuracy", *(f"predicted_{n}" for n in names)]
        + [_CSV_NAMES[k] for k in extra]
        + ([f"calibrated_predicted_{n}" for n in names] if cal is not None else [])
    ]

    def tail(table: str, key: object) -> list:
        vals = [getattr(report.metrics[k], table).get(key, "") for k in extra]
        if cal is not None:
            vals += list(getattr(cal, f"{table}_pred_rates").get(key, [""] * len(names)))
        return vals

    for lang, rates in report.xlt_pred_rates.items():
        rows.append(
            [
                "xlt",
                lang,
                lang,
                report.xlt_sizes.get(lang, ""),
                report.xlt.get(lang, ""),
                *rates,
                *tail("xlt", lang),
            ]
        )
    for (a, b), rates in report.gxlt_pred_rates.items():
        key = (a, b)
        row = ["gxlt", a, b, report.gxlt_sizes.get(key, ""), report.gxlt.get(key, ""), *rates]
        rows.append(row + tail("gxlt", key))
    return _csv_text(rows)


# ---- several runs: the comparison ------------------------------------------------------------
def _pm(stat: CellStat | None) -> str:
    """'mean ± sd' in % ('mean' alone for one seed, '-' when absent)."""
    if stat is None:
        return "-"
    return _fmt(stat.mean) + ("" if stat.sd is None else f" ± {100 * stat.sd:.1f}")


def _delta(iv: Interval | None) -> str:
    """'+1.2 [-0.5, +2.9]' in points, with ' *' when the interval excludes 0."""
    if iv is None:
        return "-"
    mark = " *" if iv.excludes_zero else ""
    return f"{100 * iv.estimate:+.1f} [{100 * iv.low:+.1f}, {100 * iv.high:+.1f}]{mark}"


def _level(comp: Comparison) -> str:
    return f"{100 * comp.confidence:.0f}%"


def comparison_tables(comp: Comparison) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the comparison: per group (XLT, G-XLT) one table of mean ± sd over
    seeds and one of differences to the baseline with their intervals. Shared by the markdown and
    console renderings, so both always show the same numbers."""
    tables = []
    what = METRIC_TITLES[comp.metric]
    for group, name in (("xlt", "XLT"), ("gxlt", "G-XLT")):
        cells = [c for c in comp.cells if c.group == group]
        if not cells:
            continue
        titles = [c.title for c in cells]
        rows = [
            [label, str(len(m.seeds)), *(_pm(m.stats.get(c.key)) for c in cells)]
            for label, m in comp.methods.items()
        ]
        tables.append((f"{name} {what} (%), mean ± sd over seeds", ["method", "seeds", *titles], rows))
        diff_rows = [
            [label, *(_delta(m.diffs.get(c.key)) for c in cells)]
            for label, m in comp.methods.items()
            if label != comp.baseline and m.diffs
        ]
        if diff_rows:
            tables.append(
                (
                    f"{name} {what}: difference to {comp.baseline} (points) [{_level(comp)} CI]",
                    ["method", *titles],
                    diff_rows,
                )
            )
    return tables


def comparison_notes(comp: Comparison) -> list[str]:
    """Sentences that say how to read the tables (procedure, seeds, what an interval covers)."""
    level = f"{100 * comp.confidence:.0f}%"
    notes = [
        f"Accuracy in %: mean ± sample sd over seeds. Difference: method - {comp.baseline} of the seed "
        f"means, in points, with a {level} paired bootstrap interval ({comp.n_boot} draws resampling "
        "test examples - the same for both methods - and seeds; docs/statistics.md). "
        "* = the interval excludes 0.",
        "Seeds: "
        + "; ".join(f"{label} {', '.join(map(str, m.seeds))}" for label, m in comp.methods.items())
        + ".",
    ]
    scopes = {iv.scope for m in comp.methods.values() for iv in m.diffs.values() if iv is not None}
    if SCOPE_EXAMPLES in scopes:
        notes.append(
            "With one seed an interval covers test-example resampling only: it does not say how much "
            "another seed would move the result (train with several seeds for that)."
        )
    notes += [f"{label}: {m.note}." for label, m in comp.methods.items() if m.note]
    return notes


VIEW_NOTE = (
    "Calibrated accuracy: accuracy after the label-free correction (each test set's decision rule "
    "moved so that its predicted-class rates equal the model's own on the training language; no "
    "target label read; docs/statistics.md). ROC-AUC: threshold-free. Both use the same paired "
    "bootstrap as accuracy."
)


def comparison_markdown(reports: Comparison | Mapping[str, EvalReport]) -> str:
    """Markdown of a comparison (see :func:`comparison_tables`) and of its views (calibrated
    accuracy, ROC-AUC); accepts bare reports (one seed each)."""
    comp = as_comparison(reports)
    parts = [f"# Comparison ({comp.task})", "", *(n + "\n" for n in comparison_notes(comp))]
    if comp.views:
        parts += [VIEW_NOTE, ""]
    for c in [comp, *comp.views.values()]:
        for title, header, rows in comparison_tables(c):
            parts += [f"## {title}", "", _md_table(header, rows), ""]
    return "\n".join(parts)


COMPACT_CELLS = (("xlt_zero_shot_avg", "XLT zero-shot"), ("gxlt_cross", "G-XLT cross"))
COMPACT_NAMES = {"calibrated": "calibrated", "auc": "AUC"}


def compact_views(comp: Comparison) -> str | None:
    """One console table of the views: per method, the seed mean (and the difference to the
    baseline with its interval) of calibrated accuracy and ROC-AUC on the zero-shot XLT average and
    the G-XLT cross-language average (the markdown has every cell). None without views."""
    cols = [
        (name, key, title)
        for name, view in comp.views.items()
        for key, title in COMPACT_CELLS
        if any(key in m.stats for m in view.methods.values())
    ]
    if not cols:
        return None
    rows = []
    for label in comp.methods:
        row = [label]
        for name, key, _ in cols:
            m = comp.views[name].methods.get(label)
            stat = m.stats.get(key) if m else None
            iv = m.diffs.get(key) if m else None
            row.append(_fmt(stat.mean) if iv is None else f"{_fmt(stat.mean)} {_delta(iv)}")
        rows.append(row)
    header = ["method", *(f"{COMPACT_NAMES.get(n, n)} {t}" for n, _, t in cols)]
    return (
        f"Calibrated accuracy and ROC-AUC (%; difference to {comp.baseline} [{_level(comp)} CI]):\n"
        + text_table(header, rows)
    )


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned plain-text table (first column left-aligned, others right-aligned)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def comparison_text(reports: Comparison | Mapping[str, EvalReport]) -> str:
    """The console rendering of a comparison: the accuracy tables and notes of the markdown, and
    the views (calibrated accuracy, ROC-AUC) as one compact table."""
    comp = as_comparison(reports)
    parts = [f"{title}:\n{text_table(header, rows)}" for title, header, rows in comparison_tables(comp)]
    compact = compact_views(comp)
    if compact:
        parts.append(compact)
    return "\n\n".join([*parts, "\n".join(comparison_notes(comp))])


def comparison_csv(comp: Comparison) -> str:
    """One row per (method, cell): accuracies and differences as fractions in [0, 1] / [-1, 1]."""
    rows: list[list] = [
        [
            "metric", "method", "kind", "cell", "title", "group", "seeds", "n_seeds", "mean", "sd", "values",
            "difference", "ci_low", "ci_high", "excludes_zero", "interval_scope",
        ]
    ]  # fmt: skip
    for view in [comp, *comp.views.values()]:
        for label, m in view.methods.items():
            for c in view.cells:
                stat = m.stats.get(c.key)
                if stat is None:
                    continue
                iv = m.diffs.get(c.key)
                ci = ("",) * 5 if iv is None else (iv.estimate, iv.low, iv.high, iv.excludes_zero, iv.scope)
                rows.append(
                    [
                        view.metric, label, m.kind or "", c.key, c.title, c.group,
                        " ".join(map(str, m.seeds)), len(m.seeds), stat.mean,
                        "" if stat.sd is None else stat.sd, " ".join(repr(v) for v in stat.values), *ci,
                    ]
                )  # fmt: skip
    return _csv_text(rows)


def write_comparison(reports: Comparison | Mapping[str, EvalReport], out_dir: str | Path) -> str:
    """Write comparison.md, comparison.json, comparison.csv and comparison.png; return the markdown.

    ``reports``: a :class:`Comparison` (several seeds, intervals), or ``{label: EvalReport}`` (one
    run each, no per-example predictions: means only). comparison.json is
    :meth:`Comparison.to_dict` (cells, per-seed values, intervals, and every run's report).
    """
    comp = as_comparison(reports)
    text = comparison_markdown(comp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.md", text)
    atomic_write_json(out / "comparison.json", comp.to_dict())
    atomic_write_text(out / "comparison.csv", comparison_csv(comp))
    from fastrobust.evaluate.plots import comparison_chart  # matplotlib loads only to draw a figure

    atomic_write(out / "comparison.png", lambda tmp: comparison_chart(comp, tmp))
    return text
