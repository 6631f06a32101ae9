"""Several comparisons at once: bootstrap p-values and Holm's step-down correction.

With m comparisons each tested at level alpha, the chance that at least one of the true "no
difference" cases looks significant grows to about 1 - (1 - alpha)^m. Holm (1979) keeps that
family-wise error rate at alpha with no assumption on how the tests depend on each other:
sort the p-values p_(1) <= ... <= p_(m); reject H_(1), ..., H_(k) where k is the largest index
with p_(i) <= alpha / (m - i + 1) for every i <= k (stop at the first failure).

The p-value of a bootstrap difference is the two-sided percentile one: twice the smaller tail
fraction of the bootstrap distribution on either side of 0, ``p = min(1, 2 min(P*(d <= 0),
P*(d >= 0)))``. It is the smallest a for which the central (1 - a) percentile interval (the one
:func:`fastrobust.evaluate.stats.compare` reports) still touches 0, so "interval excludes 0 at
level 1 - a" and "p < a" are the same statement; its resolution is 1 / n_boot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def bootstrap_p_value(samples: np.ndarray) -> float:
    """Two-sided percentile p-value of H0: difference = 0, from (B,) bootstrap differences."""
    d = np.asarray(samples, dtype=np.float64)
    if d.size == 0:
        raise ValueError("bootstrap_p_value: no samples")
    return float(min(1.0, 2.0 * min(np.mean(d <= 0.0), np.mean(d >= 0.0))))


@dataclass(frozen=True)
class HolmResult:
    """One hypothesis of a Holm family: its p-value, the threshold it met or missed, the verdict."""

    p_value: float
    rank: int  # 1 = smallest p-value
    threshold: float  # alpha / (m - rank + 1)
    rejected: bool

    def to_dict(self) -> dict:
        return {
            "p_value": self.p_value,
            "rank": self.rank,
            "threshold": self.threshold,
            "rejected": self.rejected,
        }


def holm(p_values: Mapping[str, float], alpha: float = 0.05) -> dict[str, HolmResult]:
    """Holm's step-down procedure over ``{name: p}`` at family-wise level ``alpha`` (module doc).

    Ties keep the input order. Once one hypothesis is not rejected, no later (larger p) one is.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    for name, p in p_values.items():
        if not 0.0 <= p <= 1.0 or p != p:
            raise ValueError(f"p-value of {name!r} must be in [0, 1], got {p}")
    m = len(p_values)
    order = sorted(p_values, key=lambda k: p_values[k])  # stable: ties keep input order
    out: dict[str, HolmResult] = {}
    still = True
    for i, name in enumerate(order, start=1):
        threshold = alpha / (m - i + 1)
        still = still and p_values[name] <= threshold
        out[name] = HolmResult(p_values[name], i, threshold, still)
    return {name: out[name] for name in p_values}
