"""Label-free calibration: offsets that give the reference rates (C = 2 and C > 2, planted biases),
no label read, a changed class mix, the offsets file, the CLI and its errors, smoothed votes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastrobust.errors import DataError
from fastrobust.evaluate.calibration import (
    apply_offsets,
    classification_metrics,
    fit_offsets,
    predicted_rates,
)
from fastrobust.evaluate.predictions import SetPredictions, TaskPredictions

FIX = Path(__file__).parent / "fixtures"


def _planted(n: int, classes: int, bias: np.ndarray, seed: int, mix: np.ndarray | None = None):
    """(clean logits, labels): class c's examples score +2 on c; ``bias`` is added on top."""
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, size=n, p=mix)
    clean = rng.normal(size=(n, classes)) + 2.0 * np.eye(classes)[y]
    return clean, clean + bias, y


def test_binary_offsets_give_the_reference_rate() -> None:
    clean, biased, y = _planted(1001, 2, np.array([0.0, -2.5]), 0)
    ref = predicted_rates(clean)
    fit = fit_offsets(biased, ref)
    assert fit.max_rate_error <= 1 / 1001 + 1e-12
    assert np.isclose(fit.offsets.sum(), 0.0)
    assert (apply_offsets(biased, fit.offsets).argmax(1) == y).mean() > (biased.argmax(1) == y).mean() + 0.15


@pytest.mark.parametrize("classes", [3, 5])
def test_multiclass_fit_recovers_a_planted_bias(classes: int) -> None:
    rng = np.random.default_rng(classes)
    bias = rng.normal(scale=1.5, size=classes)
    clean, biased, y = _planted(3000, classes, bias, 1)
    ref = predicted_rates(clean)
    fit = fit_offsets(biased, ref)
    assert fit.max_rate_error < 0.005  # the predicted rates converge to the reference
    # the offsets undo the bias (both defined up to a constant)
    np.testing.assert_allclose(fit.offsets, -(bias - bias.mean()), atol=0.15)
    acc_clean = (clean.argmax(1) == y).mean()
    acc_fixed = (apply_offsets(biased, fit.offsets).argmax(1) == y).mean()
    assert abs(acc_fixed - acc_clean) < 0.01 < acc_clean - (biased.argmax(1) == y).mean()


def test_offsets_never_read_the_labels() -> None:
    clean, biased, y = _planted(500, 2, np.array([0.0, 1.0]), 2)
    probs = np.exp(biased) / np.exp(biased).sum(1, keepdims=True)
    rng = np.random.default_rng(0)

    def offsets(labels: np.ndarray) -> list[float]:
        en = SetPredictions(probs, labels)
        pred = TaskPredictions(
            {"en": SetPredictions(probs[::-1].copy(), labels), "de": en}, train_language="en"
        )
        return pred.calibrated()[1][("xlt", "de")]

    assert offsets(y) == offsets(rng.permutation(y)) == offsets(np.zeros_like(y))


def test_a_changed_class_mix_is_forced_to_the_reference_mix() -> None:
    """The assumption made visible: the target has 80% positives, the reference 50%. The correction
    makes 50% of the predictions positive, so it can cost accuracy against an unbiased model."""
    clean, _, y = _planted(4000, 2, np.zeros(2), 3, mix=np.array([0.2, 0.8]))
    fit = fit_offsets(clean, [0.5, 0.5])
    fixed = apply_offsets(clean, fit.offsets).argmax(1)
    assert abs(fixed.mean() - 0.5) < 0.001 and abs(y.mean() - 0.8) < 0.02
    assert (fixed == y).mean() < (clean.argmax(1) == y).mean() - 0.1


@pytest.mark.parametrize(
    ("logits", "rates", "message"),
    [
        (np.zeros((0, 2)), [0.5, 0.5], "empty"),
        (np.zeros((4, 2)), [0.5, 0.4], "summing to 1"),
        (np.zeros((4, 3)), [0.5, 0.5], "2 classes, the logits 3"),
        (np.full((4, 2), np.nan), [0.5, 0.5], "non-finite"),
        (np.zeros(4), [1.0], "C >= 2"),
    ],
)
def test_bad_input_is_a_data_error(logits: np.ndarray, rates: list[float], message: str) -> None:
    with pytest.raises(DataError, match=message):
        fit_offsets(logits, rates)


def test_classification_metrics_for_users_code() -> None:
    clean, biased, y = _planted(400, 2, np.array([0.0, -2.0]), 4)
    m = classification_metrics(biased, y, reference_rates=predicted_rates(clean))
    assert set(m) >= {"accuracy", "roc_auc", "ece", "predicted_rates", "calibrated_accuracy", "offsets"}
    assert m["calibrated_accuracy"] > m["accuracy"]
    assert classification_metrics(biased, np.ones_like(y))["roc_auc"] is None  # one class: no AUC


def test_smoothed_votes_take_the_offsets(tiny_pawsx) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastrobust.methods.smoothing import sample_counts

    _, model_path = tiny_pawsx
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    tok = AutoTokenizer.from_pretrained(model_path)
    batch = dict(tok(["a b c", "d e"], ["c b a", "e d"], padding=True, return_tensors="pt"))
    counts = sample_counts(model, batch, n=8, sigma=0.01, seed=0, offsets=torch.tensor([0.0, 1e4]))
    assert counts[:, 1].tolist() == [8, 8]


# --- the offsets file and the CLI ------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from fixtures.tiny_models import tiny_classifier, word_tokenizer

    from fastrobust.config import TaskConfig

    root = tmp_path_factory.mktemp("cal") / "model"
    tok = word_tokenizer("bert")
    tiny_classifier(tok, "bert", seed=3).save_pretrained(root)
    tok.save_pretrained(root)
    task = TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "de"])
    (root / "fastrobust.json").write_text(json.dumps({"task": task.model_dump(), "max_length": 24}))
    (root / "README.md").write_text("# model card\n")
    return root


def _cli(command: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(
        {"calibrate": "fastrobust.evaluate.calibrate_cli", "evaluate": "fastrobust.evaluate.cli"}[command]
    )
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_calibrate_saves_offsets_in_the_model_folder_and_evaluate_applies_them(model_dir, tmp_path) -> None:
    inputs = tmp_path / "de.tsv"  # unlabeled target inputs: two text columns, no label
    rows = [ln.split("\t")[:2] for ln in (FIX / "pawsx" / "test-de.tsv").read_text().splitlines()[1:] if ln]
    inputs.write_text("".join(f"{a}\t{b}\n" for a, b in rows))
    assert _cli("calibrate", [str(model_dir), "--inputs", str(inputs), "--target", "de"]) == 0
    assert (
        _cli("calibrate", [str(model_dir), "--inputs", str(inputs), "--target", "fr", "--rates", "0.3,0.7"])
        == 0
    )
    cal = json.loads((model_dir / "calibration.json").read_text())
    assert set(cal["targets"]) == {"de", "fr"} and cal["task"] == "pawsx" and len(cal["label_names"]) == 2
    assert (
        cal["targets"]["fr"]["reference_rates"] == [0.3, 0.7] and cal["targets"]["fr"]["reference"] == "given"
    )
    assert cal["targets"]["de"]["examples"] == len(rows) and cal["targets"]["de"]["reference"] == "source"
    card = (model_dir / "README.md").read_text()
    assert card.startswith("# model card") and card.count("Label-free calibration offsets") == 1
    assert "| de |" in card and "| fr |" in card
    out = tmp_path / "ev"
    assert _cli("evaluate", [str(model_dir), "--out", str(out), "--offsets", str(model_dir)]) == 0
    plain = tmp_path / "plain"
    assert _cli("evaluate", [str(model_dir), "--out", str(plain)]) == 0
    with_off = TaskPredictions.load(out / "predictions.npz")
    without = TaskPredictions.load(plain / "predictions.npz")
    np.testing.assert_array_equal(with_off.xlt["en"].probs, without.xlt["en"].probs)  # no en target
    b = np.asarray(cal["targets"]["de"]["offsets"])
    expect = apply_offsets(np.log(without.xlt["de"].probs), b).argmax(1)
    np.testing.assert_array_equal(with_off.xlt["de"].predicted, expect)


def test_offsets_of_another_task_or_label_set_are_refused(model_dir, tmp_path) -> None:
    from fastrobust.evaluate.offsets import read_calibration

    bad = tmp_path / "calibration.json"
    entry = {"offsets": [0.1, -0.1], "examples": 3, "reference": "given", "reference_rates": [0.5, 0.5],
             "predicted_rates": [0.5, 0.5]}  # fmt: skip
    bad.write_text(
        json.dumps({"version": 1, "task": "xnli", "label_names": ["a", "b"], "targets": {"de": entry}})
    )
    with pytest.raises(DataError, match="fitted for task 'xnli'"):
        read_calibration(bad, task="pawsx", label_names=["a", "b"])
    bad.write_text(json.dumps({"version": 1, "task": "pawsx", "label_names": ["a", "b", "c"], "targets": {}}))
    with pytest.raises(DataError, match="fitted for labels"):
        read_calibration(bad, task="pawsx", label_names=["a", "b"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastrobust",
            "evaluate",
            str(model_dir),
            "--offsets",
            str(bad),
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "fitted for" in proc.stderr and "Traceback" not in proc.stderr
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastrobust",
            "calibrate",
            str(model_dir),
            "--inputs",
            str(empty),
            "--target",
            "de",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "holds no inputs" in proc.stderr


def test_evaluate_help_names_the_calibration_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastrobust", "evaluate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--calibration-reference" in proc.stdout and "--offsets" in proc.stdout
