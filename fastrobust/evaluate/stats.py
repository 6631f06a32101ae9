"""Statistics of a comparison: mean ± sd over seeds, and paired bootstrap intervals against the baseline.

Inputs are finished runs (:class:`RunResult`): one per (method label, seed), each with its
EvalReport and, when available, its per-example predictions (:class:`TaskPredictions`).
:func:`compare` turns them into a :class:`Comparison`. This module is the public face of three
parts, one responsibility each:

- :mod:`fastrobust.evaluate.cells`: the cells, the numbers a comparison shows (linear combinations
  of per-set accuracies: per-language XLT, averages, G-XLT same/cross/gap);
- :mod:`fastrobust.evaluate.bootstrap`: the paired bootstrap over test examples and seeds, its
  intervals (:class:`Interval`, with a two-sided p-value) and the procedure in full;
- :mod:`fastrobust.evaluate.comparison`: runs grouped by method, mean ± sd over seeds, and the
  intervals of every method against the baseline.

docs/statistics.md describes the procedure for users.
"""

from __future__ import annotations

from fastrobust.evaluate.bootstrap import (
    SCOPE_BOTH,
    SCOPE_EXAMPLES,
    Interval,
    bootstrap_accuracies,
    paired_bootstrap,
    percentile_interval,
    resample_counts,
)
from fastrobust.evaluate.cells import Cell, SetKey, define_cells
from fastrobust.evaluate.comparison import (
    CellStat,
    Comparison,
    MethodStats,
    RunResult,
    as_comparison,
    compare,
    compare_metrics,
    group_runs,
)

__all__ = [
    "SCOPE_BOTH",
    "SCOPE_EXAMPLES",
    "Cell",
    "CellStat",
    "Comparison",
    "Interval",
    "MethodStats",
    "RunResult",
    "SetKey",
    "as_comparison",
    "bootstrap_accuracies",
    "compare",
    "compare_metrics",
    "define_cells",
    "group_runs",
    "paired_bootstrap",
    "percentile_interval",
    "resample_counts",
]
