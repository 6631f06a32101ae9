"""``train(config)``: fine-tune every method of a config, select on English dev, evaluate XLT + G-XLT.

For each method section (same initial model, same data order):

1. build the HF sequence classifier (seeded, so every method starts from the same weights),
   ``method.setup(model)``, then either a plain torch AdamW + transformers scheduler, or a
   DeepSpeed engine when ``deepspeed.config`` is set (its ``"auto"`` fields filled from ``optim``);
2. loop over optimizer steps; each step runs ``A`` micro-batches through
   ``method.training_step(model, batch, backward, timer)``; then clipping, optimizer and
   scheduler steps (the engine does these under DeepSpeed);
3. evaluate English dev every ``eval.every_steps`` (or every epoch) and at the end, keeping the
   best parameters on CPU (gathered from ZeRO-3 shards; rank 0 holds them);
4. checkpoint atomically every ``output.checkpoint_every`` steps and at the end (``--resume``
   continues from the newest complete one, bit-for-bit on the same hardware);
5. load the best parameters, evaluate XLT and G-XLT, save ``model/`` (safetensors + tokenizer +
   ``fastrobust.json``), ``report/`` and ``summary.json``.

Then ``write_comparison`` over the methods and a short console summary (rank 0 only).

Where each part lives: :mod:`.run` (config resolution, batch layout, what the methods share),
:mod:`.loop` (the step loop of one method), :mod:`.engine` (optimizer, precision, backward — the
adapter the ``transformers.Trainer`` integration shares), :mod:`.selection` (English-dev
selection), :mod:`.resume` (checkpoint save/restore), :mod:`.final` (test evaluation and saving),
:mod:`.console` (what is printed and logged). This module is the entry point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastrobust.config import Config, method_label
from fastrobust.errors import ConfigError
from fastrobust.train.console import banner, console_summary
from fastrobust.train.distributed import init_distributed
from fastrobust.train.loop import MODEL_INPUTS, MethodTrainer
from fastrobust.train.resume import STATE_VERSION
from fastrobust.train.run import RunContext, batch_layout, log, resolve_config, write_json

# Names other modules and tests import from here (the parts live in the modules named above).
__all__ = [
    "MODEL_INPUTS",
    "STATE_VERSION",
    "MethodTrainer",
    "RunContext",
    "batch_layout",
    "console_summary",
    "resolve_config",
    "train",
]


def train(
    config: Config | str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    methods: Sequence[str] | None = None,
    resume: bool = False,
    deepspeed: str | None = None,
) -> dict[str, Any]:
    """Fine-tunes every (selected) method of ``config`` and evaluates it; see the module docstring.

    Args:
        config: a ``Config``, a YAML path, or None for the packaged demo.
        overrides: ``key=value`` strings (as ``--set``), applied on top of ``config``.
        methods: labels of the method sections to run (default: all).
        resume: continue every method from its newest complete checkpoint.
        deepspeed: a DeepSpeed JSON (overrides ``deepspeed.config``).

    Returns ``{"output_dir", "methods": {label: summary dict}, "comparison": markdown}``; on ranks
    other than 0 the summaries are empty dicts.
    """
    import datasets
    from transformers.utils import logging as hf_logging

    # Our tqdm bar is the progress display; datasets' per-map bars and transformers' weight
    # loading/saving bars would interleave with it.
    bars = datasets.utils.logging.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        return _train(config, overrides, methods=methods, resume=resume, deepspeed=deepspeed)
    finally:
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            hf_logging.enable_progress_bar()


def _train(
    config: Config | str | Path | None,
    overrides: Sequence[str],
    *,
    methods: Sequence[str] | None,
    resume: bool,
    deepspeed: str | None,
) -> dict[str, Any]:
    cfg = resolve_config(config, overrides)
    if deepspeed is not None:
        cfg.deepspeed.config = deepspeed
    sections = list(cfg.methods)
    if methods:
        labels = [method_label(m) for m in sections]
        unknown = [m for m in methods if m not in labels]
        if unknown:
            raise ConfigError(
                f"--method {', '.join(unknown)}: no such method section; the config has {labels}"
            )
        sections = [m for m in sections if method_label(m) in methods]
    dist = init_distributed(use_deepspeed=bool(cfg.deepspeed.config))
    run = RunContext(cfg, dist, resume)
    from fastrobust.methods import build_method

    for mcfg in sections:  # fail before any training if a section cannot be built (e.g. no synonyms)
        build_method(mcfg, task_synonyms=run.task.synonyms)
    out_dir = run.out_dir
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log(dist, banner(cfg, run, sections))
    summaries: dict[str, dict[str, Any]] = {}
    for mcfg in sections:
        trainer = MethodTrainer(run, mcfg)
        try:
            summaries[trainer.label] = trainer.train()
        finally:
            trainer.close()
    result: dict[str, Any] = {"output_dir": str(out_dir), "methods": {}, "comparison": ""}
    if dist.is_main:
        from fastrobust.evaluate import write_comparison

        reports = {k: s["_report"] for k, s in summaries.items()}
        result["comparison"] = write_comparison(reports, out_dir)
        text = console_summary(summaries, out_dir)
        print("\n" + text, flush=True)
        result["methods"] = {
            k: {kk: v for kk, v in s.items() if kk != "_report"} for k, s in summaries.items()
        }
        result["reports"] = reports
        write_json(
            out_dir / "summary.json",
            {
                "name": cfg.name,
                "config": cfg.model_dump(mode="json"),
                "methods": {
                    k: {kk: v for kk, v in s.items() if kk not in ("losses", "dev_history")}
                    for k, s in result["methods"].items()
                },
            },
        )
    dist.barrier()
    return result
