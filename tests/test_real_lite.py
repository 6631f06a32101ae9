"""The benchmark's compact loop (benchmarks/real/lite.py) runs what ``fastrobust train`` runs:
on the tiny PAWS-X fixture, the same losses, dev history and test accuracies for each method."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.real.lite import run_one
from fastrobust.config import load_config
from fastrobust.evaluate.predictions import TaskPredictions
from fastrobust.evaluate.runs import load_runs

SECTIONS = [
    {"kind": "baseline"},
    {"kind": "rs-rp", "sigma": 0.5},
    {"kind": "pgd", "steps": 2, "epsilon": 2.0, "step_size": 1.0, "init_magnitude": 0.5},
    {"kind": "rs-da"},
    {"kind": "freelb", "label": "freelb-s2", "steps": 2, "sentences": "second", "ball": "sentence"},
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(data, model, out, section, precision="fp32"):
    return [f"model.precision={precision}",
        "task.name=pawsx", "task.source=local", f"task.path={data}", "task.languages=[en, de, fr]",
        f"model.name_or_path={model}", "model.max_length=32", f"methods=[{json.dumps(section)}]",
        "optim.batch_size=8", "optim.max_steps=10", "optim.learning_rate=1e-3", "optim.warmup_ratio=0.2",
        "eval.every_steps=4", "eval.batch_size=8", "output.save_model=false", "output.tensorboard=false",
        f"output.dir={out}", "seed=3", "seeds=null", "parallel=1",
    ]  # fmt: skip


CASES = [(s, "fp32") for s in SECTIONS] + [(SECTIONS[0], "bf16"), (SECTIONS[2], "bf16")]


@pytest.mark.parametrize(
    ("section", "precision"), CASES, ids=lambda x: x if isinstance(x, str) else x.get("label", x["kind"])
)
def test_lite_loop_equals_the_trainer(section, precision, tiny_pawsx, tmp_path):
    """Also under bf16 autocast (the CPU speed option): same autocast regions as the trainer."""
    from fastrobust.train import train

    data, model = tiny_pawsx
    overrides = _overrides(data, model, tmp_path / "trainer", section, precision)
    ref = next(iter(train(None, overrides)["methods"].values()))
    cfg = load_config(None, _overrides(data, model, tmp_path / "lite", section, precision))
    got = run_one(cfg, cfg.methods[0].model_dump(mode="json"), tmp_path / "lite", log=lambda _m: None)
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5, atol=1e-6)
    assert [s for s, _ in got["dev_history"]] == [s for s, _ in ref["dev_history"]]
    np.testing.assert_allclose([a for _, a in got["dev_history"]], [a for _, a in ref["dev_history"]])
    assert got["best_step"] == ref["best_step"]
    for lang, acc in ref["xlt"].items():
        assert got["xlt"][lang] == pytest.approx(acc)
    for key, value in ref["averages"].items():
        if value is not None:
            assert got["averages"][key] == pytest.approx(value), key


def test_label_names_are_pawsx():
    from benchmarks.real.lite import LABEL_NAMES
    from fastrobust.data.tasks import PAWSX

    assert PAWSX.label_names == LABEL_NAMES


def test_lite_run_is_read_by_compare(tiny_pawsx, tmp_path):
    data, model = tiny_pawsx
    cfg = load_config(None, _overrides(data, model, tmp_path, {"kind": "baseline"}))
    run_one(cfg, {"kind": "baseline"}, tmp_path, log=lambda _m: None)
    runs = load_runs(tmp_path)
    assert len(runs) == 1 and runs[0].label == "baseline" and runs[0].seed == 3
    preds = TaskPredictions.load(tmp_path / "baseline" / "report" / "predictions.npz")
    assert len(preds.gxlt) == 9 and preds.report().xlt == runs[0].report.xlt
