"""Evaluation: XLT accuracy per language, the G-XLT matrix, their averages, reports and statistics.

Public API::

    evaluate_task(model, tokenizer, task, *, max_length, batch_size, device, gxlt=True) -> EvalReport
    predict_task(model, tokenizer, task, ...) -> TaskPredictions      # per-example probabilities
    evaluate_dev(model, tokenizer, dataset, *, max_length, batch_size, device) -> float
    evaluate_predictions(task, predict_fn, gxlt=True) -> EvalReport   # any predictor
    EvalReport (to_dict / from_dict, averages), accuracy(predictions, labels)
    TaskPredictions / SetPredictions (per-example probabilities and labels; save / load .npz)
    RunResult, compare(runs, baseline=..., metric=...) -> Comparison   # mean ± sd over seeds, CIs
    compare_metrics(runs) -> Comparison with views "calibrated" and "auc"
    roc_auc(probs, labels), expected_calibration_error(probs, labels)   # threshold-free quality
    fit_offsets(logits, reference_rates) -> OffsetFit, apply_offsets(logits, offsets)  # label-free
    classification_metrics(logits, labels, reference_rates=None) -> dict   # all of one set
    write_report(report, out_dir), write_comparison(comparison or {label: report}, out_dir) -> markdown

Names are imported on first use, so that the statistics and reports (numpy only) load without
torch and datasets (``fastrobust compare`` starts in a fraction of a second); matplotlib is
imported only when a figure is written.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

_LAZY = {
    "EvalReport": "fastrobust.evaluate.metrics",
    "accuracy": "fastrobust.evaluate.metrics",
    "SetPredictions": "fastrobust.evaluate.predictions",
    "TaskPredictions": "fastrobust.evaluate.predictions",
    "Comparison": "fastrobust.evaluate.stats",
    "Interval": "fastrobust.evaluate.stats",
    "RunResult": "fastrobust.evaluate.stats",
    "compare": "fastrobust.evaluate.stats",
    "compare_metrics": "fastrobust.evaluate.stats",
    "fit_offsets": "fastrobust.evaluate.calibration",
    "classification_metrics": "fastrobust.evaluate.calibration",
    "apply_offsets": "fastrobust.evaluate.calibration",
    "roc_auc": "fastrobust.evaluate.threshold_free",
    "expected_calibration_error": "fastrobust.evaluate.threshold_free",
    "evaluate_dev": "fastrobust.evaluate.predict",
    "evaluate_predictions": "fastrobust.evaluate.predict",
    "evaluate_task": "fastrobust.evaluate.predict",
    "predict": "fastrobust.evaluate.predict",
    "predict_logits": "fastrobust.evaluate.predict",
    "predict_task": "fastrobust.evaluate.predict",
    "comparison_markdown": "fastrobust.evaluate.report",
    "comparison_text": "fastrobust.evaluate.report",
    "gxlt_markdown": "fastrobust.evaluate.report",
    "report_markdown": "fastrobust.evaluate.report",
    "write_comparison": "fastrobust.evaluate.report",
    "write_report": "fastrobust.evaluate.report",
    "xlt_markdown": "fastrobust.evaluate.report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastrobust.evaluate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    # Importing the submodule ``predict`` binds the package attribute ``predict`` to that module,
    # which would then shadow the function of the same name (``__getattr__`` is not consulted for
    # attributes that exist): put the function back.
    shadowed = globals().get("predict")
    if isinstance(shadowed, types.ModuleType) and shadowed.__name__ == _LAZY["predict"]:
        globals()["predict"] = shadowed.predict
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
