"""Reports: JSON, CSV, markdown tables and PNG figures of one EvalReport or a comparison of several.

Every file is written atomically (to a temporary file in the same folder, then ``os.replace``), so
a reader never sees a half-written report, even if the writer is killed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

from fastrobust.evaluate.metrics import EvalReport
from fastrobust.fileio import atomic_write, atomic_write_text

# Atomic writes with the user's umask (fastrobust.fileio); re-exported here, where callers found them.
_atomic_write = atomic_write


def _fmt(x: float | None, digits: int = 1) -> str:
    """An accuracy in [0, 1] as a percentage with ``digits`` decimals ('-' when absent)."""
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---- one report --------------------------------------------------------------------------------
def xlt_markdown(report: EvalReport) -> str:
    """Markdown table: one row, a column per language (accuracy %), then macro and weighted averages."""
    header = ["", *report.languages, "avg", "weighted avg"]
    row = ["accuracy", *(_fmt(report.xlt.get(lang)) for lang in report.languages)]
    row += [_fmt(report.xlt_avg), _fmt(report.xlt_weighted)]
    return _md_table(header, [row])


def gxlt_markdown(report: EvalReport) -> str:
    """Markdown G-XLT matrix: row = language of sentence1, column = language of sentence2 (accuracy %)."""
    if not report.gxlt:
        return "G-XLT not evaluated."
    header = ["sentence1 \\ sentence2", *report.languages, "row avg"]
    rows = []
    for a in report.languages:
        vals = [report.gxlt.get((a, b)) for b in report.languages]
        present = [v for v in vals if v is not None]
        rows.append([a, *(_fmt(v) for v in vals), _fmt(sum(present) / len(present) if present else None)])
    table = _md_table(header, rows)
    summary = _md_table(
        ["avg", "weighted avg", "same-language avg", "cross-language avg", "gap (same - cross)"],
        [
            [
                _fmt(report.gxlt_avg),
                _fmt(report.gxlt_weighted),
                _fmt(report.gxlt_same_lang_avg),
                _fmt(report.gxlt_cross_lang_avg),
                _fmt(report.gap),
            ]
        ],
    )
    return table + "\n\n" + summary


def report_markdown(report: EvalReport, title: str | None = None) -> str:
    """The full markdown report: XLT table and G-XLT matrix with its averages."""
    title = title or f"Evaluation report: {report.task}"
    sizes = ", ".join(f"{lang} {report.xlt_sizes.get(lang, 0)}" for lang in report.languages)
    parts = [
        f"# {title}",
        "",
        f"Accuracy in %. Train language: {report.train_language or '-'}. Test examples: {sizes}.",
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
    """Write report.json, xlt.csv, report.md and, when G-XLT was evaluated, gxlt.csv and gxlt_heatmap.png.

    xlt.csv: ``language,accuracy,examples`` per language. gxlt.csv: the matrix, first column the
    language of sentence1, header the languages of sentence2. Accuracies are fractions in [0, 1]
    in JSON/CSV and percentages in markdown. Returns {file name: path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    written["report.json"] = atomic_write_text(
        out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n"
    )
    rows: list[list] = [["language", "accuracy", "examples"]]
    rows += [
        [lang, report.xlt[lang], report.xlt_sizes.get(lang, "")]
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
        from fastrobust.evaluate.plots import gxlt_heatmap

        path = out / "gxlt_heatmap.png"
        _atomic_write(path, lambda tmp: gxlt_heatmap(report, tmp, title=title))
        written["gxlt_heatmap.png"] = path
    return written


# ---- several reports ---------------------------------------------------------------------------
def comparison_markdown(reports: Mapping[str, EvalReport]) -> str:
    """Markdown: an XLT table and a G-XLT table; rows = methods, columns = languages + averages.

    G-XLT language columns hold the mean over the ordered pairs involving that language.
    """
    if not reports:
        raise ValueError("write_comparison: no reports given")
    first = next(iter(reports.values()))
    languages = list(first.languages)
    for rep in reports.values():  # union keeps every language that any run evaluated, in first-seen order
        languages += [lang for lang in rep.languages if lang not in languages]
    xlt_rows = [
        [label, *(_fmt(r.xlt.get(lang)) for lang in languages), _fmt(r.xlt_avg), _fmt(r.xlt_weighted)]
        for label, r in reports.items()
    ]
    parts = [
        f"# Comparison ({first.task})",
        "",
        "Accuracy in %. XLT: test set of each language. G-XLT: language columns average the ordered "
        "pairs that involve the language; same/cross = diagonal/off-diagonal pairs; gap = same - cross.",
        "",
        "## XLT",
        "",
        _md_table(["method", *languages, "avg", "weighted avg"], xlt_rows),
        "",
    ]
    with_gxlt = {label: r for label, r in reports.items() if r.gxlt}
    if with_gxlt:
        gx_rows = [
            [
                label,
                *(_fmt(r.gxlt_language_avg(lang)) for lang in languages),
                _fmt(r.gxlt_avg),
                _fmt(r.gxlt_same_lang_avg),
                _fmt(r.gxlt_cross_lang_avg),
                _fmt(r.gap),
            ]
            for label, r in with_gxlt.items()
        ]
        parts += [
            "## G-XLT",
            "",
            _md_table(["method", *languages, "avg", "same", "cross", "gap"], gx_rows),
            "",
        ]
    return "\n".join(parts)


def write_comparison(reports: Mapping[str, EvalReport], out_dir: str | Path) -> str:
    """Write comparison.md, comparison.json ({label: report dict}) and comparison.png; return the markdown."""
    text = comparison_markdown(reports)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.md", text)
    payload = {label: r.to_dict() for label, r in reports.items()}
    atomic_write_text(out / "comparison.json", json.dumps(payload, indent=2) + "\n")
    from fastrobust.evaluate.plots import comparison_chart

    _atomic_write(out / "comparison.png", lambda tmp: comparison_chart(reports, tmp))
    return text
