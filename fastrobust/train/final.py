"""After training one method: load the best-on-dev parameters, test XLT and G-XLT, save the model,
the report and ``summary.json`` (rank 0; the other ranks wait at the closing barrier).

Files under ``<output.dir>/<label>/``: ``model/`` (safetensors, config, tokenizer,
``fastrobust.json`` — the task, max_length and method section needed to evaluate it again — and
the model card ``README.md``),
``report/`` (:func:`fastrobust.evaluate.write_report`) and ``summary.json``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from fastrobust.train.meter import peak_memory_mb
from fastrobust.train.model_card import command_line, render_model_card, resolved_scales, write_model_card
from fastrobust.train.run import write_json


def eval_model(t: Any) -> torch.nn.Module:
    """Rank 0: a plain HF model holding the best parameters of trainer ``t``."""
    eng = t.eng
    if eng.engine is None:
        model = eng.module
    else:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_config(eng.module.config)
        model.to(t.device)
    if t.selection.best_state is not None:
        model.load_state_dict(t.selection.best_state, strict=True)
    model.eval()
    return model


def save_model_folder(t: Any, model: torch.nn.Module, model_dir: Any, report: Any) -> None:
    """The model folder: HF weights + config, the tokenizer, ``fastrobust.json`` and the model card."""
    cfg = t.cfg
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(model_dir))
    t.run.tokenizer.save_pretrained(str(model_dir))
    write_json(
        model_dir / "fastrobust.json",
        {
            "task": cfg.task.model_dump(mode="json"),
            "max_length": cfg.model.max_length,
            "method": t.mcfg.model_dump(mode="json"),
        },
    )
    write_model_card(model_dir, model_card(t, report))


def model_card(t: Any, report: Any) -> str:
    """The README.md of trainer ``t``'s model folder (see :mod:`.model_card`)."""
    import fastrobust

    cfg, run, sel = t.cfg, t.run, t.selection
    training = {
        "train examples": len(run.task.train),
        "optimizer steps": run.total_steps,
        "epochs": round(run.total_steps / run.steps_per_epoch, 4),
        "batch size": cfg.optim.batch_size,
        "learning rate": cfg.optim.learning_rate,
        "max length": cfg.model.max_length,
        "precision": cfg.model.precision,
        "processes": t.dist.world_size,
        "seed": cfg.seed,
        "best dev accuracy (%)": f"{100 * sel.best_acc:.2f} at step {sel.best_step}",
    }
    return render_model_card(
        title=f"{cfg.name} / {t.label}",
        base_model=run.model_path,
        task=run.task,
        task_cfg=cfg.task,
        method_section=t.mcfg.model_dump(mode="json"),
        scales=resolved_scales(t.method),
        training=training,
        report=report,
        version=fastrobust.__version__,
        command=command_line(),
        config=cfg.model_dump(mode="json"),
    )


def finish(t: Any, wall_seconds: float, eval_seconds: float) -> dict[str, Any]:
    """Final evaluation and files of trainer ``t``; its summary on rank 0 (``{}`` elsewhere).

    The summary also carries the evaluation report object under ``"_report"`` (not written to
    ``summary.json``), for the comparison across methods.
    """
    from fastrobust.evaluate import evaluate_task, write_report

    cfg, dist, run, eng = t.cfg, t.dist, t.run, t.eng
    summary: dict[str, Any] = {}
    if dist.is_main:
        model = eval_model(t)
        t0 = time.perf_counter()
        with eng.autocast():
            report = evaluate_task(
                model,
                run.tokenizer,
                run.task,
                max_length=cfg.model.max_length,
                batch_size=cfg.eval.batch_size,
                device=t.device,
                gxlt=cfg.eval.gxlt and cfg.task.gxlt,
            )
        test_seconds = time.perf_counter() - t0
        report_dir = t.dir / "report"
        write_report(report, report_dir, title=f"{cfg.name} / {t.label}")
        model_dir = t.dir / "model"
        if cfg.output.save_model:
            save_model_folder(t, model, model_dir, report)
        throughput = t.meter.summary()
        throughput["peak_memory_mb"] = peak_memory_mb(t.device)
        throughput["peak_memory_kind"] = "cuda_max_allocated" if t.device.type == "cuda" else "cpu_peak_rss"
        sel = t.selection
        summary = {
            "label": t.label,
            "kind": t.mcfg.kind,
            "method": t.mcfg.model_dump(mode="json"),
            "model": run.model_path,
            "task": cfg.task.name,
            "precision": eng.precision,
            "world_size": dist.world_size,
            "device": str(t.device),
            "deepspeed": (
                {"config": cfg.deepspeed.config, "zero_stage": eng.zero_stage}
                if eng.engine is not None
                else None
            ),
            "steps": run.total_steps,
            "steps_per_epoch": run.steps_per_epoch,
            "epochs": run.total_steps / run.steps_per_epoch,
            "batch_size": cfg.optim.batch_size,
            "micro_batch_size": run.micro,
            "grad_accum": run.accum,
            "best_dev_accuracy": sel.best_acc,
            "best_step": sel.best_step,
            "dev_history": sel.history,
            "final_loss": t.losses[-1] if t.losses else None,
            "losses": t.losses,
            "throughput": throughput,
            "averages": report.averages(),
            "xlt": dict(report.xlt),
            "resumed_from_step": t.resumed_from,
            "wall_seconds": wall_seconds,
            "eval_and_checkpoint_seconds": eval_seconds,
            "test_eval_seconds": test_seconds,
            "files": {
                "model": str(model_dir) if cfg.output.save_model else None,
                "report": str(report_dir),
                "tensorboard": str(t.dir / "tb") if cfg.output.tensorboard else None,
                "checkpoints": str(t.ckpt_root),
            },
        }
        write_json(t.dir / "summary.json", summary)
        summary["_report"] = report
    dist.barrier()
    return summary
