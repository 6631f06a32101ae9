"""The real benchmark trains through ``fastrobust train`` (benchmarks/real/runner.py): a run is the
trainer's run, with its time fields lifted for the study's cost table, resumable, and read by
``fastrobust compare`` once published."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.real.runner import ENGINE, check_device, publish, train_one
from fastrobust.evaluate.predictions import TaskPredictions
from fastrobust.evaluate.runs import load_runs

pytestmark = pytest.mark.usefixtures("one_thread")

PGD = {"kind": "pgd", "steps": 2, "epsilon": 2.0, "step_size": 1.0, "init_magnitude": 0.5}


def _overrides(data, model, section, precision="fp32"):
    return [f"model.precision={precision}",
        "task.name=pawsx", "task.source=local", f"task.path={data}", "task.languages=[en, de, fr]",
        f"model.name_or_path={model}", "model.max_length=32", f"methods=[{json.dumps(section)}]",
        "optim.batch_size=8", "optim.max_steps=10", "optim.learning_rate=1e-3", "optim.warmup_ratio=0.2",
        "eval.every_steps=4", "eval.batch_size=8", "seed=3",
    ]  # fmt: skip


@pytest.mark.parametrize(("section", "precision"), [(PGD, "fp32"), ({"kind": "baseline"}, "bf16")])
def test_a_run_is_the_trainers_run_with_its_times(section, precision, tiny_pawsx, tmp_path):
    from fastrobust.training import train

    data, model = tiny_pawsx
    overrides = _overrides(data, model, section, precision)
    ref = next(
        iter(train(None, [*overrides, f"output.dir={tmp_path / 'ref'}", "seeds=null"])["methods"].values())
    )
    got = train_one(None, overrides, tmp_path / "work")
    assert got["losses"] == ref["losses"] and got["dev_history"] == ref["dev_history"]
    assert got["xlt"] == ref["xlt"] and got["averages"] == ref["averages"]
    assert got["engine"] == ENGINE and got["precision"] == precision and got["device"] == "cpu"
    assert got["config"]["seed"] == 3 and got["config"]["model"]["precision"] == precision
    tp = got["throughput"]
    assert got["train_seconds"] == pytest.approx(tp["train_seconds"] + got["dev_eval_seconds"])
    assert got["train_cpu_seconds"] == pytest.approx(tp["train_cpu_seconds"] + got["dev_eval_cpu_seconds"])
    for key in ("dev_eval_seconds", "dev_eval_cpu_seconds", "test_eval_seconds", "test_eval_cpu_seconds"):
        assert got[key] > 0, key
    assert tp["train_cpu_seconds"] > 0 and "files" not in got
    assert "step 10" in (tmp_path / "work" / "train.log").read_text()  # the trainer's lines, not stdout


def test_a_finished_run_is_read_back_not_trained_again(tiny_pawsx, tmp_path):
    data, model = tiny_pawsx
    overrides = _overrides(data, model, {"kind": "baseline"})
    first = train_one(None, overrides, tmp_path / "work")
    stamp = (tmp_path / "work" / "baseline" / "summary.json").stat().st_mtime_ns
    again = train_one(None, overrides, tmp_path / "work")
    assert again == first
    assert (tmp_path / "work" / "baseline" / "summary.json").stat().st_mtime_ns == stamp


def test_published_run_is_read_by_compare(tiny_pawsx, tmp_path):
    data, model = tiny_pawsx
    s = train_one(None, _overrides(data, model, {"kind": "baseline"}), tmp_path / "work")
    dest = tmp_path / "results" / "baseline" / "seed-3"
    publish(tmp_path / "work" / "baseline", dest, {"provenance": {"commit": "abc"}}, summary=s)
    written = json.loads((dest / "summary.json").read_text())
    assert written["provenance"] == {"commit": "abc"} and written["train_seconds"] == s["train_seconds"]
    runs = load_runs(tmp_path / "results")
    assert len(runs) == 1 and runs[0].label == "baseline" and runs[0].seed == 3
    preds = TaskPredictions.load(dest / "report" / "predictions.npz")
    assert len(preds.gxlt) == 9 and preds.report().xlt == runs[0].report.xlt
    np.testing.assert_allclose(sorted(runs[0].report.xlt.values()), sorted(s["xlt"].values()))


def test_device_mismatch_is_refused_before_training():
    import torch

    have = "cuda" if torch.cuda.is_available() else "cpu"
    check_device("auto")
    check_device(have)
    with pytest.raises(RuntimeError, match="would run on"):
        check_device("cpu" if have == "cuda" else "cuda")
    with pytest.raises(ValueError, match="expected auto, cpu or cuda"):
        check_device("tpu")


def test_step_profile_times_every_part_of_a_run(tiny_pawsx, tmp_path):
    from benchmarks.real.profile_step import profile

    data, model = tiny_pawsx
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""
model: {{name_or_path: {model}, max_length: 32}}
task: {{name: pawsx, source: local, path: {data}, languages: [en, de, fr], gxlt: true}}
optim: {{batch_size: 8, max_steps: 10}}
eval: {{every_steps: 4, batch_size: 8}}
""")
    parts = profile(cfg, "bf16", 2, PGD)
    assert parts["dev evaluation (x3)"] > 0 and parts["test evaluation (x9 sets, one measured)"] > 0
    assert all(v > 0 for v in parts.values()) and len(parts) == 7
