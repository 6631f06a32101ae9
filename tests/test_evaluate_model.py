"""The prediction loop on tiny BERT / XLM-R classifiers: batching and padding do not change predictions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.tiny_models import tiny_classifier, word_tokenizer

from fastrobust.config import TaskConfig
from fastrobust.data import load_task
from fastrobust.data.xtreme import column
from fastrobust.evaluate import accuracy, evaluate_dev, evaluate_task, predict, predict_logits

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def task():
    return load_task(TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "de", "ja"]))


def one_by_one_logits(model, tok, ds, max_length):
    """Reference: each pair alone, unpadded, straight through the model -> (N, C)."""
    out = []
    with torch.no_grad():
        for s1, s2 in zip(column(ds, "sentence1"), column(ds, "sentence2")):
            enc = tok(s1, s2, truncation="longest_first", max_length=max_length, return_tensors="pt")
            out.append(model(**enc).logits[0].numpy())
    return np.stack(out)


def one_by_one(model, tok, ds, max_length):
    return one_by_one_logits(model, tok, ds, max_length).argmax(-1)


@pytest.mark.parametrize("style", ["bert", "xlmr"])
def test_batched_predictions_equal_single_examples(task, style):
    tok = word_tokenizer(style)
    model = tiny_classifier(tok, style, seed=3, init_range=0.5)
    ds = task.gxlt[("de", "ja")]
    ref_logits = one_by_one_logits(model, tok, ds, 24)
    logits = predict_logits(model, tok, ds, max_length=24, batch_size=4, device="cpu")
    # same logits for every example: length-sorted batches are put back in order, padding is masked out
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert (
        len({round(float(x), 3) for x in ref_logits[:, 0] - ref_logits[:, 1]}) == 6
    )  # distinct rows: an order mix-up shows
    ref = ref_logits.argmax(-1)
    got = predict(model, tok, ds, max_length=24, batch_size=4, device="cpu")
    assert got.shape == (6,) and got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)
    assert evaluate_dev(model, tok, ds, max_length=24, batch_size=5, device="cpu") == accuracy(
        ref, column(ds, "label")
    )


def test_evaluate_task_uses_eval_mode_and_restores_training(task):
    tok = word_tokenizer("bert")
    model = tiny_classifier(tok, "bert", seed=1, init_range=0.5)
    model.train()  # dropout (p=0.1) is active in this mode
    report = evaluate_task(model, tok, task, max_length=32, batch_size=4, device="cpu")
    assert model.training  # restored
    again = evaluate_task(model, tok, task, max_length=32, batch_size=3, device="cpu")
    # deterministic: dropout is off during evaluation. Another batch size pads differently, so the
    # probabilities may differ in their last bits: the decisions are equal, ECE equal to 1e-6 (an
    # AUC can move where two examples' scores are tied up to float noise, so it is not compared).
    assert dataclasses.replace(report, metrics={}) == dataclasses.replace(again, metrics={})
    for lang, ece in report.metrics["ece"].xlt.items():
        assert again.metrics["ece"].xlt[lang] == pytest.approx(ece, abs=1e-6)
    assert set(report.xlt) == {"en", "de", "ja"} and len(report.gxlt) == 9
    model.eval()
    for lang in task.languages:
        ref = one_by_one(model, tok, task.test[lang], 32)
        assert report.xlt[lang] == accuracy(ref, column(task.test[lang], "label"))
        assert report.xlt_sizes[lang] == 6
    ref = one_by_one(model, tok, task.gxlt[("ja", "en")], 32)
    assert report.gxlt[("ja", "en")] == accuracy(ref, column(task.gxlt[("ja", "en")], "label"))
    assert evaluate_task(model, tok, task, max_length=32, batch_size=4, device="cpu", gxlt=False).gxlt == {}


def test_predict_task_probabilities_labels_and_rates(task, tmp_path):
    from fastrobust.evaluate import TaskPredictions, predict_task

    tok = word_tokenizer("bert")
    model = tiny_classifier(tok, "bert", seed=2, init_range=0.5)
    model.eval()
    preds = predict_task(model, tok, task, max_length=32, batch_size=4, device="cpu")
    assert preds.label_names == list(task.label_names) and preds.train_language == "en"
    assert preds.gxlt[("de", "de")] is preds.xlt["de"]  # the joined diagonal is predicted once
    logits = one_by_one_logits(model, tok, task.gxlt[("ja", "en")], 32)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(preds.gxlt[("ja", "en")].probs, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(preds.xlt["ja"].labels, column(task.test["ja"], "label"))
    report = preds.report()
    positive = float((one_by_one(model, tok, task.test["de"], 32) == 1).mean())
    assert report.xlt_pred_rates["de"][1] == pytest.approx(positive)
    assert report == evaluate_task(model, tok, task, max_length=32, batch_size=4, device="cpu")
    back = TaskPredictions.load(preds.save(tmp_path / "p.npz"))
    assert back.report() == report
