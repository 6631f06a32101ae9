"""Accuracy, the XLT table and the G-XLT matrix, with the averages the paper reports.

Definitions (n languages; acc(x) in [0, 1]; |D| = number of examples):

- XLT: ``xlt[l]`` = accuracy on the test set of language l.
  ``xlt_avg`` = (1/n) sum_l xlt[l] (macro); ``xlt_weighted`` = sum_l |D_l| xlt[l] / sum_l |D_l|.
- G-XLT: ``gxlt[(a, b)]`` = accuracy on pairs with sentence1 in language a and sentence2 in b.
  ``gxlt_avg`` = mean over all n*n ordered pairs; ``gxlt_weighted`` = size-weighted mean;
  ``gxlt_same_lang_avg`` = mean over the diagonal (a == b); ``gxlt_cross_lang_avg`` = mean over
  the n*(n-1) pairs with a != b; ``gap`` = same - cross (how much harder mixing languages is).
- Per-language G-XLT summary (used in comparisons): mean over the 2n-1 ordered pairs that
  involve the language on either side.
- Predicted-class rates (when the report was built from per-example predictions):
  ``xlt_pred_rates[l][c]`` = fraction of test[l] predicted as class c; for a two-class task
  ``[c=1]`` is the positive-prediction rate. A rate that moves while accuracy stays tells a
  calibration (threshold) shift from a change in what the model knows.
- Other per-set metrics of the same predictions (``metrics``, when the report was built from
  per-example predictions), each an EvalReport of the same shape with the same averages:
  ``"auc"`` (ROC-AUC, :mod:`fastrobust.evaluate.threshold_free`), ``"calibrated"`` (accuracy and
  predicted-class rates after the label-free correction, :mod:`fastrobust.evaluate.calibration`,
  reference = the model's own rates on the training language's set) and ``"ece"`` (expected
  calibration error). A set whose labels hold one class only has no AUC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastrobust.errors import FastrobustError


def accuracy(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of positions where prediction == label; both of shape (N,), N >= 1."""
    p = np.asarray(predictions).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise FastrobustError(f"accuracy: {p.shape[0]} predictions for {y.shape[0]} labels")
    if p.size == 0:
        raise FastrobustError("accuracy: no examples")
    return float((p == y).mean())


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _weighted(values: dict, sizes: dict) -> float | None:
    total = sum(sizes[k] for k in values)
    return float(sum(values[k] * sizes[k] for k in values) / total) if values and total else None


@dataclass
class EvalReport:
    """Accuracies of one model on one task: XLT per language and the G-XLT matrix.

    ``languages`` fixes the order of rows/columns (train language first; default: the order of
    ``xlt``). ``xlt_sizes`` /
    ``gxlt_sizes`` hold the number of test examples behind each accuracy (for weighted averages).
    ``gxlt`` is empty when G-XLT was not evaluated; its averages are then None.
    ``label_names`` (index = class id) and the predicted-class rates ``xlt_pred_rates`` /
    ``gxlt_pred_rates`` (set -> C fractions) are filled when the report comes from per-example
    predictions (:meth:`TaskPredictions.report`); empty otherwise.
    """

    xlt: dict[str, float]
    xlt_sizes: dict[str, int]
    gxlt: dict[tuple[str, str], float] = field(default_factory=dict)
    gxlt_sizes: dict[tuple[str, str], int] = field(default_factory=dict)
    task: str = ""
    languages: list[str] = field(default_factory=list)
    train_language: str | None = None
    label_names: list[str] = field(default_factory=list)
    xlt_pred_rates: dict[str, list[float]] = field(default_factory=dict)
    gxlt_pred_rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    metrics: dict[str, EvalReport] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.languages:  # default order: XLT languages, then any language seen only in G-XLT
            langs = list(self.xlt)
            for a, b in self.gxlt:
                langs += [x for x in (a, b) if x not in langs]
            self.languages = langs

    # ---- averages -------------------------------------------------------------------------
    @property
    def xlt_avg(self) -> float | None:
        return _mean([self.xlt[lang] for lang in self.languages if lang in self.xlt])

    @property
    def xlt_weighted(self) -> float | None:
        return _weighted(self.xlt, self.xlt_sizes)

    @property
    def gxlt_avg(self) -> float | None:
        return _mean(list(self.gxlt.values()))

    @property
    def gxlt_weighted(self) -> float | None:
        return _weighted(self.gxlt, self.gxlt_sizes)

    @property
    def gxlt_same_lang_avg(self) -> float | None:
        return _mean([v for (a, b), v in self.gxlt.items() if a == b])

    @property
    def gxlt_cross_lang_avg(self) -> float | None:
        return _mean([v for (a, b), v in self.gxlt.items() if a != b])

    @property
    def gap(self) -> float | None:
        same, cross = self.gxlt_same_lang_avg, self.gxlt_cross_lang_avg
        return None if same is None or cross is None else same - cross

    def gxlt_language_avg(self, lang: str) -> float | None:
        """Mean G-XLT accuracy over the ordered pairs that involve ``lang`` on either side."""
        return _mean([v for (a, b), v in self.gxlt.items() if lang in (a, b)])

    def gxlt_matrix(self) -> np.ndarray:
        """(n, n) array, row = language of sentence1, column = language of sentence2; NaN where absent."""
        n = len(self.languages)
        out = np.full((n, n), np.nan)
        for i, a in enumerate(self.languages):
            for j, b in enumerate(self.languages):
                if (a, b) in self.gxlt:
                    out[i, j] = self.gxlt[(a, b)]
        return out

    @property
    def zero_shot_avg(self) -> float | None:
        """Mean XLT accuracy over the languages other than the training language (None if none)."""
        return _mean(
            [self.xlt[lang] for lang in self.languages if lang in self.xlt and lang != self.train_language]
        )

    def averages(self) -> dict[str, float | None]:
        return {
            "xlt_avg": self.xlt_avg,
            "xlt_zero_shot_avg": self.zero_shot_avg,
            "xlt_weighted": self.xlt_weighted,
            "gxlt_avg": self.gxlt_avg,
            "gxlt_weighted": self.gxlt_weighted,
            "gxlt_same_lang_avg": self.gxlt_same_lang_avg,
            "gxlt_cross_lang_avg": self.gxlt_cross_lang_avg,
            "gap": self.gap,
        }

    # ---- serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the G-XLT matrix is nested ``{lang of sentence1: {lang of sentence2: acc}}``."""

        def nest(table: dict[tuple[str, str], Any]) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for (a, b), v in table.items():
                out.setdefault(a, {})[b] = v
            return out

        out = {
            "task": self.task,
            "train_language": self.train_language,
            "languages": list(self.languages),
            "xlt": dict(self.xlt),
            "xlt_sizes": dict(self.xlt_sizes),
            "gxlt": nest(self.gxlt),
            "gxlt_sizes": nest(self.gxlt_sizes),
            "averages": self.averages(),
        }
        if self.label_names:
            out["label_names"] = list(self.label_names)
        if self.xlt_pred_rates or self.gxlt_pred_rates:
            out["predicted_rates"] = {"xlt": dict(self.xlt_pred_rates), "gxlt": nest(self.gxlt_pred_rates)}
        if self.metrics:
            out["metrics"] = {name: m.to_dict() for name, m in self.metrics.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Inverse of :meth:`to_dict` (the ``averages`` entry is recomputed, not read)."""

        def flat(table: dict[str, dict[str, Any]]) -> dict[tuple[str, str], Any]:
            return {(a, b): v for a, row in table.items() for b, v in row.items()}

        try:
            rates = data.get("predicted_rates") or {}
            return cls(
                task=data["task"],
                languages=list(data["languages"]),
                xlt={k: float(v) for k, v in data["xlt"].items()},
                xlt_sizes={k: int(v) for k, v in data["xlt_sizes"].items()},
                gxlt={k: float(v) for k, v in flat(data.get("gxlt", {})).items()},
                gxlt_sizes={k: int(v) for k, v in flat(data.get("gxlt_sizes", {})).items()},
                train_language=data.get("train_language"),
                label_names=[str(x) for x in data.get("label_names", [])],
                xlt_pred_rates={k: [float(x) for x in v] for k, v in rates.get("xlt", {}).items()},
                gxlt_pred_rates={k: [float(x) for x in v] for k, v in flat(rates.get("gxlt", {})).items()},
                metrics={name: cls.from_dict(m) for name, m in (data.get("metrics") or {}).items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise FastrobustError(
                f"EvalReport.from_dict: malformed report ({type(exc).__name__}: {exc})"
            ) from None
