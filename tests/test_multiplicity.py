"""Holm's step-down correction and the bootstrap p-value (fastrobust.evaluate.multiplicity)."""

from __future__ import annotations

import numpy as np
import pytest

from fastrobust.evaluate.multiplicity import bootstrap_p_value, holm
from fastrobust.evaluate.stats import paired_bootstrap, percentile_interval


def test_holm_steps_down_and_stops_at_the_first_failure():
    # sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2 -> stop; 0.04 is not rejected even
    # though it is below 0.05/1
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}
    r = holm(p, 0.05)
    assert {k: v.rejected for k, v in r.items()} == {"a": True, "b": False, "c": False, "d": True}
    assert [r[k].rank for k in "dacb"] == [1, 2, 3, 4]
    assert r["d"].threshold == pytest.approx(0.05 / 4) and r["b"].threshold == pytest.approx(0.05)
    assert list(r) == list(p)  # input order kept


def test_holm_controls_the_family_wise_error_and_is_at_least_bonferroni():
    rng = np.random.default_rng(0)
    trials, m, false = 4000, 6, 0
    for _ in range(trials):
        p = dict(enumerate(rng.random(m)))  # every null true: uniform p-values
        r = holm(p, 0.05)
        false += any(v.rejected for v in r.values())
        bonferroni = {k for k, v in p.items() if v <= 0.05 / m}
        assert bonferroni <= {k for k, v in r.items() if v.rejected}
    assert false / trials <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_holm_refuses_values_that_are_not_p_values(bad):
    with pytest.raises(ValueError, match="'x'"):
        holm({"x": bad})


def test_bootstrap_p_value_agrees_with_the_percentile_interval():
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.5, 1.5, 2.5, -2.0):
        d = rng.normal(shift, 1.0, 4000)
        p = bootstrap_p_value(d)
        for a in (0.01, 0.05, 0.2):
            lo, hi = percentile_interval(d, 1 - a)
            excludes = lo > 0 or hi < 0
            if abs(p - a) > 2e-3:  # away from the resolution of the quantiles
                assert excludes == (p < a), (shift, a, p)
    assert bootstrap_p_value(np.ones(10)) == 0.0
    assert bootstrap_p_value(np.array([-1.0, 1.0])) == 1.0


def test_paired_bootstrap_reports_the_p_value():
    rng = np.random.default_rng(2)
    y = rng.random((2, 500))
    m, b = {("xlt", "en"): y < 0.8}, {("xlt", "en"): y < 0.6}  # the method is right whenever the baseline is
    iv = paired_bootstrap(m, b, {("xlt", "en"): 1.0}, paired_seeds=True, n_boot=2000)
    assert iv.p_value == 0.0 and iv.low > 0
    same = paired_bootstrap(b, b, {("xlt", "en"): 1.0}, paired_seeds=True, n_boot=2000)
    assert same.p_value == 1.0
