"""ROC-AUC (against a brute-force pairwise count, ties included), its bootstrap, ECE, and the
threshold-free entries of reports and comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from fastrobust.errors import DataError
from fastrobust.evaluate.bootstrap import resample_counts
from fastrobust.evaluate.predictions import SetPredictions, TaskPredictions
from fastrobust.evaluate.stats import RunResult, compare, compare_metrics
from fastrobust.evaluate.threshold_free import binary_auc, bootstrap_auc, expected_calibration_error, roc_auc


def brute_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> float:
    """sum over (positive i, negative j) of w_i w_j ([s_i > s_j] + 0.5 [s_i == s_j]) / (W+ W-)."""
    w = np.ones(scores.size) if weights is None else weights
    p, n = np.flatnonzero(positive), np.flatnonzero(~positive)
    win = (scores[p][:, None] > scores[n][None, :]) + 0.5 * (scores[p][:, None] == scores[n][None, :])
    return float((w[p][:, None] * w[n][None, :] * win).sum() / (w[p].sum() * w[n].sum()))


@pytest.mark.parametrize("n", [2, 7, 60, 301])
@pytest.mark.parametrize("ties", [False, True])
def test_binary_auc_equals_the_pairwise_count(n: int, ties: bool) -> None:
    rng = np.random.default_rng(n)
    y = np.r_[0, 1, rng.integers(0, 2, n - 2)].astype(bool)
    s = rng.normal(size=n) + y
    if ties:
        s = np.round(s)  # many ties, across the classes too
    assert binary_auc(s, y) == pytest.approx(brute_auc(s, y), abs=1e-12)


def test_auc_extremes_and_one_class() -> None:
    y = np.array([0, 0, 1, 1])
    assert binary_auc(np.array([0.1, 0.2, 0.8, 0.9]), y == 1) == 1.0
    assert binary_auc(np.array([0.9, 0.8, 0.2, 0.1]), y == 1) == 0.0
    assert binary_auc(np.ones(4), y == 1) == 0.5
    with pytest.raises(DataError, match="only one class"):
        binary_auc(np.array([0.1, 0.3]), np.array([True, True]))
    with pytest.raises(DataError, match="no examples"):
        binary_auc(np.array([]), np.array([], dtype=bool))


def test_multiclass_auc_is_the_mean_one_vs_rest() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expect = np.mean([brute_auc(p[:, c], y == c) for c in range(3)])
    assert roc_auc(p, y) == pytest.approx(expect, abs=1e-12)
    # a class absent from the labels is left out of the mean
    y2 = np.where(y == 2, 0, y)
    assert roc_auc(p, y2) == pytest.approx(np.mean([brute_auc(p[:, c], y2 == c) for c in (0, 1)]))


@pytest.mark.parametrize("classes", [2, 3])
def test_bootstrap_auc_equals_the_weighted_pairwise_count(classes: int) -> None:
    rng = np.random.default_rng(1)
    n = 80
    y = rng.integers(0, classes, n)
    logits = np.round(rng.normal(size=(n, classes)) + np.eye(classes)[y], 1)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    counts = resample_counts(n, 12, rng)
    got = bootstrap_auc(p, y, counts)
    for b in range(12):
        w = counts[b].astype(np.float64)
        if classes == 2:
            expect = brute_auc(p[:, 1], y == 1, w)
        else:
            expect = np.mean([brute_auc(p[:, c], y == c, w) for c in range(classes) if w[y == c].sum() > 0])
        assert got[b] == pytest.approx(expect, abs=1e-6)
    ones = np.ones((1, n), dtype=np.float32)
    assert bootstrap_auc(p, y, ones)[0] == pytest.approx(roc_auc(p, y), abs=1e-6)


def test_ece_of_a_known_case() -> None:
    # confidences 0.9 (4 examples, 3 right) and 0.6 (2 examples, both right): |0.75-0.9|*4/6 + |1-0.6|*2/6
    p = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    y = np.array([0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.15 * 4 / 6 + 0.4 * 2 / 6)


def _task(seed: int, shift: float = 0.0) -> TaskPredictions:
    """Two languages, three G-XLT... a small parallel task whose de scores drift by ``shift``."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], 50)
    sets = {}
    for lang, s in (("en", 0.0), ("de", shift)):
        d = 2.0 * (y - 0.5) + rng.normal(size=y.size) - s
        sets[lang] = SetPredictions.from_logits(np.stack([np.zeros_like(d), d], 1), y)
    cross = SetPredictions.from_logits(
        np.stack([np.zeros(y.size), rng.normal(size=y.size) + y - shift], 1), y
    )
    gxlt = {("en", "en"): sets["en"], ("de", "de"): sets["de"], ("en", "de"): cross, ("de", "en"): cross}
    return TaskPredictions(sets, gxlt, "pawsx", ["en", "de"], "en", ["no", "yes"])


def test_report_carries_auc_ece_and_calibrated_accuracy() -> None:
    pred = _task(0, shift=1.5)
    rep = pred.report()
    assert set(rep.metrics) == {"auc", "ece", "calibrated"}
    # a drift of the de scores lowers accuracy, not AUC; the correction restores the decisions
    assert rep.metrics["auc"].xlt["de"] == pytest.approx(roc_auc(pred.xlt["de"].probs, pred.xlt["de"].labels))
    assert rep.xlt["de"] < rep.metrics["calibrated"].xlt["de"]
    cal_rates = rep.metrics["calibrated"].xlt_pred_rates["de"]
    assert cal_rates == pytest.approx(rep.xlt_pred_rates["en"], abs=0.011)
    from fastrobust.evaluate.metrics import EvalReport

    back = EvalReport.from_dict(rep.to_dict())
    assert back.metrics["auc"].gxlt_cross_lang_avg == pytest.approx(rep.metrics["auc"].gxlt_cross_lang_avg)


def test_compare_metrics_gives_paired_intervals_for_auc_and_calibrated() -> None:
    runs = [RunResult("baseline", s, (p := _task(s, 1.0)).report(), p) for s in range(3)]
    runs += [RunResult("better", s, (p := _task(10 + s, 0.0)).report(), p) for s in range(3)]
    comp = compare_metrics(runs, n_boot=300)
    assert set(comp.views) == {"calibrated", "auc"}
    auc = comp.views["auc"].methods["better"].diffs["xlt:de"]
    direct = compare(runs, metric="auc", n_boot=300).methods["better"].diffs["xlt:de"]
    assert auc.estimate == pytest.approx(direct.estimate) and auc.low == pytest.approx(direct.low)
    assert auc.low <= auc.estimate <= auc.high
    # the drift is a bias: accuracy differs far more than the calibrated accuracy does
    acc = comp.methods["better"].diffs["xlt:de"].estimate
    cal = comp.views["calibrated"].methods["better"].diffs["xlt:de"].estimate
    assert acc > cal + 0.05
    d = comp.to_dict()
    assert d["views"]["auc"]["metric"] == "auc"
    from fastrobust.evaluate.report import comparison_csv, comparison_markdown, comparison_text

    assert "ROC-AUC" in comparison_text(
        comp
    ) and "## XLT ROC-AUC: difference to baseline" in comparison_markdown(comp)
    assert {row.split(",")[0] for row in comparison_csv(comp).splitlines()[1:]} == {
        "accuracy",
        "calibrated",
        "auc",
    }
