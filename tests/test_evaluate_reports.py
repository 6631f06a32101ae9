"""Reports and comparisons: files exist, JSON round-trips, CSV/markdown hold the numbers, PNGs are valid."""

from __future__ import annotations

import csv
import json

import matplotlib.image as mpimg
import pytest

from fastrobust.evaluate import EvalReport, write_comparison, write_report
from fastrobust.evaluate.report import atomic_write_text

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
    reports = {"baseline": make_report(0.1), "rs-rp": make_report(0.0)}
    md = write_comparison(reports, tmp_path)
    assert (tmp_path / "comparison.md").read_text() == md
    assert "| baseline | 90.0 | 70.0 | 60.0 | 73.3 | 70.0 |" in md
    assert "| rs-rp | 90.0 | 80.0 | 70.0 | 80.0 | 77.5 |" in md
    assert md.index("## XLT") < md.index("## G-XLT")
    payload = json.loads((tmp_path / "comparison.json").read_text())
    assert {k: EvalReport.from_dict(v) for k, v in payload.items()} == reports
    assert_png(tmp_path / "comparison.png")
    with pytest.raises(ValueError, match="no reports"):
        write_comparison({}, tmp_path)


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
