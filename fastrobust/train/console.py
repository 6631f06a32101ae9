"""What a run prints and logs: the opening line, per-step TensorBoard scalars, the closing tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastrobust.config import method_label


def banner(cfg: Any, run: Any, sections: list[Any]) -> str:
    """The opening lines: task, model, methods, step budget and batch layout."""
    dist = run.dist
    ds = f", DeepSpeed {cfg.deepspeed.config}" if cfg.deepspeed.config else ""
    return (
        f"fastrobust train: {cfg.name} — task {cfg.task.name} ({len(run.task.train)} train examples, "
        f"languages {', '.join(run.task.languages)}), model {run.model_path}\n"
        f"  {len(sections)} method(s): {', '.join(method_label(m) for m in sections)}; "
        f"{run.total_steps} steps of batch {cfg.optim.batch_size} "
        f"({dist.world_size} process(es) x micro {run.micro} x accum {run.accum}) "
        f"on {dist.device}{ds}"
    )


def log_step_scalars(
    writer: Any,
    step: int,
    losses: list[float],
    *,
    lr: float,
    grad_norm: Any,
    throughput: dict[str, Any],
    sections: dict[str, float],
    step_seconds: float,
    peak_mb: float,
) -> None:
    """TensorBoard scalars of a logged step; ``losses``: the steps since the last log, up to ``step``."""
    for i, v in enumerate(losses):
        writer.add_scalar("train/loss", v, step - len(losses) + i + 1)
    writer.add_scalar("train/lr", lr, step)
    if grad_norm is not None:
        writer.add_scalar("train/grad_norm", float(grad_norm), step)
    writer.add_scalar("throughput/samples_per_s", throughput["samples_per_s"], step)
    writer.add_scalar("throughput/tokens_per_s", throughput["tokens_per_s"], step)
    for k, v in sections.items():
        writer.add_scalar(f"time/{k}_s", v, step)
    writer.add_scalar("time/step_s", step_seconds, step)
    writer.add_scalar("memory/peak_mb", peak_mb, step)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def console_summary(summaries: dict[str, dict[str, Any]], out_dir: Path) -> str:
    """One table per setting (XLT, G-XLT) with the averages per method, and throughput vs baseline."""
    reports = {k: s["_report"] for k, s in summaries.items()}
    first = next(iter(reports.values()))
    langs = list(first.languages)
    parts = []
    rows = [[k, *(_pct(r.xlt.get(lang)) for lang in langs), _pct(r.xlt_avg)] for k, r in reports.items()]
    parts.append(
        "XLT accuracy (%), trained on "
        + str(first.train_language)
        + ":\n"
        + _table(["method", *langs, "avg"], rows)
    )
    if any(r.gxlt for r in reports.values()):
        rows = [
            [k, _pct(r.gxlt_same_lang_avg), _pct(r.gxlt_cross_lang_avg), _pct(r.gxlt_avg), _pct(r.gap)]
            for k, r in reports.items()
        ]
        parts.append(
            f"G-XLT accuracy (%), {len(first.gxlt)} language pairs:\n"
            + _table(["method", "same-lang", "cross-lang", "avg", "gap"], rows)
        )
    base_label = next((k for k, s in summaries.items() if s["kind"] == "baseline"), next(iter(summaries)))
    base = summaries[base_label]["throughput"]["samples_per_s"]
    rows = []
    for k, s in summaries.items():
        t = s["throughput"]
        rows.append(
            [
                k,
                f"{t['samples_per_s']:.1f}",
                f"{t['samples_per_s'] / base:.2f}x" if base else "-",
                f"{t['tokens_per_s']:.0f}",
                f"{t['peak_memory_mb']:.0f}",
                _pct(s["best_dev_accuracy"]),
            ]
        )
    parts.append(
        f"Throughput (relative to {base_label}):\n"
        + _table(["method", "samples/s", f"vs {base_label}", "tokens/s", "peak MiB", "best dev"], rows)
    )
    parts.append(
        f"Files: {out_dir}/comparison.md|json|png; per method {out_dir}/<method>/"
        "{model/, report/, summary.json, tb/, checkpoints/}"
    )
    return "\n\n".join(parts)
