"""After training one method: load the best-on-dev parameters, test XLT and G-XLT, save the model,
the report and ``summary.json`` (rank 0; the other ranks wait at the closing barrier).

Files under the run's folder (``<output.dir>/<label>/``, or ``.../<label>/seed-<k>/`` when the
config lists ``seeds``): ``model/`` (safetensors, config, tokenizer, ``fastrobust.json`` — the
task, max_length and method section needed to evaluate it again — and the model card
``README.md``), ``report/`` (:func:`fastrobust.evaluate.write_report`, plus ``predictions.npz``:
every test example's class probabilities and label, which the comparison's statistics resample)
and ``summary.json``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import fastrobust
from fastrobust.errors import OutputError
from fastrobust.evaluate import RunResult, write_report
from fastrobust.evaluate.predictions import FILE_NAME, TaskPredictions
from fastrobust.evaluate.report import EvalReport
from fastrobust.fileio import (
    as_os_error,
    atomic_dir,
    atomic_write_json,
    describe_os_error,
    json_text,
    writing,
)
from fastrobust.training import checkpoint as ckpt
from fastrobust.training.averaging import averaged_label
from fastrobust.training.compiled import compiled_graphs, eager
from fastrobust.training.lora import is_peft_model, lora_summary, rebuild
from fastrobust.training.meter import peak_memory_mb
from fastrobust.training.model_card import command_line, render_model_card, resolved_scales, write_model_card
from fastrobust.training.run import cpu_state

if TYPE_CHECKING:  # the loop imports this module: a runtime import would be a circle
    from fastrobust.config import ModelConfig
    from fastrobust.training.engine import TrainEngine
    from fastrobust.training.state import FinishingRun


@dataclass
class FinishedRun:
    """One finished run as the trainer returns it (rank 0): ``summary`` is what its
    ``summary.json`` holds (plus ``"skipped": True`` when ``--resume`` read it back instead of
    training it); ``report`` and ``predictions`` (every test example's class probabilities) are
    what the comparison's statistics use."""

    summary: dict[str, Any]
    report: EvalReport
    predictions: TaskPredictions | None = None
    averaged: FinishedRun | None = None  # the same run's weight-averaged model (``average:``)

    def with_averaged(self) -> list[FinishedRun]:
        """This run and, when it was averaged, its averaged evaluation (``<label>+avg``)."""
        return [self] if self.averaged is None else [self, self.averaged]

    @property
    def label(self) -> str:
        return str(self.summary["label"])

    def result(self) -> RunResult:
        s = self.summary
        run = RunResult(s["label"], s["seed"], self.report, self.predictions, kind=s["kind"])
        run.fingerprint = s.get("fingerprint")
        return run


def eval_model(
    eng: TrainEngine, device: torch.device, best_state: dict[str, torch.Tensor] | None
) -> torch.nn.Module:
    """Rank 0: a plain HF model on ``device`` holding ``best_state`` (the selected parameters;
    None keeps the engine's own) of the training engine ``eng``."""
    if eng.engine is None:
        model = eng.module
    else:
        from transformers import AutoModelForSequenceClassification  # ~1.3 s: not with this module

        if is_peft_model(eng.module):
            model = rebuild(eng.module, device)
        else:
            model = AutoModelForSequenceClassification.from_config(eng.module.config)
            model.to(device)
    if best_state is not None:
        model.load_state_dict(best_state, strict=True)
    model.eval()
    return model


def save_model_folder(
    t: FinishingRun,
    model: torch.nn.Module,
    model_dir: Path,
    report: EvalReport,
    averaged: dict[str, Any] | None = None,
) -> None:
    """The model folder: HF weights + config, the tokenizer, ``fastrobust.json`` and the model card,
    written into a temporary folder that replaces ``model_dir`` only once complete (a full disk
    leaves no half-written model)."""
    cfg = t.cfg
    info = {
        "task": cfg.task.model_dump(mode="json"),
        "max_length": cfg.model.max_length,
        "method": t.mcfg.model_dump(mode="json"),
    }
    if is_peft_model(model):
        info["lora"] = lora_summary(model)
    if averaged is not None:
        info["averaged"] = averaged
    try:
        with atomic_dir(model_dir) as tmp:
            # a PeftModel writes its adapter (adapter_model.safetensors + adapter_config.json) only
            model.save_pretrained(str(tmp))
            t.run.tokenizer.save_pretrained(str(tmp))
            atomic_write_json(tmp / "fastrobust.json", info)
            write_model_card(tmp, model_card(t, report, averaged))
    except Exception as exc:  # name the folder the user will look for, not the removed temporary one
        err = as_os_error(exc, model_dir)  # safetensors reports a full disk as its own error
        if err is None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(model_dir)) from exc


def rescue(payload: dict[str, Any], places: list[Path]) -> Path | None:
    """Writes ``payload`` (JSON) to the first of ``places`` where it fits; None if nowhere."""
    for place in places:
        try:
            atomic_write_json(place, payload)
            return place
        except OSError:
            continue
    return None


def model_card(t: FinishingRun, report: EvalReport, averaged: dict[str, Any] | None = None) -> str:
    """The README.md of trainer ``t``'s model folder (see :mod:`.model_card`)."""
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
    if averaged is not None:
        training["weights"] = (
            f"uniform average of {averaged['snapshots']} snapshots of the trainable weights "
            f"(steps {averaged['first_step']}-{averaged['last_step']}, every {averaged['every_steps']}); "
            f"English dev accuracy {100 * averaged['dev_accuracy']:.2f}%"
        )
        del training["best dev accuracy (%)"]
    elif t.averager is not None:
        training["weights"] = (
            f"the best English-dev checkpoint, not averaged (the averaged model is {averaged_label(t.label)})"
        )
    if cfg.model.compile:
        training["compiled"] = f"torch.compile ({cfg.model.compile_backend}, mode {cfg.model.compile_mode})"
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
        adapter=lora_summary(t.eng.module) if is_peft_model(t.eng.module) else None,
    )


def finish(t: FinishingRun, wall_seconds: float, eval_seconds: float) -> FinishedRun | None:
    """Final evaluation and files of trainer ``t``; the finished run on rank 0 (None elsewhere).

    Written in the order of their value: ``report/``, ``model/``, then ``summary.json`` (whose
    ``"status": "complete"`` marks the method finished). If a write fails (disk full, permissions),
    the summary and the report are rescued as JSON to the first place they fit (the method folder,
    ``output.dir``, the working directory, the temporary folder) and OutputError names the path.
    """
    cfg, dist, run, eng = t.cfg, t.dist, t.run, t.eng
    finished: FinishedRun | None = None
    problem = ""
    if dist.is_main:
        final_state = cpu_state(eng.module) if t.averager is not None else None
        model = eval_model(t.eng, t.device, t.selection.best_state)
        t0, c0 = time.perf_counter(), time.process_time()
        predictions = test_predictions(t, model, t.label)
        test_seconds = time.perf_counter() - t0
        test_cpu = time.process_time() - c0
        report = predictions.report()
        report_dir = t.dir / "report"
        model_dir = t.dir / "model"
        summary = build_summary(t, report, wall_seconds, eval_seconds, test_seconds, report_dir, model_dir)
        summary["test_eval_cpu_seconds"] = test_cpu
        try:
            seed_part = f" / seed {t.seed}" if cfg.seeds is not None else ""
            with writing(report_dir):  # a failed write names its file, or at least this folder
                write_report(report, report_dir, title=f"{cfg.name} / {t.label}{seed_part}")
            with writing(report_dir / FILE_NAME):
                predictions.save(report_dir / FILE_NAME)
            if cfg.output.save_model:
                save_model_folder(t, model, model_dir, report)
            averaged = None
            if final_state is not None:  # before the summary: a complete summary means both are there
                with writing(t.averaged_dir()):
                    averaged = finish_averaged(t, final_state, summary)
                summary["averaged"] = averaged.summary["averaged"]
            atomic_write_json(t.dir / "summary.json", summary)
        except OSError as exc:
            payload = {
                **summary,
                "status": f"incomplete: {describe_os_error(exc)}",
                "report": report.to_dict(),
            }
            stem = t.label if cfg.seeds is None else f"{t.label}-seed-{t.seed}"
            places = [
                t.dir / "summary.json",
                run.out_dir / f"{stem}-summary.json",
                Path.cwd() / f"fastrobust-{stem}-summary.json",
                Path(tempfile.gettempdir()) / f"fastrobust-{stem}-summary.json",
            ]
            where = rescue(payload, places)
            kept = (
                f"the results were saved to {where}"
                if where
                else "the results could not be saved anywhere; they follow on stdout"
            )
            if where is None:
                print(json_text(payload), flush=True)
            problem = f"method {t.label}: {describe_os_error(exc)}; {kept}"
        finished = FinishedRun(summary, report, predictions, averaged if not problem else None)
    failed = dist.broadcast_float(1.0 if problem else 0.0)
    dist.barrier()
    if failed:
        raise OutputError(problem or f"method {t.label}: rank 0 could not write the results")
    return finished


def test_predictions(t: FinishingRun, model: torch.nn.Module, name: str) -> TaskPredictions:
    """Rank 0: ``model``'s predictions on every XLT and G-XLT test set of the run's task."""
    from fastrobust.evaluate.predict import predict_task_with_progress  # datasets: not with this module

    cfg, run = t.cfg, t.run
    with t.eng.autocast(), eager(cfg.model.compile):
        return predict_task_with_progress(
            model,
            run.tokenizer,
            run.task,
            max_length=cfg.model.max_length,
            batch_size=cfg.eval.batch_size,
            device=t.device,
            gxlt=cfg.eval.gxlt and cfg.task.gxlt,
            progress=f"{name} test" if run.progress_bar else None,
        )


def finish_averaged(
    t: FinishingRun, final_state: dict[str, torch.Tensor], summary: dict[str, Any]
) -> FinishedRun:
    """Rank 0: the weight-averaged model of trainer ``t`` (the final weights ``final_state`` with
    the trainable ones averaged) evaluated on English dev and every test set, and written as the run
    ``<label>+avg`` beside the trained one (report, predictions, model when saved, summary).
    ``summary``: the trained run's summary, which the averaged one copies and updates."""
    from fastrobust.evaluate import evaluate_dev  # datasets: not with this module

    cfg, run, avg = t.cfg, t.run, t.averager
    label = averaged_label(t.label)
    folder = t.averaged_dir()
    model = eval_model(t.eng, t.device, avg.averaged_state(final_state))
    t0 = time.perf_counter()
    with t.eng.autocast(), eager(cfg.model.compile):
        dev = evaluate_dev(
            model,
            run.tokenizer,
            run.task.dev[run.task.train_language],
            max_length=cfg.model.max_length,
            batch_size=cfg.eval.batch_size,
            device=t.device,
        )
    dev_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictions = test_predictions(t, model, label)
    report = predictions.report()
    described = {**avg.describe(), "label": label, "of": t.label, "dev_accuracy": dev}
    out = {
        **summary,
        "label": label,
        "best_dev_accuracy": dev,
        "best_step": None,
        "averaged": described,
        "averages": report.averages(),
        "xlt": dict(report.xlt),
        "test_eval_seconds": time.perf_counter() - t0,
        "averaged_dev_eval_seconds": dev_seconds,
    }
    out["files"] = {
        "model": str(folder / "model") if cfg.output.save_model else None,
        "report": str(folder / "report"),
        "predictions": str(folder / "report" / FILE_NAME),
    }
    seed_part = f" / seed {t.seed}" if cfg.seeds is not None else ""
    write_report(report, folder / "report", title=f"{cfg.name} / {label}{seed_part}")
    predictions.save(folder / "report" / FILE_NAME)
    if cfg.output.save_model:
        save_model_folder(t, model, folder / "model", report, averaged=described)
    atomic_write_json(folder / "summary.json", out)
    return FinishedRun(out, report, predictions)


def build_summary(
    t: FinishingRun,
    report: EvalReport,
    wall_seconds: float,
    eval_seconds: float,
    test_seconds: float,
    report_dir: Path,
    model_dir: Path,
) -> dict[str, Any]:
    """The ``summary.json`` of trainer ``t`` (its ``files`` name only what this run writes)."""
    cfg, dist, run, eng = t.cfg, t.dist, t.run, t.eng
    throughput = t.meter.summary()
    throughput["peak_memory_mb"] = peak_memory_mb(t.device)
    throughput["peak_memory_kind"] = "cuda_max_allocated" if t.device.type == "cuda" else "cpu_peak_rss"
    sel = t.selection
    checkpoints = cfg.output.keep_finished_checkpoints and (
        cfg.output.checkpoint_every is not None or bool(ckpt.complete_checkpoints(t.ckpt_root))
    )
    return {
        "status": "complete",
        "label": t.label,
        "seed": t.seed,
        "fingerprint": t.fingerprint,
        "kind": t.mcfg.kind,
        "method": t.mcfg.model_dump(mode="json"),
        "model": run.model_path,
        "task": cfg.task.name,
        "precision": eng.precision,
        "world_size": dist.world_size,
        "device": str(t.device),
        "deepspeed": (
            {"config": cfg.deepspeed.config, "zero_stage": eng.zero_stage} if eng.engine is not None else None
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
        "skipped_nonfinite_steps": t.guard.skipped if t.guard is not None else 0,
        "truncated_train_examples": t.truncated,
        "throughput": throughput,
        "averages": report.averages(),
        "xlt": dict(report.xlt),
        "resumed_from_step": t.resumed_from,
        "lora": lora_summary(eng.module) if is_peft_model(eng.module) else None,
        "compile": compile_summary(t.cfg.model, t.graphs, t.meter.warmup_seconds),
        "wall_seconds": wall_seconds,
        "eval_and_checkpoint_seconds": eval_seconds,
        "test_eval_seconds": test_seconds,
        "dev_eval_seconds": sel.seconds,
        "dev_eval_cpu_seconds": sel.cpu_seconds,
        "files": {
            "model": str(model_dir) if cfg.output.save_model else None,
            "report": str(report_dir),
            "predictions": str(report_dir / FILE_NAME),
            "tensorboard": str(t.dir / "tb") if cfg.output.tensorboard else None,
            "checkpoints": str(t.ckpt_root) if checkpoints else None,
        },
    }


def compile_summary(
    model_cfg: ModelConfig, graphs: list[int], warmup_seconds: float = 0.0
) -> dict[str, Any] | None:
    """``model.compile``: backend, mode and the graphs Dynamo compiled for the training forward —
    in the first step (``graphs``) and in every later one (``recompiles``; 0 when the dynamic
    sequence length worked) — and the seconds of that first step (``first_step_seconds``), which
    the throughput leaves out. None when the run was not compiled. ``model_cfg``: the config's
    ``model`` section; ``graphs``: Dynamo's graph count before the first step and after it."""
    if not model_cfg.compile:
        return None
    before, warm = (graphs + [compiled_graphs()] * 2)[:2]
    return {
        "backend": model_cfg.compile_backend,
        "mode": model_cfg.compile_mode,
        "graphs": warm - before,
        "recompiles": compiled_graphs() - warm,
        "first_step_seconds": warmup_seconds,  # compiling: left out of the throughput
    }
