"""The confirmatory study's runner and report (benchmarks/real/{protocol,study,study_report}.py):
the precision check comes first and decides by its rule, runs land in ``<label>/seed-<k>/`` with
provenance and are never trained twice, and the report's verdicts follow Holm's procedure."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks.real.protocol import CHECK_DIR, CHECK_SEEDS, LABELS, PRECISIONS, finished
from benchmarks.real.study import precision_decision, publish, study
from benchmarks.real.study_report import cost_ratio, replace_block, verdict, whole_seeds, write_study_report
from fastrobust.evaluate.predictions import SetPredictions, TaskPredictions

LANGS = ["en", "de", "fr", "ja", "ko"]
N = 300


def _overrides(data, model):
    return [
        "task.name=pawsx", "task.source=local", f"task.path={data}", "task.languages=[en, de, fr]",
        f"model.name_or_path={model}", "model.max_length=32", "optim.batch_size=8", "optim.max_steps=4",
        "optim.learning_rate=1e-3", "optim.warmup_ratio=0.2", "eval.every_steps=2", "eval.batch_size=8",
        "output.save_model=false", "output.tensorboard=false", "seeds=null", "parallel=1",
    ]  # fmt: skip


@pytest.mark.usefixtures("one_thread")
def test_study_runs_the_check_first_then_whole_seeds_once(tiny_pawsx, tmp_path):
    data, model = tiny_pawsx
    results, scratch = tmp_path / "results", tmp_path / "scratch"
    labels = ("baseline", "rs-rp-0.25", "pgd-k1-1")
    kw = dict(workers=1, device="auto", threads=1, seeds=(1, 2), labels=labels, extra=_overrides(data, model))
    study(None, results, scratch, **kw)
    for p in PRECISIONS:
        for s in CHECK_SEEDS:
            assert finished(results / CHECK_DIR / p / "baseline" / f"seed-{s}")
    decision = json.loads((results / CHECK_DIR / "decision.json").read_text())
    prec = decision["precision"]
    assert prec in PRECISIONS and set(decision["interval_contains_zero"]) == {"xlt_avg", "gxlt_cross"}
    for label in labels:
        for s in (1, 2):
            sm = json.loads((results / label / f"seed-{s}" / "summary.json").read_text())
            assert sm["label"] == label and sm["seed"] == s and sm["config"]["seed"] == s
            assert sm["provenance"]["precision"] == prec == sm["config"]["model"]["precision"]
            assert sm["provenance"]["threads"] == 1 and sm["provenance"]["cpu"]
            assert sm["dev_eval_seconds"] > 0 and sm["test_eval_seconds"] > 0
    copied = json.loads((results / "baseline" / "seed-1" / "summary.json").read_text())
    assert copied["copied_from"] == f"{CHECK_DIR}/{prec}/baseline/seed-1"
    assert whole_seeds(results, labels, (1, 2, 3)) == [1, 2]
    stamps = {p: p.stat().st_mtime_ns for p in results.rglob("summary.json")}
    study(None, results, scratch, **kw)  # everything is there: nothing trains again
    assert {p: p.stat().st_mtime_ns for p in results.rglob("summary.json")} == stamps


# ---- fabricated runs: known differences ---------------------------------------------------------
def _labels(seed: int = 99) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, N)


def _set(correct_rate: float, rng) -> SetPredictions:
    y = _labels()
    right = rng.random(N) < correct_rate
    pred = np.where(right, y, 1 - y)
    probs = np.stack([1.0 - pred, pred], axis=1).astype(np.float32) * 0.8 + 0.1
    return SetPredictions(probs, y)


def _write_run(folder: Path, label: str, seed: int, same: float, cross: float, dev: float = 0.9) -> None:
    rng = np.random.default_rng([seed, zlib.crc32(label.encode()), int(1000 * cross)])
    xlt = {lang: _set(same, rng) for lang in LANGS}
    gxlt = {(a, b): (xlt[a] if a == b else _set(cross, rng)) for a in LANGS for b in LANGS}
    preds = TaskPredictions(xlt=xlt, gxlt=gxlt, task="pawsx", languages=LANGS, train_language="en",
                            label_names=["not_paraphrase", "paraphrase"])  # fmt: skip
    scratch = folder.parent / (folder.name + "-scratch")
    preds.save(scratch / "report" / "predictions.npz")
    (scratch / "report" / "report.json").write_text(json.dumps(preds.report().to_dict()))
    summary = {"label": label, "kind": "baseline", "seed": seed, "steps": 360, "best_dev_accuracy": dev,
               "train_seconds": 500.0 if label != "pgd-k1-1" else 900.0, "dev_eval_seconds": 50.0,
               "train_cpu_seconds": 500.0 if label != "pgd-k1-1" else 900.0, "dev_eval_cpu_seconds": 50.0,
               "test_eval_seconds": 200.0, "config": {"optim": {"batch_size": 16}}}  # fmt: skip
    (scratch / "summary.json").write_text(json.dumps(summary))
    publish(scratch, folder, {"provenance": {"precision": "bf16", "wall_seconds": 760.0}})


def test_precision_rule(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for p in PRECISIONS:
        for s in CHECK_SEEDS:
            _write_run(good / CHECK_DIR / p / "baseline" / f"seed-{s}", "baseline", s, 0.8, 0.6)
            cross = 0.6 if p == "fp32" else 0.45  # bf16 loses 15 points of G-XLT cross: refused
            _write_run(bad / CHECK_DIR / p / "baseline" / f"seed-{s}", "baseline", s, 0.8, cross)
    assert precision_decision(good)["precision"] == "bf16"
    refused = precision_decision(bad)
    assert refused["precision"] == "fp32" and refused["interval_contains_zero"]["gxlt_cross"] is False


def test_report_confirms_only_a_real_gain_and_applies_holm(tmp_path):
    results = tmp_path / "results"
    for label in LABELS:
        for s in (1, 2, 3):
            cross = 0.75 if label == "rs-da" else 0.6  # one real gain of 15 points; the rest: none
            _write_run(results / label / f"seed-{s}", label, s, 0.8, cross)
    _write_run(results / "rs-da" / "seed-4", "rs-da", 4, 0.8, 0.75)  # seed 4 is not whole: ignored
    t = write_study_report(results)
    assert t["seeds"] == [1, 2, 3] and not t["complete"]
    rows = t["rows"]
    # 3 of 5 seeds: Holm rejects, but the study is cut short, so the verdict is interim
    assert rows["rs-da"]["verdict"] == "gain (interim)" and rows["rs-da"]["holm"]["rank"] == 1
    assert rows["rs-da"]["holm"]["threshold"] == pytest.approx(0.05 / 6)
    for label in LABELS[2:]:
        assert rows[label]["verdict"] == "no difference shown", label
    assert rows["pgd-k1-1"]["cost_ratio"] == pytest.approx(850 / 450)  # CPU time (written by _write_run)
    text = (results / "report" / "study.md").read_text()
    assert "incomplete: seeds 1, 2, 3 of 1, 2, 3, 4, 5" in text and "gain (interim)" in text
    assert "confirmed" not in text and "recorded it (1, 2, 3;" in text
    # a 15-point gain: no bootstrap draw at or below 0, shown as p < 1/draws next to its threshold
    assert f"| < {1 / t['n_boot']:.4f} (0.0083) | gain (interim) |" in text
    assert (results / "report" / "comparison" / "comparison.json").is_file()
    assert not (results / "report" / "replication.md").exists()  # no replication seed is whole


def test_replication_seeds_get_their_own_table_not_pooled(tmp_path):
    results = tmp_path / "results"
    for label in LABELS:
        _write_run(results / label / "seed-1", label, 1, 0.8, 0.6)
        _write_run(results / label / "seed-6", label, 6, 0.8, 0.75 if label == "rs-da" else 0.6)
    t = write_study_report(results)
    assert t["seeds"] == [1] and t["rows"]["rs-da"]["cells"]["gxlt_cross"]["difference"][
        "estimate"
    ] == pytest.approx(0.0, abs=0.06)
    rep = json.loads((results / "report" / "replication.json").read_text())
    assert rep["seeds"] == [6] and rep["planned"] == [6, 7, 8, 9, 10] and not rep["complete"]
    assert rep["rows"]["rs-da"]["cells"]["gxlt_cross"]["difference"]["estimate"] == pytest.approx(
        0.15, abs=0.06
    )
    text = (results / "report" / "replication.md").read_text()
    assert "incomplete: seeds 6 of 6, 7, 8, 9, 10" in text


def test_generated_block_is_replaced_and_the_rest_kept(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- real-study:begin -->\nold\n<!-- real-study:end -->\nafter\n")
    assert replace_block(doc, "new table")
    assert doc.read_text() == "before\n<!-- real-study:begin -->\nnew table\n<!-- real-study:end -->\nafter\n"
    (tmp_path / "none.md").write_text("no markers\n")
    assert not replace_block(tmp_path / "none.md", "x")


def test_verdict_is_confirmed_only_for_the_complete_study():
    assert verdict(+0.02, True, complete=True) == "gain (confirmed)"
    assert verdict(-0.02, True, complete=True) == "loss (confirmed)"
    assert verdict(+0.02, True, complete=False) == "gain (interim)"
    assert verdict(+0.02, False, complete=True) == "no difference shown"


def test_cost_ratio_uses_only_seeds_timed_in_cpu_time_on_both_sides():
    """Seed 1: only the method recorded CPU time, so the seed does not count (wall times of runs
    made on different days are not compared); seed 2: both did (wall 3x, CPU 2x: CPU counts)."""
    cfg = {"config": {"optim": {"batch_size": 16}}, "steps": 100, "dev_eval_seconds": 0.0}
    base = [dict(cfg, train_seconds=100.0), dict(cfg, train_seconds=100.0, train_cpu_seconds=50.0)]
    meth = [dict(cfg, train_seconds=150.0, train_cpu_seconds=60.0),
            dict(cfg, train_seconds=300.0, train_cpu_seconds=100.0)]  # fmt: skip
    assert cost_ratio(meth, base) == (pytest.approx(2.0), [1])
    assert cost_ratio(meth[:1], base[:1]) == (None, [])


def test_cost_ratio_compares_runs_of_one_training_engine_only():
    cfg = {
        "config": {"optim": {"batch_size": 16}},
        "steps": 100,
        "dev_eval_seconds": 0.0,
        "dev_eval_cpu_seconds": 0.0,
    }
    base = [dict(cfg, train_seconds=1.0, train_cpu_seconds=50.0, engine="fastrobust.train"),
            dict(cfg, train_seconds=1.0, train_cpu_seconds=50.0)]  # fmt: skip
    meth = [dict(cfg, train_seconds=1.0, train_cpu_seconds=100.0, engine="benchmarks.real.lite"),
            dict(cfg, train_seconds=1.0, train_cpu_seconds=150.0, engine="benchmarks.real.lite")]  # fmt: skip
    assert cost_ratio(meth, base) == (pytest.approx(3.0), [1])  # no engine named = the lite loop


def test_named_blocks_are_replaced_independently(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- a:begin -->\n1\n<!-- a:end -->\n<!-- b:begin -->\n2\n<!-- b:end -->\n")
    assert replace_block(doc, "x", "b") and not replace_block(doc, "y")
    assert doc.read_text() == "<!-- a:begin -->\n1\n<!-- a:end -->\n<!-- b:begin -->\nx\n<!-- b:end -->\n"


def test_provenance_outside_git_names_the_senders_commit(monkeypatch):
    import benchmarks.real.study as study_mod

    monkeypatch.setattr(study_mod, "_git", lambda *a, **k: "")  # a tree copied without .git
    monkeypatch.setenv("FASTROBUST_COMMIT", "abc123")
    p = study_mod.provenance(precision="fp32", device="cpu", threads=1, workers=2)
    assert p["commit"] == "abc123" and p["tree_modified"] is None
    monkeypatch.setattr(study_mod, "_git", lambda *a, **k: "deadbeef" if a[0] == "rev-parse" else "")
    p = study_mod.provenance(precision="fp32", device="cpu", threads=1, workers=2)
    assert p["commit"] == "deadbeef" and p["tree_modified"] is False


def test_averaging_report_reads_whole_seeds_of_the_four_arms(tmp_path):
    """The averaging study's tables from a results folder: nothing before a whole seed; with one
    (the committed seed-6 runs, copied), every arm against the baseline in one Holm family."""
    import shutil

    from benchmarks.real.averaging_report import ARMS, averaging_markdown, averaging_tables
    from benchmarks.real.protocol import RESULTS

    assert averaging_tables(tmp_path, 200) is None
    assert "No seed" in averaging_markdown(None)
    for arm in ARMS:
        src = RESULTS / "averaging" / arm / "seed-6"
        if not (src / "summary.json").is_file():
            pytest.fail(f"{src}: the committed seed-6 run is missing")
        shutil.copytree(src, tmp_path / "averaging" / arm / "seed-6")
    t = averaging_tables(tmp_path, 200)
    assert t["seeds"] == [6] and not t["complete"]
    assert len(t["holm"]) == 6 and {h["rank"] for h in t["holm"].values()} == set(range(1, 7))
    text = averaging_markdown(t)
    assert "incomplete" in text and "rs-da+avg" in text and "G-XLT cross ROC-AUC" in text
