"""What a run prints and logs: the opening line, per-step TensorBoard scalars, the closing tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastrobust.config import method_label
from fastrobust.evaluate.report import comparison_text, text_table

if TYPE_CHECKING:  # annotations only
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from fastrobust.config import Config
    from fastrobust.evaluate.comparison import Comparison
    from fastrobust.training.run import RunContext


def banner(cfg: Config, run: RunContext, sections: list[Any]) -> str:
    """The opening lines: task, model, methods, step budget and batch layout."""
    dist = run.dist
    ds = f", DeepSpeed {cfg.deepspeed.config}" if cfg.deepspeed.config else ""
    seeds = f"seeds {', '.join(map(str, cfg.seeds))}" if cfg.seeds is not None else f"seed {cfg.seed}"
    return (
        f"fastrobust train: {cfg.name} — task {cfg.task.name} ({len(run.task.train)} train examples, "
        f"languages {', '.join(run.task.languages)}), model {run.model_path}\n"
        f"  {len(sections)} method(s): {', '.join(method_label(m) for m in sections)}; {seeds}; "
        f"{run.total_steps} steps of batch {cfg.optim.batch_size} "
        f"({dist.world_size} process(es) x micro {run.micro} x accum {run.accum}) "
        f"on {dist.device}{ds}"
    )


def log_step_scalars(
    writer: SummaryWriter,
    step: int,
    losses: list[float],
    *,
    lr: float,
    grad_norm: torch.Tensor | float | None,
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
    return "-" if x is None else f"{round(100 * x, 9):.1f}"  # as the reports round (report._fmt)


def _table(header: list[str], rows: list[list[str]]) -> str:
    return text_table(header, rows)


def console_summary(
    summaries: list[dict[str, Any]], comparison: Comparison, out_dir: Path, cfg: Config
) -> str:
    """The closing text: the comparison (mean ± sd over seeds, differences to the baseline with
    intervals; :func:`fastrobust.evaluate.report.comparison_text`), each method's throughput
    relative to the baseline (mean over the runs, those ``--resume`` read back included, as their
    summaries measured them), and the files written."""
    parts = [comparison_text(comparison)]
    # runs --resume read back (trained by an earlier call) count with their own summary's figures
    measured = [s for s in summaries if isinstance(s.get("throughput"), dict)]
    earlier = sum(1 for s in measured if s.get("skipped"))
    by_label: dict[str, list[dict[str, Any]]] = {}
    for s in measured:
        by_label.setdefault(s["label"], []).append(s)
    if by_label:
        base_label = next(
            (k for k, ss in by_label.items() if ss[0]["kind"] == "baseline"), next(iter(by_label))
        )

        def mean(ss: list[dict[str, Any]], key: str) -> float:
            return sum(float(s["throughput"][key]) for s in ss) / len(ss)

        base = mean(by_label[base_label], "samples_per_s")
        rows = []
        for k, ss in by_label.items():
            sps = mean(ss, "samples_per_s")
            dev = sum(s["best_dev_accuracy"] for s in ss) / len(ss)
            peak = max(s["throughput"]["peak_memory_mb"] for s in ss)
            rel = f"{sps / base:.2f}x" if base else "-"
            tokens = f"{mean(ss, 'tokens_per_s'):.0f}"
            rows.append([k, str(len(ss)), f"{sps:.1f}", rel, tokens, f"{peak:.0f}", _pct(dev)])
        parts.append(
            f"Throughput (relative to {base_label}; mean over runs"
            + (f", {earlier} of {len(measured)} trained by an earlier call" if earlier else "")
            + "):\n"
            + _table(
                ["method", "runs", "samples/s", f"vs {base_label}", "tokens/s", "peak MiB", "best dev"], rows
            )
            + compile_note(by_label)
        )
    parts.append(files_line(summaries, out_dir, multi_seed=cfg.seeds is not None))
    return "\n\n".join(parts)


def compile_note(by_label: dict[str, list[dict[str, Any]]]) -> str:
    """Under ``model.compile``: each method's first step (it compiles), which the throughput leaves out."""
    spent = {
        label: [
            s["compile"]["first_step_seconds"]
            for s in ss
            if (s.get("compile") or {}).get("first_step_seconds")
        ]
        for label, ss in by_label.items()
    }
    spent = {label: sum(v) / len(v) for label, v in spent.items() if v}
    if not spent:
        return ""
    each = ", ".join(f"{label} {v:.1f} s" for label, v in spent.items())
    return f"\nCompiling (the first step of a run, left out of the throughput; mean over runs): {each}"


def files_line(summaries: list[dict[str, Any]], out_dir: Path, *, multi_seed: bool = False) -> str:
    """``Files: ...`` naming only what the runs wrote (model/ only if saved, tb/ only if logged...)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for s in summaries:
        files = s.get("files") or {}
        items = ["report/", "summary.json"]
        items += [name for key, name in MAYBE_WRITTEN if files.get(key)]
        labels = groups.setdefault(tuple(items), [])
        if s["label"] not in labels:
            labels.append(s["label"])
    run = "<method>/seed-<k>" if multi_seed else "<method>"
    seed = "/seed-<k>" if multi_seed else ""
    if len(groups) == 1:
        per_run = f"per run {out_dir}/{run}/{{{', '.join(next(iter(groups)))}}}"
    else:
        per_run = "; ".join(
            f"{out_dir}/{{{','.join(labels)}}}{seed}/{{{', '.join(items)}}}"
            for items, labels in groups.items()
        )
    return f"Files: {out_dir}/comparison.md|json|csv|png; {per_run}"


MAYBE_WRITTEN = (("model", "model/"), ("tensorboard", "tb/"), ("checkpoints", "checkpoints/"))
