"""Merging finished runs from disk: fastrobust.evaluate.runs and the `fastrobust compare` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from fastrobust.errors import DataError
from fastrobust.evaluate import SetPredictions, TaskPredictions, compare
from fastrobust.evaluate.runs import load_runs, merge_runs, seed_dir_name

LANGS = ["en", "xa"]


def fake_run(
    folder: Path, label: str, seed: int | None, acc: float, labels: np.ndarray, kind=None, preds=True
):
    """A finished run folder as the trainer writes it: summary.json, report/report.json, predictions."""
    # zlib.crc32, not hash(): str hashes change with every process (PYTHONHASHSEED), the data must not.
    rng = np.random.default_rng(zlib.crc32(f"{label}|{seed}|{acc}".encode()))
    sets = {}
    for lang in LANGS:
        pred = np.where(rng.random(len(labels)) < acc, labels, 1 - labels)
        sets[lang] = SetPredictions(np.eye(2)[pred], labels)
    gx = {(a, b): sets[a] if a == b else sets[b] for a in LANGS for b in LANGS}
    tp = TaskPredictions(xlt=sets, gxlt=gx, task="toy", train_language="en", label_names=["n", "p"])
    (folder / "report").mkdir(parents=True)
    summary = {"label": label, "kind": kind or label}
    if seed is not None:
        summary["seed"] = seed
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "report" / "report.json").write_text(json.dumps(tp.report().to_dict()))
    if preds:
        tp.save(folder / "report" / "predictions.npz")
    return tp


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(0, 2, 200)


def test_load_runs_single_and_multi_seed_layouts(tmp_path, labels):
    out = tmp_path / "out"
    fake_run(out / "baseline", "baseline", None, 0.7, labels)  # old single-seed layout, no seed recorded
    (out / "summary.json").write_text(json.dumps({"config": {"seed": 7}}))
    for s in (0, 1, 2):
        fake_run(out / "pgd" / seed_dir_name(s), "pgd", s, 0.7, labels)
    (out / "pgd" / seed_dir_name(3)).mkdir()  # unfinished seed: ignored
    runs = load_runs(out)
    assert [(r.label, r.seed) for r in runs] == [("baseline", 7), ("pgd", 0), ("pgd", 1), ("pgd", 2)]
    assert all(r.predictions is not None for r in runs)
    assert [r.seed for r in load_runs(out / "pgd")] == [0, 1, 2]  # a method folder alone
    assert [r.seed for r in load_runs(out / "pgd" / "seed-1")] == [1]


def test_merge_pools_seeds_and_renames_clashes(tmp_path, labels):
    a, b = tmp_path / "a", tmp_path / "b"
    for s in (0, 1):
        fake_run(a / "baseline" / f"seed-{s}", "baseline", s, 0.7, labels)
        fake_run(b / "rs-rp" / f"seed-{s}", "rs-rp", s, 0.8, labels)
    fake_run(b / "baseline" / "seed-2", "baseline", 2, 0.7, labels)
    runs = merge_runs([a, b])
    comp = compare(runs, n_boot=200)
    assert comp.methods["baseline"].seeds == [0, 1, 2] and comp.methods["rs-rp"].seeds == [0, 1]
    fake_run(b / "baseline" / "seed-0", "baseline", 0, 0.6, labels)  # same label and seed as in a
    labels_seen = {r.label for r in merge_runs([a, b])}
    assert labels_seen == {"a/baseline", "b/baseline", "rs-rp"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "fastrobust", "compare", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_compare_command_end_to_end(tmp_path, labels):
    a, b = tmp_path / "a", tmp_path / "b"
    for s in (0, 1, 2):
        fake_run(a / "baseline" / f"seed-{s}", "baseline", s, 0.6, labels, kind="baseline")
        fake_run(b / "better" / f"seed-{s}", "better", s, 0.9, labels, kind="pgd")
    fake_run(b / "old" / "seed-0", "old", 0, 0.6, labels, preds=False)
    proc = run_cli(str(a), str(b), "--out", str(tmp_path / "cmp"), "--n-boot", "500")
    assert proc.returncode == 0, proc.stderr
    assert (
        "XLT accuracy: difference to baseline" in proc.stdout
        and "old: no per-example predictions" in proc.stdout
    )
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(data["methods"]) == {"baseline", "better", "old"} and data["n_boot"] == 500
    diff = data["methods"]["better"]["cells"]["xlt_zero_shot_avg"]["difference"]
    assert diff["excludes_zero"] and diff["low"] > 0.2 and diff["scope"] == "test examples and seeds"
    for name in ("comparison.md", "comparison.csv", "comparison.png"):
        assert (tmp_path / "cmp" / name).is_file()


def test_compare_command_errors_are_one_line(tmp_path, labels, capsys):
    from fastrobust.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    fake_run(a / "baseline", "baseline", 0, 0.6, labels)
    fake_run(b / "other", "other", 0, 0.6, 1 - labels)
    proc = run_cli(str(a), str(b), "--out", str(tmp_path / "c"))  # the real entry point, once
    assert proc.returncode == 2 and "different examples" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    capsys.readouterr()
    for args, message in (
        ([str(a), str(b)], "--out: required"),
        ([str(tmp_path / "nowhere")], "not a folder"),
        ([str(a), "--confidence", "1.5"], "--confidence"),
    ):
        assert main(["compare", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_merge_refuses_folders_without_runs(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="no finished run"):
        merge_runs([tmp_path / "x"])
