"""Threshold-free quality of a classifier's scores: ROC-AUC and the expected calibration error.

Accuracy at a fixed decision rule (argmax, i.e. threshold 0.5 for two classes) mixes two things
on shifted data: how well the scores *rank* the examples (what the model knows) and *where* the
scores sit (a shift of every score moves the share of predicted positives). ROC-AUC reads only the
ranking, so a model whose scores all drift in another language keeps its AUC.

Definitions (N examples, C classes, probabilities ``probs`` (N, C), labels ``y`` (N,)):

- two classes: ``AUC = P(s_i > s_j) + 0.5 P(s_i = s_j)`` for a random positive i and negative j,
  with ``s = probs[:, 1]``; equal to ``U / (n_pos n_neg)`` with U the Mann-Whitney statistic of the
  positives (:func:`scipy.stats.mannwhitneyu`, ties counted half);
- C > 2: the mean over the classes present in ``y`` of the one-vs-rest AUC of ``probs[:, c]``
  (at least two classes must be present);
- ECE (expected calibration error, top-label, ``n_bins`` equal-width bins of the confidence
  ``max_c probs``): ``sum_b (|B_b| / N) |acc(B_b) - conf(B_b)|``.

:func:`bootstrap_auc` gives the AUC of every bootstrap draw of examples (weights = how often each
example was drawn) without a Python loop over draws: one sort per set, then cumulative sums.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import mannwhitneyu

from fastrobust.errors import DataError


def _check(scores: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise DataError(f"{what}: {s.shape[0]} scores for {y.shape[0]} labels")
    if s.size == 0:
        raise DataError(f"{what}: no examples")
    return s, y


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of ``scores`` (N,) for the boolean ``positive`` (N,); ties count half.

    Raises DataError when the set holds only one class (the AUC is undefined there).
    """
    s, pos = _check(scores, positive, "roc_auc")
    pos = pos.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"roc_auc: the set holds only one class ({n_pos} positive, {n_neg} negative examples); "
            "the AUC needs both"
        )
    u = mannwhitneyu(s[pos], s[~pos], alternative="two-sided", method="asymptotic").statistic
    return float(u) / (n_pos * n_neg)


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC of class probabilities (N, C): two classes -> AUC of ``probs[:, 1]``; C > 2 -> the
    mean one-vs-rest AUC over the classes present in ``labels`` (module doc)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise DataError(f"roc_auc: probs of shape {p.shape} do not match {y.shape[0]} labels")
    if p.shape[1] == 2:
        return binary_auc(p[:, 1], y == 1)
    present = [c for c in range(p.shape[1]) if np.any(y == c)]
    if len(present) < 2:
        raise DataError(f"roc_auc: the set holds only one class ({present}); the AUC needs two")
    return float(np.mean([binary_auc(p[:, c], y == c) for c in present]))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE over ``n_bins`` equal-width confidence bins (module doc), in [0, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or y.size == 0:
        raise DataError(f"expected_calibration_error: probs of shape {p.shape} for {y.shape[0]} labels")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 joins bin 0
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    size = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, conf, n_bins))
    return float(gap.sum() / y.size) if size.sum() else float("nan")


def _bootstrap_binary_auc(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B,) AUC of ``scores`` (N,) under each row of example weights ``counts`` (B, N).

    Sorted by score, a positive at tie group g beats the negative weight below g and ties with the
    negative weight inside g: ``AUC_b = sum_i pos_i w_bi (Wneg_b(< g_i) + Wneg_b(g_i) / 2) /
    (Wpos_b Wneg_b)``; a draw without both classes gives NaN. Weights are integer counts, so
    float32 sums are exact up to 2^24.
    """
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], positive[order]
    new = np.r_[True, s[1:] != s[:-1]]  # tie groups of the sorted scores
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], s.size]
    p_idx, n_idx = order[pos], order[~pos]
    # cumulative negative weight along the sorted order, with a leading 0 column
    neg_sorted = np.where(pos, 0.0, 1.0).astype(np.float32)
    neg_cum = np.zeros((counts.shape[0], s.size + 1), dtype=np.float32)
    np.cumsum(counts[:, order] * neg_sorted, axis=1, out=neg_cum[:, 1:])
    g = group[pos]
    below = neg_cum[:, starts[g]]
    tied = neg_cum[:, ends[g]] - below
    w_pos = counts[:, p_idx]
    wins = ((below + 0.5 * tied) * w_pos).sum(axis=1, dtype=np.float64)
    total_pos = w_pos.sum(axis=1, dtype=np.float64)
    total_neg = counts[:, n_idx].sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((total_pos > 0) & (total_neg > 0), wins / (total_pos * total_neg), np.nan)


def bootstrap_auc(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B,) ROC-AUC (as :func:`roc_auc`) of one set under each row of example weights ``counts``
    (B, N): row b holds how often each of the N examples occurs in bootstrap draw b."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    w = np.asarray(counts, dtype=np.float32)
    if p.shape[1] == 2:
        return _bootstrap_binary_auc(p[:, 1], y == 1, w)
    present = [c for c in range(p.shape[1]) if np.any(y == c)]
    per_class = np.stack([_bootstrap_binary_auc(p[:, c], y == c, w) for c in present])
    with warnings.catch_warnings():  # a draw where no class has both sides is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_class, axis=0)
