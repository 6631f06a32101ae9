"""Comparison cells: the numbers a comparison shows, as linear combinations of per-set accuracies.

Every number a comparison shows is a *cell*: a fixed linear combination of per-set accuracies,
``cell = sum_k w_k acc_k`` over test sets k (XLT languages, G-XLT pairs). The cells are the
accuracy of each XLT language, the XLT average (all languages), the zero-shot average (all but the
training language), and the G-XLT average, same-language average (the diagonal pairs),
cross-language average (off-diagonal pairs) and gap (same - cross).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastrobust.evaluate.metrics import EvalReport
from fastrobust.evaluate.predictions import SetPredictions, TaskPredictions

SetKey = tuple[str, Any]  # ("xlt", lang) or ("gxlt", (lang1, lang2))


@dataclass(frozen=True)
class Cell:
    """A named linear combination of per-set accuracies: value = sum_k weights[k] * acc_k."""

    key: str
    title: str
    group: str  # "xlt" or "gxlt"
    weights: tuple[tuple[SetKey, float], ...]

    def value(self, acc: Mapping[SetKey, float]) -> float | None:
        if any(k not in acc for k, _ in self.weights):
            return None
        return float(sum(w * acc[k] for k, w in self.weights))


def _even(keys: Sequence[SetKey], sign: float = 1.0) -> list[tuple[SetKey, float]]:
    return [(k, sign / len(keys)) for k in keys]


def define_cells(report: EvalReport) -> list[Cell]:
    """The comparison cells of a task, from the sets that ``report`` evaluated (see module doc)."""
    langs = [lang for lang in report.languages if lang in report.xlt]
    cells = [Cell(f"xlt:{lang}", lang, "xlt", ((("xlt", lang), 1.0),)) for lang in langs]
    if len(langs) > 1:
        cells.append(Cell("xlt_avg", "avg", "xlt", tuple(_even([("xlt", lang) for lang in langs]))))
    zero_shot = [lang for lang in langs if lang != report.train_language]
    if report.train_language in langs and zero_shot:
        cells.append(
            Cell("xlt_zero_shot_avg", "zero-shot avg", "xlt", tuple(_even([("xlt", x) for x in zero_shot])))
        )
    if report.gxlt:
        cells += _gxlt_cells(report)
    return cells


def _gxlt_cells(report: EvalReport) -> list[Cell]:
    """The G-XLT cells: average over all pairs, same-language, cross-language and their gap."""

    # A diagonal pair (a, a) is the XLT set of a (same examples, same predictions).
    def key(pair: tuple[str, str]) -> SetKey:
        return ("xlt", pair[0]) if pair[0] == pair[1] and pair[0] in report.xlt else ("gxlt", pair)

    pairs = list(report.gxlt)
    same = [key(p) for p in pairs if p[0] == p[1]]
    cross = [key(p) for p in pairs if p[0] != p[1]]
    cells = [Cell("gxlt_avg", "avg", "gxlt", tuple(_even([key(p) for p in pairs])))]
    if same:
        cells.append(Cell("gxlt_same", "same-language", "gxlt", tuple(_even(same))))
    if cross:
        cells.append(Cell("gxlt_cross", "cross-language", "gxlt", tuple(_even(cross))))
    if same and cross:
        cells.append(Cell("gxlt_gap", "gap (same - cross)", "gxlt", tuple(_even(same) + _even(cross, -1.0))))
    return cells


def report_accuracies(report: EvalReport) -> dict[SetKey, float]:
    """{set: accuracy} of every XLT and G-XLT set of ``report``."""
    acc: dict[SetKey, float] = {("xlt", k): v for k, v in report.xlt.items()}
    acc.update({("gxlt", k): v for k, v in report.gxlt.items()})
    return acc


def set_predictions(pred: TaskPredictions, key: SetKey) -> SetPredictions | None:
    """The predictions of one set (None when ``pred`` lacks it)."""
    kind, k = key
    table = pred.xlt if kind == "xlt" else pred.gxlt
    return table.get(k)
