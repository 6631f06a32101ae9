"""Statistics of a comparison: mean ± sd over seeds, and paired bootstrap intervals against the baseline.

Inputs are finished runs (:class:`RunResult`): one per (method label, seed), each with its
EvalReport and, when available, its per-example predictions (:class:`TaskPredictions`).

**Cells.** Every number a comparison shows is a *cell*: a fixed linear combination of per-set
accuracies, ``cell = sum_k w_k acc_k`` over test sets k (XLT languages, G-XLT pairs). The cells are
the accuracy of each XLT language, the XLT average (all languages), the zero-shot average (all but
the training language), and the G-XLT average, same-language average (the diagonal pairs),
cross-language average (off-diagonal pairs) and gap (same - cross).

**Over seeds.** For a method with seeds s = 1..S: ``mean = (1/S) sum_s cell_s`` and ``sd`` the
sample standard deviation (ddof = 1; undefined for one seed).

**Difference to the baseline with a paired bootstrap interval.** ``delta = mean_M - mean_B``.
Let ``c_{m,s,k}[i]`` be 1 when run (method m, seed s) classifies example i of set k correctly.
One bootstrap draw b:

1. draws example counts ``v_g ~ Multinomial(N_g, uniform)`` once per group g of sets of the
   same size N_g -- XLT and G-XLT test sets are parallel (example i is the same item in every
   language), so one draw per size keeps the correlation between languages that the averages
   have; for unrelated sets of equal size sharing the draw is harmless -- and applies it to both
   methods: the *same* resampled examples for the method and the baseline (paired);
2. draws seed counts ``u ~ Multinomial(S, uniform)``: the same draw for both methods when they ran
   the same seeds (paired: seed s of the method shares the baseline's initial head and data order),
   independent draws for each otherwise;
3. ``acc*_{m,s,k} = (1/N_k) sum_i v[i] c_{m,s,k}[i]``, ``cell*_{m,s} = sum_k w_k acc*_{m,s,k}``,
   ``delta* = (1/S_M) sum_s u_M[s] cell*_{M,s} - (1/S_B) sum_s u_B[s] cell*_{B,s}``.

The interval is the percentile interval ``[q_{a/2}, q_{1-a/2}]`` of delta* over ``n_boot`` draws
(a = 1 - confidence). Because every seed is evaluated on the same examples, the design is crossed
(seeds x examples); resampling both factors independently is Owen's (2007) "pigeonhole" bootstrap,
which is slightly conservative (it counts the seed-by-example interaction in both factors). With a
single seed (either method) step 2 is void and the interval covers example resampling only: it says
nothing about how much a new seed would move the result, and reports say so. All arithmetic is
vectorised: the counts of a group form a (B, N) matrix and ``acc*`` of S seeds is one (S, N) x (N, B)
product.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastrobust.errors import DataError
from fastrobust.evaluate.metrics import EvalReport
from fastrobust.evaluate.multiplicity import bootstrap_p_value
from fastrobust.evaluate.predictions import TaskPredictions

SetKey = tuple[str, Any]  # ("xlt", lang) or ("gxlt", (lang1, lang2))
SCOPE_BOTH = "test examples and seeds"
SCOPE_EXAMPLES = "test examples only (1 seed)"


# ---- runs and cells ----------------------------------------------------------------------------
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
        # A diagonal pair (a, a) is the XLT set of a (same examples, same predictions).
        def key(pair: tuple[str, str]) -> SetKey:
            return ("xlt", pair[0]) if pair[0] == pair[1] and pair[0] in report.xlt else ("gxlt", pair)

        pairs = list(report.gxlt)
        same = [key(p) for p in pairs if p[0] == p[1]]
        cross = [key(p) for p in pairs if p[0] != p[1]]
        cells.append(Cell("gxlt_avg", "avg", "gxlt", tuple(_even([key(p) for p in pairs]))))
        if same:
            cells.append(Cell("gxlt_same", "same-language", "gxlt", tuple(_even(same))))
        if cross:
            cells.append(Cell("gxlt_cross", "cross-language", "gxlt", tuple(_even(cross))))
        if same and cross:
            cells.append(
                Cell("gxlt_gap", "gap (same - cross)", "gxlt", tuple(_even(same) + _even(cross, -1.0)))
            )
    return cells


def _report_accuracies(report: EvalReport) -> dict[SetKey, float]:
    acc: dict[SetKey, float] = {("xlt", k): v for k, v in report.xlt.items()}
    acc.update({("gxlt", k): v for k, v in report.gxlt.items()})
    return acc


def _correct(pred: TaskPredictions, key: SetKey):
    kind, k = key
    table = pred.xlt if kind == "xlt" else pred.gxlt
    return table.get(k)


# ---- the bootstrap ------------------------------------------------------------------------------
def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) float32 counts: row b = how often each of n items appears in a draw of n with
    replacement (each row sums to n). Built with one bincount, no Python loop over draws."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float32)


def bootstrap_accuracies(correct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(S, N) 0/1 correctness and (B, N) example counts -> (S, B) resampled accuracies."""
    c = np.asarray(correct, dtype=np.float32)
    return (c @ counts.T) / c.shape[1]


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of a (B,) sample."""
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return float(lo), float(hi)


def paired_bootstrap(
    method: Mapping[SetKey, np.ndarray],
    baseline: Mapping[SetKey, np.ndarray],
    weights: Mapping[SetKey, float] | Sequence[tuple[SetKey, float]],
    *,
    paired_seeds: bool,
    n_boot: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | int | None = 0,
) -> Interval:
    """Interval of (cell of method) - (cell of baseline) for one cell (module doc, steps 1-3).

    ``method[k]`` / ``baseline[k]``: 0/1 correctness of shape (S_M, N_k) / (S_B, N_k) on set k
    (same examples, same order). ``paired_seeds`` requires S_M == S_B (seed s of one is seed s of
    the other). A convenience over :func:`compare` for one cell and raw arrays.
    """
    weights = dict(weights)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sizes = {int(np.shape(method[k])[1]) for k in weights}
    counts = {n: resample_counts(n, n_boot, rng) for n in sorted(sizes)}
    s_m, s_b = np.shape(method[next(iter(weights))])[0], np.shape(baseline[next(iter(weights))])[0]
    if paired_seeds and s_m != s_b:
        raise ValueError(f"paired_seeds needs as many seeds for both: {s_m} vs {s_b}")
    u_m = resample_counts(s_m, n_boot, rng)
    u_b = u_m if paired_seeds else resample_counts(s_b, n_boot, rng)
    est, boot = _cell_difference(
        {k: np.asarray(method[k]) for k in weights},
        {k: np.asarray(baseline[k]) for k in weights},
        weights,
        counts,
        u_m,
        u_b,
    )
    lo, hi = percentile_interval(boot, confidence)
    scope = SCOPE_BOTH if min(s_m, s_b) > 1 else SCOPE_EXAMPLES
    return Interval(est, lo, hi, confidence, scope, paired_seeds, bootstrap_p_value(boot))


def _boot_accuracies(
    corr: Mapping[SetKey, np.ndarray], counts: Mapping[int, np.ndarray]
) -> dict[SetKey, np.ndarray]:
    """{set: (S, B) resampled accuracies} for every set of ``corr`` ((S, N) correctness each)."""
    return {k: bootstrap_accuracies(c, counts[c.shape[1]]) for k, c in corr.items()}


def _cell_boot(
    weights: Mapping[SetKey, float], boot: Mapping[SetKey, np.ndarray], u: np.ndarray
) -> np.ndarray:
    """(B,) resampled seed-mean of one cell: (1/S) sum_s u[b, s] sum_k w_k boot[k][s, b]."""
    cell = sum(w * boot[k] for k, w in weights.items())  # (S, B)
    return (u * cell.T).sum(axis=1) / cell.shape[0]


def _cell_difference(
    m: Mapping[SetKey, np.ndarray],
    b: Mapping[SetKey, np.ndarray],
    weights: Mapping[SetKey, float],
    counts: Mapping[int, np.ndarray],
    u_m: np.ndarray,
    u_b: np.ndarray,
) -> tuple[float, np.ndarray]:
    """(observed difference, (B,) bootstrap differences) of one cell; see the module doc."""
    obs = sum(w * (float(np.mean(m[k])) - float(np.mean(b[k]))) for k, w in weights.items())
    boot = _cell_boot(weights, _boot_accuracies(m, counts), u_m) - _cell_boot(
        weights, _boot_accuracies(b, counts), u_b
    )
    return float(obs), boot


# ---- results ----------------------------------------------------------------------------------
@dataclass
class Interval:
    """A difference (method - baseline, in accuracy fractions) and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    scope: str  # SCOPE_BOTH or SCOPE_EXAMPLES
    paired_seeds: bool
    # Two-sided bootstrap p-value of "no difference" (fastrobust.evaluate.multiplicity); it is
    # below 1 - confidence exactly when the interval excludes 0.
    p_value: float | None = None

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "excludes_zero": self.excludes_zero,
            "scope": self.scope,
            "paired_seeds": self.paired_seeds,
            "p_value": self.p_value,
        }


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

    @property
    def reports(self) -> dict[str, EvalReport]:
        """The first seed's report of every method (for per-set tables and heatmaps)."""
        return {label: runs[0].report for label, runs in self.runs.items()}

    def cell(self, key: str) -> Cell:
        return next(c for c in self.cells if c.key == key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
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
            "methods": {
                label: {
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
                    "reports": {str(r.seed): r.report.to_dict() for r in self.runs[label]},
                }
                for label, m in self.methods.items()
            },
        }


# ---- comparing runs ------------------------------------------------------------------------------
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


def compare(
    runs: Iterable[RunResult] | Mapping[str, Sequence[RunResult]],
    *,
    baseline: str | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
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

    methods: dict[str, MethodStats] = {}
    for label, rs in grouped.items():
        stats = {}
        for c in cells:
            vals = [c.value(_report_accuracies(r.report)) for r in rs]
            if all(v is not None for v in vals):
                stats[c.key] = CellStat([float(v) for v in vals])
        methods[label] = MethodStats(
            label=label,
            seeds=[r.seed for r in rs],
            kind=rs[0].kind,
            stats=stats,
            has_predictions=all(r.predictions is not None for r in rs),
        )

    rng = np.random.default_rng(seed)
    base = methods[base_label]
    if not base.has_predictions:
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
        )
    base_corr = _correctness(grouped[base_label], cells)
    sizes = sorted({arr.shape[1] for arr in base_corr.values()})
    counts = {n: resample_counts(n, n_boot, rng) for n in sizes}  # one draw for every method (paired)
    u_base = resample_counts(len(base.seeds), n_boot, rng)
    base_boot = _boot_accuracies(base_corr, counts)
    for label, m in methods.items():
        if label == base_label:
            continue
        if not m.has_predictions:
            m.note = "no per-example predictions: no intervals"
            continue
        corr = _correctness(grouped[label], cells)
        boot = _boot_accuracies({k: v for k, v in corr.items() if k in base_corr}, counts)
        paired = m.seeds == base.seeds
        u_m = u_base if paired else resample_counts(len(m.seeds), n_boot, rng)
        scope = SCOPE_BOTH if min(len(m.seeds), len(base.seeds)) > 1 else SCOPE_EXAMPLES
        for c in cells:
            keys = [k for k, _ in c.weights]
            if c.key not in m.stats or c.key not in base.stats or any(k not in boot for k in keys):
                m.diffs[c.key] = None
                continue
            weights = dict(c.weights)
            delta = _cell_boot(weights, boot, u_m) - _cell_boot(weights, base_boot, u_base)
            lo, hi = percentile_interval(delta, confidence)
            # The point estimate is the difference of seed means of the reported accuracies.
            est = m.stats[c.key].mean - base.stats[c.key].mean
            m.diffs[c.key] = Interval(est, lo, hi, confidence, scope, paired, bootstrap_p_value(delta))
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
    )


def _correctness(rs: Sequence[RunResult], cells: Sequence[Cell]) -> dict[SetKey, np.ndarray]:
    """{set: (S, N) bool correctness over the seeds of one method} for the sets the cells use."""
    keys = {k for c in cells for k, _ in c.weights}
    out: dict[SetKey, np.ndarray] = {}
    for key in keys:
        per_seed = [_correct(r.predictions, key) for r in rs]  # type: ignore[arg-type]
        if all(p is not None for p in per_seed):
            out[key] = np.stack([p.correct for p in per_seed])  # type: ignore[union-attr]
    return out
