"""Label-free calibration: per-class logit offsets that give a target set the reference class rates.

On a language (or language pair) the encoder did not see in training, every score of a fine-tuned
classifier can drift the same way, so that a fixed decision rule predicts one class far more often
than on English although the examples are ranked about as well. The correction reads no target
label: it moves the decision rule until the share of each predicted class on the *unlabeled*
target inputs equals a reference share.

Given logits ``z`` (N, C) of a target set and reference rates ``r`` (C,) (default: the model's own
predicted-class rates on the source-language evaluation set; option: the training labels' prior),
find offsets ``b`` (C,) such that the rates of ``argmax_c (z_ic + b_c)`` are ``r``:

- C = 2: ``b = (0, -t)`` with ``t`` the threshold on ``d = z_1 - z_0`` between the
  ``n - k``-th and the next sorted value, ``k = round(r_1 N)`` the number of predicted positives
  (exact up to ties);
- C > 2: ``b`` minimises the convex function ``f_tau(b) = mean_i tau logsumexp((z_i + b) / tau) -
  r . b`` whose gradient is (mean softmax((z + b)/tau)) - r, for a decreasing temperature tau
  (warm started, L-BFGS); as tau -> 0 the softmax becomes the argmax, so the predicted rates
  converge to ``r`` (``fit.max_rate_error`` says how close). ``sum_c b_c = 0`` (offsets are
  defined up to a constant).

Assumption: the target set's class mix is the reference's. When it is not (say 70% positives
where English has 50%), the correction forces the reference mix onto it and moves accuracy by
up to the difference of the mixes; the tests show this case.

Offsets apply to logits; probabilities give the same decisions through ``log p`` (they differ
from the logits by a per-row constant, which the argmax ignores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from fastrobust.errors import DataError

TEMPERATURES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)


@dataclass(frozen=True)
class OffsetFit:
    """Offsets (C,) and how well the predicted rates of the shifted logits match the reference."""

    offsets: np.ndarray
    reference_rates: np.ndarray
    predicted_rates: np.ndarray  # argmax rates of z + offsets on the fitted set
    n: int

    @property
    def max_rate_error(self) -> float:
        return float(np.abs(self.predicted_rates - self.reference_rates).max())


def log_probs(probs: np.ndarray) -> np.ndarray:
    """``log p`` (N, C) as logits (a per-row constant away from the model's own), clipped at 1e-30
    so that an underflowed probability stays finite."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None))


def check_rates(rates: Sequence[float], num_classes: int, what: str = "reference rates") -> np.ndarray:
    r = np.asarray(rates, dtype=np.float64).reshape(-1)
    if r.shape[0] != num_classes:
        raise DataError(f"calibration: {what} has {r.shape[0]} classes, the logits {num_classes}")
    if not np.all(np.isfinite(r)) or np.any(r < 0) or abs(r.sum() - 1.0) > 1e-6:
        raise DataError(
            f"calibration: {what} must be C non-negative fractions summing to 1, got {r.tolist()}"
        )
    return r


def class_rates(ids: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) fraction of the class ids ``ids`` (labels or decisions) that are each class."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return np.bincount(ids, minlength=num_classes)[:num_classes] / max(1, ids.size)


def predicted_rates(logits: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """(C,) fraction of examples whose argmax of ``logits + offsets`` is each class."""
    z = np.asarray(logits, dtype=np.float64)
    if offsets is not None:
        z = z + np.asarray(offsets, dtype=np.float64)
    return class_rates(z.argmax(axis=1), z.shape[1])


def _binary_offsets(z: np.ndarray, r: np.ndarray) -> np.ndarray:
    d = np.sort(z[:, 1] - z[:, 0])
    n = d.size
    k = int(round(r[1] * n))  # predicted positives wanted
    if k <= 0:
        t = d[-1] + 1.0
    elif k >= n:
        t = d[0] - 1.0
    else:  # positive iff d > t: the k largest; t halfway between the two neighbours
        t = 0.5 * (d[n - k - 1] + d[n - k])
    return np.array([t / 2.0, -t / 2.0])  # sum 0; class 1 wins iff d - t > 0


def _multiclass_offsets(z: np.ndarray, r: np.ndarray) -> np.ndarray:
    scale = float(np.std(z)) or 1.0
    b = np.zeros(z.shape[1])
    keep = r > 0
    for tau in TEMPERATURES:
        t = tau * scale

        def f(v: np.ndarray, t: float = t) -> tuple[float, np.ndarray]:
            x = (z + v) / t
            value = t * float(np.mean(logsumexp(x, axis=1))) - float(r @ v)
            return value, softmax(x, axis=1).mean(axis=0) - r

        b = minimize(f, b, jac=True, method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-10}).x
    b -= b[keep].mean()
    # a class of reference rate 0 is never predicted: far below every other class's offset
    b[~keep] = b[keep].min() - 1e3 * (float(np.ptp(z)) + scale)
    return b


def fit_offsets(logits: np.ndarray, reference_rates: Sequence[float]) -> OffsetFit:
    """Offsets (C,) for which the argmax rates of ``logits + offsets`` match ``reference_rates``
    (module doc). Reads no labels. ``logits``: (N, C), N >= 1, C >= 2."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise DataError(f"calibration: logits must be (N, C) with C >= 2, got shape {z.shape}")
    if z.shape[0] == 0:
        raise DataError("calibration: the target set is empty; offsets need unlabeled inputs")
    if not np.all(np.isfinite(z)):
        raise DataError("calibration: the logits hold non-finite values")
    r = check_rates(reference_rates, z.shape[1])
    b = _binary_offsets(z, r) if z.shape[1] == 2 else _multiclass_offsets(z, r)
    return OffsetFit(b, r, predicted_rates(z, b), int(z.shape[0]))


def apply_offsets(logits: np.ndarray, offsets: Sequence[float]) -> np.ndarray:
    """``logits + offsets`` (N, C); the class decisions are its argmax."""
    z = np.asarray(logits, dtype=np.float64)
    b = np.asarray(offsets, dtype=np.float64).reshape(-1)
    if z.ndim != 2 or b.shape[0] != z.shape[1]:
        raise DataError(f"calibration: {b.shape[0]} offsets for logits of shape {z.shape}")
    return z + b


def calibrated_predictions(
    probs: np.ndarray, reference_rates: Sequence[float]
) -> tuple[np.ndarray, OffsetFit]:
    """(N,) class decisions of ``probs`` (N, C) after the label-free correction, and its fit."""
    z = log_probs(probs)
    fit = fit_offsets(z, reference_rates)
    return apply_offsets(z, fit.offsets).argmax(axis=1), fit


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, reference_rates: Sequence[float] | None = None
) -> dict[str, float | list[float] | None]:
    """Every number of one evaluation set, for users' own evaluation code: ``accuracy``,
    ``roc_auc`` (None with one class), ``ece``, ``predicted_rates`` (C,), and with
    ``reference_rates`` the ``calibrated_accuracy`` after the label-free correction, its
    ``offsets`` and ``calibrated_rates``. ``logits`` (N, C), ``labels`` (N,)."""
    from fastrobust.evaluate.threshold_free import expected_calibration_error, roc_auc

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or y.size == 0:
        raise DataError(f"classification_metrics: logits of shape {z.shape} for {y.shape[0]} labels")
    probs = softmax(z, axis=1)
    out: dict[str, float | list[float] | None] = {
        "accuracy": float((z.argmax(axis=1) == y).mean()),
        "roc_auc": roc_auc(probs, y) if len(np.unique(y)) > 1 else None,
        "ece": expected_calibration_error(probs, y),
        "predicted_rates": predicted_rates(z).tolist(),
    }
    if reference_rates is not None:
        fit = fit_offsets(z, reference_rates)
        out["calibrated_accuracy"] = float((apply_offsets(z, fit.offsets).argmax(axis=1) == y).mean())
        out["offsets"] = fit.offsets.tolist()
        out["calibrated_rates"] = fit.predicted_rates.tolist()
    return out
