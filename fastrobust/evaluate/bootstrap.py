"""The paired bootstrap: intervals of a cell's difference (method - baseline) of seed means.

``delta = mean_M - mean_B`` (means over seeds of a cell, :mod:`fastrobust.evaluate.cells`).
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastrobust.evaluate.cells import SetKey
from fastrobust.evaluate.multiplicity import bootstrap_p_value

SCOPE_BOTH = "test examples and seeds"
SCOPE_EXAMPLES = "test examples only (1 seed)"


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


def interval_scope(seeds_method: int, seeds_baseline: int) -> str:
    """What an interval covers: seeds too only when both methods ran more than one seed."""
    return SCOPE_BOTH if min(seeds_method, seeds_baseline) > 1 else SCOPE_EXAMPLES


def make_interval(
    estimate: float, boot: np.ndarray, confidence: float, scope: str, paired_seeds: bool
) -> Interval:
    """The :class:`Interval` of ``estimate`` from its (B,) bootstrap differences ``boot``."""
    lo, hi = percentile_interval(boot, confidence)
    return Interval(estimate, lo, hi, confidence, scope, paired_seeds, bootstrap_p_value(boot))


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


def boot_accuracies(
    corr: Mapping[SetKey, np.ndarray], counts: Mapping[int, np.ndarray]
) -> dict[SetKey, np.ndarray]:
    """{set: (S, B) resampled accuracies} for every set of ``corr`` ((S, N) correctness each)."""
    return {k: bootstrap_accuracies(c, counts[c.shape[1]]) for k, c in corr.items()}


def cell_boot(
    weights: Mapping[SetKey, float], boot: Mapping[SetKey, np.ndarray], u: np.ndarray
) -> np.ndarray:
    """(B,) resampled seed-mean of one cell: (1/S) sum_s u[b, s] sum_k w_k boot[k][s, b]."""
    cell = sum(w * boot[k] for k, w in weights.items())  # (S, B)
    return (u * cell.T).sum(axis=1) / cell.shape[0]


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
    the other). A convenience over :func:`fastrobust.evaluate.stats.compare` for one cell and raw
    arrays.
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
    m = {k: np.asarray(method[k]) for k in weights}
    b = {k: np.asarray(baseline[k]) for k in weights}
    est = sum(w * (float(np.mean(m[k])) - float(np.mean(b[k]))) for k, w in weights.items())
    boot = cell_boot(weights, boot_accuracies(m, counts), u_m) - cell_boot(
        weights, boot_accuracies(b, counts), u_b
    )
    return make_interval(float(est), boot, confidence, interval_scope(s_m, s_b), paired_seeds)
