"""Reports and comparisons: files exist, JSON round-trips, CSV/markdown hold the numbers, PNGs are valid."""

from __future__ import annotations

import csv
import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from fastrobust.evaluate import EvalReport, write_comparison, write_report
from fastrobust.fileio import atomic_write_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_report(shift: float = 0.0) -> EvalReport:
    langs = ["en", "de", "zh"]
    acc = {"en": 0.9, "de": 0.8 - shift, "zh": 0.7 - shift}
    gx = {(a, b): (acc[a] + acc[b]) / 2 - (0.1 if a != b else 0.0) for a in langs for b in langs}
    return EvalReport(
        task="xnli",
        languages=langs,
        xlt=acc,
        xlt_sizes={"en": 10, "de": 10, "zh": 20},
        gxlt=gx,
        gxlt_sizes={k: 10 for k in gx},
        train_language="en",
    )


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_write_report_files(tmp_path):
    rep = make_report()
    written = write_report(rep, tmp_path / "out")
    names = {"report.json", "xlt.csv", "gxlt.csv", "report.md", "gxlt_heatmap.png"}
    assert set(written) == names
    assert {p.name for p in (tmp_path / "out").iterdir()} == names  # no temporary files left behind
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert EvalReport.from_dict(data) == rep
    assert data["gxlt"]["de"]["zh"] == pytest.approx(0.65)
    assert data["averages"]["xlt_weighted"] == pytest.approx((9 + 8 + 14) / 40)
    assert data["averages"]["gap"] == pytest.approx(0.1)
    rows = list(csv.reader((tmp_path / "out" / "xlt.csv").open()))
    assert rows[0] == ["language", "accuracy", "examples"] and rows[3] == ["zh", "0.7", "20"]
    grid = list(csv.reader((tmp_path / "out" / "gxlt.csv").open()))
    assert grid[0] == ["sentence1\\sentence2", "en", "de", "zh"]
    assert float(grid[2][3]) == pytest.approx(0.65)  # row de, column zh
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| accuracy | 90.0 | 80.0 | 70.0 | 80.0 | 77.5 |" in md
    assert "| de | 75.0 | 80.0 | 65.0 | 73.3 |" in md
    assert_png(tmp_path / "out" / "gxlt_heatmap.png")


def test_report_without_gxlt(tmp_path):
    rep = make_report()
    rep.gxlt, rep.gxlt_sizes = {}, {}
    assert set(write_report(rep, tmp_path)) == {"report.json", "xlt.csv", "report.md"}
    assert "G-XLT not evaluated." in (tmp_path / "report.md").read_text()
    assert EvalReport.from_dict(json.loads((tmp_path / "report.json").read_text())) == rep


def test_write_comparison(tmp_path):
    """Bare reports (one run each, no predictions): means, no intervals, every file written."""
    reports = {"baseline": make_report(0.1), "rs-rp": make_report(0.0)}
    md = write_comparison(reports, tmp_path)
    assert (tmp_path / "comparison.md").read_text() == md
    assert "| baseline | 1 | 90.0 | 70.0 | 60.0 | 73.3 | 65.0 |" in md
    assert "| rs-rp | 1 | 90.0 | 80.0 | 70.0 | 80.0 | 75.0 |" in md
    assert md.index("## XLT") < md.index("## G-XLT")
    assert "rs-rp: no per-example predictions for baseline: no intervals." in md
    payload = json.loads((tmp_path / "comparison.json").read_text())
    assert payload["baseline"] == "baseline" and set(payload["methods"]) == set(reports)
    assert {k: EvalReport.from_dict(v["reports"]["0"]) for k, v in payload["methods"].items()} == reports
    assert payload["methods"]["rs-rp"]["cells"]["xlt:de"]["mean"] == pytest.approx(0.8)
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    row = next(r for r in rows if r["method"] == "rs-rp" and r["cell"] == "gxlt_gap")
    assert float(row["mean"]) == pytest.approx(0.1) and row["ci_low"] == ""
    assert_png(tmp_path / "comparison.png")
    with pytest.raises(ValueError, match="no reports"):
        write_comparison({}, tmp_path)


def comparison_with_seeds():
    from fastrobust.evaluate import RunResult, SetPredictions, TaskPredictions, compare

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    runs = []
    for label, acc in (("baseline", 0.7), ("rs-rp", 0.8), ("pgd", 0.7)):
        for seed in (0, 1, 2):
            sets = {}
            for lang in ("en", "de", "zh"):
                pred = np.where(rng.random(300) < acc + (0.15 if lang == "en" else 0), labels, 1 - labels)
                sets[lang] = SetPredictions(np.eye(2)[pred], labels)
            gx = {(a, b): sets[a] if a == b else sets[b] for a in sets for b in sets}
            tp = TaskPredictions(xlt=sets, gxlt=gx, task="toy", train_language="en", label_names=["n", "p"])
            runs.append(RunResult(label, seed, tp.report(), tp))
    return compare(runs, n_boot=500)


def test_comparison_with_seeds_markdown_csv_and_marks(tmp_path):
    comp = comparison_with_seeds()
    md = write_comparison(comp, tmp_path)
    assert "mean ± sd over seeds" in md and "difference to baseline (points) [95% CI]" in md
    rs_rp = next(line for line in md.splitlines() if line.startswith("| rs-rp |") and "[" in line)
    assert rs_rp.count(" *") >= 3  # +10 points on 900 examples x 3 seeds is far outside the noise
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    row = next(r for r in rows if r["method"] == "rs-rp" and r["cell"] == "xlt_zero_shot_avg")
    assert float(row["ci_low"]) > 0 and row["excludes_zero"] == "True" and row["n_seeds"] == "3"
    assert row["interval_scope"] == "test examples and seeds"
    from fastrobust.evaluate.report import comparison_text

    text = comparison_text(comp)
    assert "XLT accuracy: difference to baseline" in text and "zero-shot avg" in text


def test_comparison_png_legend_covers_no_bar_and_bars_carry_values():
    from matplotlib.transforms import Bbox

    from fastrobust.evaluate.plots import comparison_figure

    fig = comparison_figure(comparison_with_seeds())
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        axes = fig.axes
        bars = [(ax, p) for ax in axes[:2] for p in ax.patches]
        assert len(bars) == 3 * (5 + 3)  # 3 methods x (XLT: 3 languages, avg, zero-shot; G-XLT: 3)
        # what is drawn of a bar: its extent clipped to its axes (bars start at 0, the axis higher)
        shown = [
            Bbox.intersection(p.get_window_extent(renderer), ax.get_window_extent(renderer)) for ax, p in bars
        ]
        assert all(b is not None for b in shown)
        assert not any(legend.overlaps(b) for b in shown)
        for ax in axes:
            assert ax.get_ylabel()  # every panel, G-XLT included, says what its axis is
        values = [t.get_text() for ax in axes[:2] for t in ax.texts]
        assert len(values) == len(bars) and all(v.replace(".", "").isdigit() for v in values)
        assert "difference to baseline" in axes[2].get_ylabel()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_report_with_predicted_rates(tmp_path):
    from fastrobust.evaluate import SetPredictions, TaskPredictions

    labels = np.array([0, 1, 1, 0])
    sets = {lang: SetPredictions(np.eye(2)[[1, 1, 1, 0]], labels) for lang in ("en", "de")}
    gx = {(a, b): sets[a] for a in sets for b in sets}
    rep = TaskPredictions(xlt=sets, gxlt=gx, train_language="en", label_names=["no", "yes"]).report()
    written = write_report(rep, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| predicted yes | 75.0 | 75.0 |  |  |" in md and "Predicted yes (%)" in md
    rows = list(csv.DictReader(written["sets.csv"].open()))
    assert rows[0]["predicted_yes"] == "0.75" and rows[0]["accuracy"] == "0.75" and len(rows) == 2 + 4


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "first version, long")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_from_dict_rejects_malformed():
    with pytest.raises(ValueError, match="malformed report"):
        EvalReport.from_dict({"task": "x"})


def test_report_keyword_construction_defaults_language_order():
    rep = EvalReport(xlt={"en": 1.0, "de": 0.5}, xlt_sizes={"en": 2, "de": 2}, gxlt={("en", "sw"): 0.5})
    assert rep.languages == ["en", "de", "sw"] and rep.task == ""
    assert rep.gxlt_cross_lang_avg == 0.5 and rep.gxlt_same_lang_avg is None


def test_an_average_a_hair_below_a_tie_prints_as_the_tie_does() -> None:
    """43.75% prints 43.8 (round half to even); a mean of such accuracies that float arithmetic
    leaves a hair below (0.43749999999999994) must print 43.8 too, not 43.7."""
    from fastrobust.evaluate.report import _fmt

    below = float(np.mean([0.529, 0.59, 0.965, 0.32, 0.798, 0.188, 0.362, -0.2520000000000002]))
    assert below < 0.4375 and f"{100 * below:.1f}" == "43.7"  # the naive rendering
    assert _fmt(0.4375) == _fmt(below) == "43.8"
    assert _fmt(0.4365) == "43.6" == f"{100 * 0.4365:.1f}"  # no change away from float noise
