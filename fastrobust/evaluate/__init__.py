"""Evaluation: XLT accuracy per language, the G-XLT matrix, their averages, and reports.

Public API::

    evaluate_task(model, tokenizer, task, *, max_length, batch_size, device, gxlt=True) -> EvalReport
    evaluate_dev(model, tokenizer, dataset, *, max_length, batch_size, device) -> float
    evaluate_predictions(task, predict_fn, gxlt=True) -> EvalReport   # any predictor
    EvalReport (to_dict / from_dict, averages), accuracy(predictions, labels)
    write_report(report, out_dir), write_comparison(reports, out_dir) -> markdown

matplotlib is imported only when a figure is written.
"""

from fastrobust.evaluate.metrics import EvalReport, accuracy
from fastrobust.evaluate.predict import (
    evaluate_dev,
    evaluate_predictions,
    evaluate_task,
    predict,
    predict_logits,
)
from fastrobust.evaluate.report import (
    comparison_markdown,
    gxlt_markdown,
    report_markdown,
    write_comparison,
    write_report,
    xlt_markdown,
)

__all__ = [
    "EvalReport",
    "accuracy",
    "comparison_markdown",
    "evaluate_dev",
    "evaluate_predictions",
    "evaluate_task",
    "gxlt_markdown",
    "predict",
    "predict_logits",
    "report_markdown",
    "write_comparison",
    "write_report",
    "xlt_markdown",
]
