"""Prediction loop: a classifier, a tokenizer and pair datasets -> predicted labels and accuracies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch

from fastrobust.data import TaskData, encode_dataset, make_collator
from fastrobust.data.xtreme import column
from fastrobust.evaluate.metrics import EvalReport, accuracy
from fastrobust.evaluate.predictions import SetPredictions, TaskPredictions
from fastrobust.progress import bar

if TYPE_CHECKING:  # annotations only
    from torch import nn
    from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    *,
    max_length: int,
    batch_size: int,
    device: str | torch.device,
) -> np.ndarray:
    """Classifier logits of every pair of ``dataset`` -> float32 array of shape (N, C), in dataset order.

    The model runs in eval mode (dropout off) without gradients on batches of ``batch_size`` pairs
    right-padded to their longest member (pairs are grouped by length to waste little compute on
    padding); its previous train/eval mode is restored afterwards. ``model`` is an HF sequence
    classifier (or a DeepSpeed engine wrapping one) already on ``device``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    quiet = datasets.is_progress_bar_enabled()
    if quiet:  # one tokenize bar per language pair (225 for XNLI G-XLT) would flood the log
        datasets.disable_progress_bars()
    try:
        encoded = encode_dataset(dataset, tokenizer, max_length)
    finally:
        if quiet:
            datasets.enable_progress_bars()
    order = np.argsort([len(ids) for ids in column(encoded, "input_ids")], kind="stable")
    loader = torch.utils.data.DataLoader(
        encoded, batch_size=batch_size, sampler=order.tolist(), collate_fn=make_collator(tokenizer)
    )
    was_training = bool(getattr(model, "training", False))
    model.eval()
    out = []
    try:
        for batch in loader:
            batch.pop("labels")  # not passed: the model would compute a loss we do not need
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(model(**batch).logits.float().cpu())  # (B, C)
    finally:
        if was_training:
            model.train()
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    logits = torch.cat(out).numpy()
    result = np.empty_like(logits)
    result[order] = logits  # row k of the sorted batches is example order[k]
    return result


def predict(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    *,
    max_length: int,
    batch_size: int,
    device: str | torch.device,
) -> np.ndarray:
    """Predicted label ids argmax_c logits[i, c] -> int64 array of shape (N,); see :func:`predict_logits`."""
    logits = predict_logits(
        model, tokenizer, dataset, max_length=max_length, batch_size=batch_size, device=device
    )
    return logits.argmax(axis=-1).astype(np.int64)


def evaluate_dev(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    *,
    max_length: int,
    batch_size: int,
    device: str | torch.device,
) -> float:
    """Accuracy of ``model`` on one pair dataset (columns sentence1, sentence2, label)."""
    preds = predict(model, tokenizer, dataset, max_length=max_length, batch_size=batch_size, device=device)
    return accuracy(preds, column(dataset, "label"))


def test_progress(task: TaskData, gxlt: bool, progress: str | None) -> Any:
    """A tqdm bar (on stderr; a no-op when ``progress`` is None) over the examples of a task's test
    evaluation: the XLT sets, then the G-XLT sets not shared with them. Use as a context manager;
    ``predict_task(..., progress=lambda name, n: bar.update(n))`` advances it."""
    xlt_ids = {id(task.test[lang]) for lang in task.languages}
    total = sum(len(task.test[lang]) for lang in task.languages)
    if gxlt:
        total += sum(len(ds) for ds in task.gxlt.values() if id(ds) not in xlt_ids)
    return bar(total=total, desc=progress, unit="ex", disable=progress is None)


def evaluate_predictions(
    task: TaskData,
    predict_fn: Callable[[datasets.Dataset], Sequence[int] | np.ndarray],
    *,
    gxlt: bool = True,
    progress: str | None = None,
) -> EvalReport:
    """XLT and G-XLT accuracies of any predictor: ``predict_fn(dataset) -> (N,)`` predicted label ids.

    xlt[l] = accuracy(predict_fn(test[l]), labels); gxlt[(a, b)] = accuracy on the (a, b) pair set.
    A G-XLT set that is the very same object as a test set (the diagonal built by joining) reuses
    the XLT accuracy instead of predicting twice. ``progress``: the label of a progress bar over
    the examples (on stderr); None draws none.
    """
    xlt: dict[str, float] = {}
    sizes: dict[str, int] = {}
    done: dict[int, float] = {}  # id(dataset) -> accuracy
    gx: dict[tuple[str, str], float] = {}
    gx_sizes: dict[tuple[str, str], int] = {}
    with test_progress(task, gxlt, progress) as bar:
        for lang in task.languages:
            ds = task.test[lang]
            xlt[lang] = done[id(ds)] = accuracy(predict_fn(ds), column(ds, "label"))
            sizes[lang] = len(ds)
            bar.update(len(ds))
        if gxlt:
            for pair, ds in task.gxlt.items():
                if id(ds) not in done:
                    done[id(ds)] = accuracy(predict_fn(ds), column(ds, "label"))
                    bar.update(len(ds))
                gx[pair] = done[id(ds)]
                gx_sizes[pair] = len(ds)
    return EvalReport(
        task=task.name,
        languages=list(task.languages),
        xlt=xlt,
        xlt_sizes=sizes,
        gxlt=gx,
        gxlt_sizes=gx_sizes,
        train_language=task.train_language,
    )


def predict_task(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskData,
    *,
    max_length: int,
    batch_size: int,
    device: str | torch.device,
    gxlt: bool = True,
    progress: Callable[[str, int], None] | None = None,
) -> TaskPredictions:
    """Per-example class probabilities of ``model`` on every test language and (``gxlt=True``) on
    every G-XLT pair set: softmax(logits) (N, C) with the gold labels (N,) per set.

    A G-XLT set that is the very same dataset as a test set (the joined diagonal) is predicted
    once and shared. ``progress(name, examples)`` is called after each set (for a progress bar).
    """
    done: dict[int, SetPredictions] = {}

    def run(name: str, ds: datasets.Dataset) -> SetPredictions:
        if id(ds) not in done:
            logits = predict_logits(
                model, tokenizer, ds, max_length=max_length, batch_size=batch_size, device=device
            )
            done[id(ds)] = SetPredictions.from_logits(
                logits if len(ds) else np.zeros((0, task.num_labels)), np.asarray(column(ds, "label"))
            )
            if progress is not None:
                progress(name, len(ds))
        return done[id(ds)]

    xlt = {lang: run(lang, task.test[lang]) for lang in task.languages}
    pairs = {pair: run(f"{pair[0]}-{pair[1]}", ds) for pair, ds in task.gxlt.items()} if gxlt else {}
    return TaskPredictions(
        xlt=xlt,
        gxlt=pairs,
        task=task.name,
        languages=list(task.languages),
        train_language=task.train_language,
        label_names=list(task.label_names),
    )


def evaluate_task(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskData,
    *,
    max_length: int,
    batch_size: int,
    device: str | torch.device,
    gxlt: bool = True,
    progress: str | None = None,
) -> EvalReport:
    """XLT accuracy of ``model`` on every test language and (``gxlt=True``) on every G-XLT pair set,
    with each set's predicted-class rates (``predict_task(...).report()``); ``progress`` labels a
    progress bar over the examples (None: no bar)."""
    return predict_task_with_progress(
        model,
        tokenizer,
        task,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        gxlt=gxlt,
        progress=progress,
    ).report()


def predict_task_with_progress(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskData,
    *,
    gxlt: bool,
    progress: str | None,
    **kwargs: Any,
) -> TaskPredictions:
    """:func:`predict_task` under the :func:`test_progress` bar labelled ``progress`` (None: no bar);
    ``kwargs``: max_length, batch_size, device."""
    with test_progress(task, gxlt, progress) as bar:
        return predict_task(
            model, tokenizer, task, gxlt=gxlt, progress=lambda name, n: bar.update(n), **kwargs
        )
