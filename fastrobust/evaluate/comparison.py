"""Comparing finished runs: every method's cells over its seeds, and its differences to the baseline.

Over seeds: for a method with seeds s = 1..S, ``mean = (1/S) sum_s cell_s`` and ``sd`` the sample
standard deviation (ddof = 1; undefined for one seed). The cells are
:mod:`fastrobust.evaluate.cells`; the intervals of the differences are the paired bootstrap of
:mod:`fastrobust.evaluate.bootstrap`.

A comparison is of one per-set *metric* (:data:`METRICS`): ``accuracy`` (at the model's own
decision rule), ``calibrated`` (accuracy after the label-free correction of every set,
:meth:`fastrobust.evaluate.predictions.TaskPredictions.calibrated`; its offsets are fitted once on
each whole set and kept fixed across bootstrap draws, as a deployment fit would be) or ``auc``
(ROC-AUC; each draw recomputes the AUC of the resampled examples,
:func:`fastrobust.evaluate.threshold_free.bootstrap_auc`). :func:`compare_metrics` gives the
accuracy comparison with the others attached as ``views``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastrobust.errors import DataError
from fastrobust.evaluate.bootstrap import (
    Interval,
    bootstrap_accuracies,
    cell_boot,
    interval_scope,
    make_interval,
    resample_counts,
)
from fastrobust.evaluate.cells import Cell, SetKey, define_cells, report_accuracies, set_predictions
from fastrobust.evaluate.metrics import EvalReport
from fastrobust.evaluate.predictions import TaskPredictions
from fastrobust.evaluate.threshold_free import bootstrap_auc

METRICS = ("accuracy", "calibrated", "auc")
METRIC_TITLES = {"accuracy": "accuracy", "calibrated": "calibrated accuracy", "auc": "ROC-AUC"}


@dataclass
class RunResult:
    """One finished run: a method label, the seed it trained with, its report and predictions."""

    label: str
    seed: int
    report: EvalReport
    predictions: TaskPredictions | None = None
    kind: str | None = None  # the method kind ("baseline", "pgd", ...) when known
    path: Path | None = None  # the folder it was read from, for messages
    fingerprint: dict[str, str] | None = None  # hashes of the config sections it was trained with


@dataclass
class CellStat:
    """A cell over the seeds of one method: per-seed values, mean and sample sd (None for 1 seed)."""

    values: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def sd(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "sd": self.sd, "values": list(self.values)}


@dataclass
class MethodStats:
    label: str
    seeds: list[int]
    kind: str | None
    stats: dict[str, CellStat]
    diffs: dict[str, Interval | None] = field(default_factory=dict)
    has_predictions: bool = False
    note: str | None = None  # why there are no intervals, when there are none


@dataclass
class Comparison:
    """Every method's cells over its seeds and its differences to the baseline."""

    task: str
    languages: list[str]
    train_language: str | None
    baseline: str
    cells: list[Cell]
    methods: dict[str, MethodStats]
    confidence: float
    n_boot: int
    runs: dict[str, list[RunResult]]
    metric: str = "accuracy"
    views: dict[str, Comparison] = field(default_factory=dict)  # other metrics of the same runs

    @property
    def reports(self) -> dict[str, EvalReport]:
        """The first seed's report of every method (for per-set tables and heatmaps)."""
        return {label: runs[0].report for label, runs in self.runs.items()}

    def cell(self, key: str) -> Cell:
        return next(c for c in self.cells if c.key == key)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "task": self.task,
            "metric": self.metric,
            "languages": list(self.languages),
            "train_language": self.train_language,
            "baseline": self.baseline,
            "confidence": self.confidence,
            "n_boot": self.n_boot,
            "procedure": (
                "mean and sample sd over seeds; difference = method - baseline of the seed means, "
                "percentile interval of a paired bootstrap resampling test examples (same draw for "
                "both methods) and seeds; see docs/statistics.md"
            ),
            "cells": [{"key": c.key, "title": c.title, "group": c.group} for c in self.cells],
            "methods": {label: self._method_dict(label, m) for label, m in self.methods.items()},
        }
        if self.views:
            out["views"] = {name: v.to_dict() for name, v in self.views.items()}
        return out

    def _method_dict(self, label: str, m: MethodStats) -> dict[str, Any]:
        return {
            "kind": m.kind,
            "seeds": list(m.seeds),
            "has_predictions": m.has_predictions,
            "note": m.note,
            "cells": {
                key: {
                    **stat.to_dict(),
                    "difference": (m.diffs[key].to_dict() if m.diffs.get(key) is not None else None),
                }
                for key, stat in m.stats.items()
            },
            **(
                {"reports": {str(r.seed): r.report.to_dict() for r in self.runs[label]}}
                if self.metric == "accuracy"
                else {}
            ),
        }


def group_runs(runs: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """{label: runs sorted by seed}, refusing two runs of one label with the same seed."""
    out: dict[str, list[RunResult]] = {}
    for r in runs:
        out.setdefault(r.label, []).append(r)
    for label, rs in out.items():
        rs.sort(key=lambda r: r.seed)
        seeds = [r.seed for r in rs]
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            where = ", ".join(str(r.path) for r in rs if r.seed in dup and r.path is not None)
            raise DataError(
                f"compare: method {label!r} has two runs with seed {dup[0]}"
                + (f" ({where})" if where else "")
            )
    return out


def _check_same_examples(runs: dict[str, list[RunResult]]) -> None:
    """Every run with predictions must have the same labels on every common set (same examples)."""
    ref: dict[SetKey, tuple[np.ndarray, RunResult]] = {}
    for rs in runs.values():
        for r in rs:
            if r.predictions is None:
                continue
            for key, p in r.predictions.sets():
                if key not in ref:
                    ref[key] = (p.labels, r)
                    continue
                labels, first = ref[key]
                if labels.shape != p.labels.shape or not np.array_equal(labels, p.labels):
                    name = key[1] if key[0] == "xlt" else "-".join(key[1])
                    raise DataError(
                        f"compare: {first.label} (seed {first.seed}) and {r.label} (seed {r.seed}) were "
                        f"tested on different examples for {key[0]} set {name} "
                        f"({len(labels)} vs {len(p.labels)} examples, or other labels); "
                        "a paired comparison needs the same test sets"
                    )


def _pick_baseline(runs: Mapping[str, list[RunResult]], baseline: str | None) -> str:
    if baseline is not None:
        if baseline not in runs:
            raise DataError(f"compare: baseline {baseline!r} is not among the methods {list(runs)}")
        return baseline
    if "baseline" in runs:
        return "baseline"
    return next((label for label, rs in runs.items() if rs[0].kind == "baseline"), next(iter(runs)))


def metric_report(run: RunResult, metric: str) -> EvalReport | None:
    """The per-set values of ``metric`` of one run, as an EvalReport: the run's report itself for
    accuracy; else the report's ``metrics`` entry, computed from the predictions when the report
    predates it; None when neither is there."""
    if metric == "accuracy":
        return run.report
    if metric in run.report.metrics:
        return run.report.metrics[metric]
    if run.predictions is None:
        return None
    return run.predictions.report().metrics.get(metric)


def _method_stats(label: str, rs: Sequence[RunResult], cells: Sequence[Cell], metric: str) -> MethodStats:
    """The cells of one method over its seeds (cells some seed cannot compute are left out)."""
    stats = {}
    reports = [metric_report(r, metric) for r in rs]
    for c in cells:
        vals = [None if rep is None else c.value(report_accuracies(rep)) for rep in reports]
        if all(v is not None for v in vals):
            stats[c.key] = CellStat([float(v) for v in vals])
    return MethodStats(
        label=label,
        seeds=[r.seed for r in rs],
        kind=rs[0].kind,
        stats=stats,
        has_predictions=all(r.predictions is not None for r in rs),
    )


def _set_sizes(rs: Sequence[RunResult], cells: Sequence[Cell]) -> list[int]:
    """The sizes of the sets the cells use (one example draw is made per size)."""
    keys = {k for c in cells for k, _ in c.weights}
    sizes = {len(p) for r in rs for k in keys if (p := set_predictions(r.predictions, k)) is not None}
    return sorted(sizes)


def _set_boot(
    rs: Sequence[RunResult], cells: Sequence[Cell], counts: Mapping[int, np.ndarray], metric: str
) -> dict[SetKey, np.ndarray]:
    """{set: (S, B) value of ``metric`` in every example draw, per seed of one method} for the
    sets the cells use and every seed has."""
    keys = {k for c in cells for k, _ in c.weights}
    preds = [r.predictions for r in rs]
    if metric == "calibrated":
        preds = [p.calibrated()[0] for p in preds]  # type: ignore[union-attr]
    out: dict[SetKey, np.ndarray] = {}
    for key in keys:
        per_seed = [set_predictions(p, key) for p in preds]  # type: ignore[arg-type]
        if any(p is None for p in per_seed):
            continue
        w = counts[len(per_seed[0])]
        if metric == "auc":
            if any(len(np.unique(p.labels)) < 2 for p in per_seed):  # type: ignore[union-attr]
                continue
            out[key] = np.stack([bootstrap_auc(p.probs, p.labels, w) for p in per_seed])  # type: ignore[union-attr]
        else:
            out[key] = bootstrap_accuracies(np.stack([p.correct for p in per_seed]), w)  # type: ignore[union-attr]
    return out


def _add_intervals(
    grouped: Mapping[str, list[RunResult]],
    methods: Mapping[str, MethodStats],
    base_label: str,
    cells: Sequence[Cell],
    *,
    n_boot: int,
    confidence: float,
    seed: int,
    metric: str = "accuracy",
) -> None:
    """Fill every method's ``diffs`` (or ``note``) with its paired bootstrap intervals vs the baseline.

    One example draw serves every method (paired); the seed draw is the baseline's for a method
    that ran the same seeds, its own otherwise.
    """
    rng = np.random.default_rng(seed)
    base = methods[base_label]
    sizes = _set_sizes(grouped[base_label], cells)
    counts = {n: resample_counts(n, n_boot, rng) for n in sizes}  # one draw for every method (paired)
    u_base = resample_counts(len(base.seeds), n_boot, rng)
    base_boot = _set_boot(grouped[base_label], cells, counts, metric)
    for label, m in methods.items():
        if label == base_label:
            continue
        if not m.has_predictions:
            m.note = "no per-example predictions: no intervals"
            continue
        boot = _set_boot(grouped[label], cells, counts, metric)
        paired = m.seeds == base.seeds
        u_m = u_base if paired else resample_counts(len(m.seeds), n_boot, rng)
        scope = interval_scope(len(m.seeds), len(base.seeds))
        for c in cells:
            keys = [k for k, _ in c.weights]
            missing = any(k not in boot or k not in base_boot for k in keys)
            if c.key not in m.stats or c.key not in base.stats or missing:
                m.diffs[c.key] = None
                continue
            weights = dict(c.weights)
            delta = cell_boot(weights, boot, u_m) - cell_boot(weights, base_boot, u_base)
            # The point estimate is the difference of seed means of the reported accuracies.
            est = m.stats[c.key].mean - base.stats[c.key].mean
            m.diffs[c.key] = make_interval(est, delta, confidence, scope, paired)


def compare(
    runs: Iterable[RunResult] | Mapping[str, Sequence[RunResult]],
    *,
    baseline: str | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    metric: str = "accuracy",
) -> Comparison:
    """Mean ± sd over seeds of every cell of every method, and bootstrap intervals vs the baseline.

    Args:
        runs: RunResults (any order), or ``{label: [RunResult, ...]}``.
        baseline: label of the reference method; default ``"baseline"``, else the first method of
            kind baseline, else the first method.
        n_boot: bootstrap draws; confidence: interval level; seed: the bootstrap's random seed
            (the same runs always give the same intervals).

    Intervals need per-example predictions of both the method and the baseline for every seed;
    otherwise ``diffs`` is None for that method and ``note`` says why.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    items = [r for rs in runs.values() for r in rs] if isinstance(runs, Mapping) else list(runs)
    if not items:
        raise DataError("compare: no runs given")
    grouped = group_runs(items)
    base_label = _pick_baseline(grouped, baseline)
    _check_same_examples(grouped)
    ref = grouped[base_label][0].report
    cells = define_cells(ref)
    tasks = {r.report.task for r in items}
    if len(tasks) > 1:
        raise DataError(f"compare: the runs are of different tasks {sorted(tasks)}")
    methods = {label: _method_stats(label, rs, cells, metric) for label, rs in grouped.items()}
    if methods[base_label].has_predictions:
        kw = dict(n_boot=n_boot, confidence=confidence, seed=seed, metric=metric)
        _add_intervals(grouped, methods, base_label, cells, **kw)
    else:
        for m in methods.values():
            if m.label != base_label:
                m.note = f"no per-example predictions for {base_label}: no intervals"
    return Comparison(
        ref.task,
        list(ref.languages),
        ref.train_language,
        base_label,
        cells,
        methods,
        confidence,
        n_boot,
        grouped,
        metric,
    )


def compare_metrics(
    runs: Iterable[RunResult] | Mapping[str, Sequence[RunResult]],
    *,
    metrics: Sequence[str] = ("calibrated", "auc"),
    **kwargs: Any,
) -> Comparison:
    """The accuracy comparison of :func:`compare`, with the comparisons of ``metrics`` of the same
    runs (same baseline, draws and seed) as its ``views``; a metric no run can compute (no
    predictions, or no training-language set to calibrate against) is left out."""
    items = [r for rs in runs.values() for r in rs] if isinstance(runs, Mapping) else list(runs)
    main = compare(items, **kwargs)
    if not any(r.predictions is not None for r in items):
        return main
    for metric in metrics:
        try:
            view = compare(items, metric=metric, **kwargs)
        except DataError:  # e.g. calibration without the training language's set
            continue
        if any(m.stats for m in view.methods.values()):
            main.views[metric] = view
    return main


def as_comparison(reports: Comparison | Mapping[str, EvalReport]) -> Comparison:
    """``reports`` as a :class:`Comparison`: itself, or one run (seed 0) per ``{label: EvalReport}``."""
    if isinstance(reports, Comparison):
        return reports
    if not reports:
        raise ValueError("write_comparison: no reports given")
    return compare([RunResult(label=k, seed=0, report=r) for k, r in reports.items()])
