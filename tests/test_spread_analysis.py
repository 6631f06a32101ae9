"""benchmarks/synthetic/spread_analysis.py: per-seed accuracies, the sd over seeds and over each half
of the seeds, from saved predictions of one or several folders (the docs' 10-seed tables)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fastrobust.evaluate import SetPredictions, TaskPredictions

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location(
        "spread_analysis", ROOT / "benchmarks" / "synthetic" / "spread_analysis.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _save(folder: Path, seed: int, correct_en: int, correct_xa: int, n: int = 100) -> None:
    """A baseline run whose English / xa predictions are right on the first ``correct_*`` examples."""
    labels = np.zeros(n, dtype=np.int64)
    sets = {}
    for lang, k in (("en", correct_en), ("xa", correct_xa)):
        pred = np.where(np.arange(n) < k, 0, 1)
        sets[lang] = SetPredictions(np.eye(2)[pred], labels)
    tp = TaskPredictions(xlt=sets, task="toy", train_language="en", label_names=["n", "p"])
    folder.mkdir(parents=True, exist_ok=True)
    tp.save(folder / f"baseline-seed{seed}.npz")


def test_seeds_of_two_folders_with_halves(tmp_path, capsys):
    en = [90, 92, 94, 80, 90, 90]
    xa = [60, 61, 62, 63, 64, 65]
    for seed in range(6):
        _save(tmp_path / ("a" if seed < 3 else "b"), seed, en[seed], xa[seed])
    out = tmp_path / "spread.json"
    _module().main([str(tmp_path / "a"), str(tmp_path / "b")], str(out))
    report = json.loads(out.read_text())
    assert report["seeds"] == [0, 1, 2, 3, 4, 5]
    cell = report["cells"]["en"]
    assert cell["accuracy"] == [float(a) for a in en]
    assert np.isclose(cell["sd"], np.std(en, ddof=1))
    assert np.allclose(cell["sd_halves"], [np.std(en[:3], ddof=1), np.std(en[3:], ddof=1)])
    zero_shot = report["cells"]["zero-shot avg"]
    assert np.isclose(zero_shot["mean"], np.mean(xa))
    xlt = report["cells"]["XLT avg"]
    assert np.allclose(xlt["accuracy"], (np.array(en) + np.array(xa)) / 2)
    assert "halves" in capsys.readouterr().out


def test_fewer_than_two_runs_is_an_error(tmp_path):
    _save(tmp_path, 0, 90, 60)
    with pytest.raises(SystemExit, match="fewer than 2"):
        _module().main([str(tmp_path)])
