"""G-XLT pairing on the 4-language PAWS-X fixture and the matrix of a hand-checkable predictor."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fastrobust.config import TaskConfig
from fastrobust.data import load_task
from fastrobust.data.gxlt import build_gxlt_pairs, check_parallel
from fastrobust.data.xtreme import column, pairs_dataset
from fastrobust.errors import DataError
from fastrobust.evaluate import EvalReport, accuracy, evaluate_predictions

FIX = Path(__file__).parent / "fixtures" / "pawsx"
LANGS = ["en", "de", "fr", "ja"]


def raw(lang: str) -> list[list[str]]:
    with (FIX / f"test-{lang}.tsv").open(encoding="utf-8", newline="") as f:
        return [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]


@pytest.fixture(scope="module")
def task():
    return load_task(TaskConfig(name="pawsx", path=str(FIX), languages=LANGS))


def test_pairs_join_example_i_across_languages(task):
    assert sorted(task.gxlt) == sorted((a, b) for a in LANGS for b in LANGS)
    for a in LANGS:
        for b in LANGS:
            ds = task.gxlt[(a, b)]
            expected = [(ra[0], rb[1], int(ra[2])) for ra, rb in zip(raw(a), raw(b))]
            got = list(zip(column(ds, "sentence1"), column(ds, "sentence2"), column(ds, "label")))
            assert got == expected, (a, b)
    assert task.gxlt[("de", "de")] is task.test["de"]  # the diagonal is the test set itself


# The predictor below is built from the raw files, not from the loader: it recognises the language
# and index of sentence1 (a, i) and the language of sentence2 (b). It answers the true label when
# a == b, and for a != b flips the answer on the first K[b] examples. So by hand:
#   acc(a, b) = 1 if a == b else (6 - K[b]) / 6.
K = {"en": 0, "de": 1, "fr": 2, "ja": 3}
EXPECTED = (
    np.array(
        [
            [6, 5, 4, 3],  # en: row = language of sentence1
            [6, 6, 4, 3],  # de
            [6, 5, 6, 3],  # fr
            [6, 5, 4, 6],  # ja
        ]
    )
    / 6.0
)


def hand_predictor():
    first = {r[0]: (lang, i, int(r[2])) for lang in LANGS for i, r in enumerate(raw(lang))}
    second = {r[1]: lang for lang in LANGS for r in raw(lang)}
    assert len(first) == 24 and len(second) == 24  # every sentence identifies its language (and index)

    def predict(ds):
        out = []
        for s1, s2 in zip(column(ds, "sentence1"), column(ds, "sentence2")):
            a, i, label = first[s1]
            b = second[s2]
            out.append(1 - label if a != b and i < K[b] else label)
        return np.array(out)

    return predict


def test_gxlt_matrix_equals_hand_computed(task):
    report = evaluate_predictions(task, hand_predictor())
    np.testing.assert_allclose(report.gxlt_matrix(), EXPECTED)
    assert report.xlt == {lang: 1.0 for lang in LANGS}
    assert report.gxlt_same_lang_avg == pytest.approx(1.0)
    # off-diagonal sum = (12 + 13 + 14 + 15) / 6 = 9 over 12 pairs
    assert report.gxlt_cross_lang_avg == pytest.approx(0.75)
    assert report.gap == pytest.approx(0.25)
    assert report.gxlt_avg == pytest.approx(13 / 16)
    assert report.gxlt_weighted == pytest.approx(13 / 16)  # equal sizes: weighted == macro
    # pairs with ja: column ja (3 x 3/6), the diagonal (1), row ja (1, 5/6, 4/6) -> 5 / 7
    assert report.gxlt_language_avg("ja") == pytest.approx((3 * 3 / 6 + 1 + 1 + 5 / 6 + 4 / 6) / 7)
    back = EvalReport.from_dict(report.to_dict())
    assert back == report


def test_ready_made_pairs_take_precedence(task):
    ready = {("de", "en"): pairs_dataset(["x"], ["y"], [1])}
    pairs = build_gxlt_pairs(task.test, ["en", "de"], ready)
    assert len(pairs[("de", "en")]) == 1 and len(pairs[("en", "de")]) == 6


def test_non_parallel_names_languages_and_index(task):
    de = task.test["de"]
    flipped = pairs_dataset(column(de, "sentence1"), column(de, "sentence2"), [1, 0, 1, 0, 0, 0])
    with pytest.raises(
        DataError, match=r"'en' and 'de' are not parallel: labels differ first at index 4 \(en: 1, de: 0\)"
    ):
        check_parallel("en", task.test["en"], "de", flipped)
    with pytest.raises(DataError, match=r"no test set for language\(s\) \['zh'\]"):
        build_gxlt_pairs(task.test, ["en", "zh"])


def test_accuracy_and_weighted_averages():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([1, 0, 1], [1, 0])
    rep = EvalReport(
        task="t", languages=["en", "de"], xlt={"en": 1.0, "de": 0.5}, xlt_sizes={"en": 3, "de": 1}
    )
    assert rep.xlt_avg == pytest.approx(0.75)
    assert rep.xlt_weighted == pytest.approx((3 * 1.0 + 1 * 0.5) / 4)
    assert rep.gxlt_avg is None and rep.gap is None
