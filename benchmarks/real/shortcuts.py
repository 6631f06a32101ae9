"""Shortcut checks: how far simple surface models fitted on English get in each language.

Three models, each fitted on the English training set only and applied to every test language:

* ``length``: a threshold rule on log(chars(sentence2) / chars(sentence1)) (direction and
  threshold fitted on English);
* ``overlap``: a threshold rule on the Jaccard overlap of the two sentences' word sets
  (lower-cased ``\\w+`` tokens) — the PAWS cue;
* ``bow``: L2-regularised logistic regression on hashed bag-of-words features of sentence1,
  of sentence2 and of the words they share.

A task without a cross-script shortcut has ``length`` and ``bow`` at chance on the languages
written in another script than English (the overlap rule may work inside a language — it is
reported, not required to fail: sharing words with one's own description is part of the task).
Accuracies come with a 95% Wilson interval.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

_WORD = re.compile(r"\w+", re.UNICODE)
_DIM = 1 << 18


def read_pairs(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    s1, s2, y = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line:
            a, b, c = line.split("\t")
            s1.append(a)
            s2.append(b)
            y.append(int(c))
    return s1, s2, np.asarray(y)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


def _words(s: str) -> set[str]:
    return set(_WORD.findall(s.lower()))


def length_feature(s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
    return np.log(np.array([max(len(b), 1) / max(len(a), 1) for a, b in zip(s1, s2)]))


def overlap_feature(s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
    out = []
    for a, b in zip(s1, s2):
        wa, wb = _words(a), _words(b)
        out.append(len(wa & wb) / max(1, len(wa | wb)))
    return np.asarray(out)


@dataclass
class ThresholdRule:
    threshold: float
    sign: int  # +1: predict 1 above the threshold; -1: below

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> ThresholdRule:
        best = (-1.0, 0.0, 1)
        for t in np.unique(np.quantile(x, np.linspace(0, 1, 201))):
            for sign in (1, -1):
                acc = float(np.mean((sign * (x - t) > 0) == (y == 1)))
                if acc > best[0]:
                    best = (acc, float(t), sign)
        return cls(best[1], best[2])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (self.sign * (x - self.threshold) > 0).astype(int)


def bow_features(s1: Sequence[str], s2: Sequence[str]) -> sp.csr_matrix:
    rows, cols = [], []
    for r, (a, b) in enumerate(zip(s1, s2)):
        wa, wb = _words(a), _words(b)
        feats = [f"a:{w}" for w in wa] + [f"b:{w}" for w in wb] + [f"s:{w}" for w in wa & wb]
        for f in feats:
            rows.append(r)
            cols.append(zlib.crc32(f.encode()) % _DIM)
    data = np.ones(len(rows))
    return sp.csr_matrix((data, (rows, cols)), shape=(len(s1), _DIM))


@dataclass
class BowModel:
    w: np.ndarray
    b: float

    @classmethod
    def fit(cls, X: sp.csr_matrix, y: np.ndarray, l2: float = 1.0) -> BowModel:
        from scipy.optimize import minimize  # ~0.25 s: only when fitting; build imports this module

        n = X.shape[0]
        t = 2.0 * y - 1.0

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:-1], theta[-1]
            z = t * (X @ w + b)
            lse = np.logaddexp(0.0, -z)
            g = -t / (1.0 + np.exp(z))
            grad = np.concatenate([X.T @ g / n + l2 * w / n, [g.mean()]])
            return float(lse.mean() + 0.5 * l2 * (w @ w) / n), grad

        res = minimize(loss, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 300})
        return cls(res.x[:-1], float(res.x[-1]))

    def predict(self, X: sp.csr_matrix) -> np.ndarray:
        return ((X @ self.w + self.b) > 0).astype(int)


def shortcut_report(folder: Path, languages: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """model -> language -> {accuracy, low, high, n} on the test sets of ``folder``."""
    s1, s2, y = read_pairs(folder / "train-en.tsv")
    length = ThresholdRule.fit(length_feature(s1, s2), y)
    overlap = ThresholdRule.fit(overlap_feature(s1, s2), y)
    bow = BowModel.fit(bow_features(s1, s2), y)
    out: dict[str, dict[str, dict[str, float]]] = {"length": {}, "overlap": {}, "bow": {}}
    for lang in languages:
        t1, t2, ty = read_pairs(folder / f"test-{lang}.tsv")
        preds = {
            "length": length.predict(length_feature(t1, t2)),
            "overlap": overlap.predict(overlap_feature(t1, t2)),
            "bow": bow.predict(bow_features(t1, t2)),
        }
        for name, p in preds.items():
            k, n = int((p == ty).sum()), len(ty)
            lo, hi = wilson(k, n)
            out[name][lang] = {"accuracy": k / n, "low": lo, "high": hi, "n": n}
    return out


def format_report(report: dict) -> str:
    langs = list(next(iter(report.values())))
    lines = ["| model | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for name, per in report.items():
        cells = [
            f"{100 * v['accuracy']:.1f} [{100 * v['low']:.1f}, {100 * v['high']:.1f}]" for v in per.values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
