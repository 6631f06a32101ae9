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

With ``seeds: [s1, s2, ...]`` (or ``--seeds``) every method is trained once per seed, seed by seed
(all methods of s1, then of s2, ...), each run in ``<method>/seed-<k>/``; ``--resume`` skips the
runs that already finished with the same config and resumes the first unfinished one from its
checkpoint. Then ``write_comparison`` over every finished run in the output folder (the methods
and seeds of this call, merged with those an earlier call left there): mean ± sd over seeds and
paired bootstrap intervals against the baseline (:mod:`fastrobust.evaluate.stats`), and a console
summary (rank 0 only).

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
from fastrobust.errors import DivergenceError, FastrobustError, OutputError
from fastrobust.evaluate import compare_metrics, write_comparison
from fastrobust.evaluate.runs import load_runs, seed_dir_name
from fastrobust.fileio import atomic_write_json, describe_os_error, writing
from fastrobust.progress import library_bars_off
from fastrobust.training.averaging import check_supported
from fastrobust.training.call import apply_call_arguments
from fastrobust.training.console import banner, console_summary
from fastrobust.training.distributed import init_distributed
from fastrobust.training.ds_config import load_deepspeed_json, zero_stage
from fastrobust.training.final import FinishedRun
from fastrobust.training.lock import output_lock
from fastrobust.training.loop import MODEL_INPUTS, MethodTrainer
from fastrobust.training.parallel import parallel_workers, train_parallel
from fastrobust.training.preflight import check_output_dir
from fastrobust.training.resume import STATE_VERSION, skip_finished
from fastrobust.training.run import RunContext, batch_layout, log, resolve_config

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
    seeds: Sequence[int] | None = None,
    parallel: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tunes every (selected) method of ``config`` and evaluates it; see the module docstring.

    Args:
        config: a ``Config``, a YAML path, or None for the packaged demo.
        overrides: ``key=value`` strings (as ``--set``), applied on top of ``config``.
        methods: labels of the method sections to run (default: all).
        resume: continue every method from its newest complete checkpoint (and skip finished
            runs of a multi-seed config).
        deepspeed: a DeepSpeed JSON (overrides ``deepspeed.config``).
        seeds: train every method once per seed (overrides ``seed`` and ``seeds`` of the config).
        parallel: train up to N runs at once in worker processes (CPU; overrides ``parallel``;
            :mod:`fastrobust.training.parallel`).
        overwrite: replace the results of these methods if ``output.dir`` holds some (without it,
            or ``resume``, a used folder is refused before anything is loaded).

    Returns ``{"output_dir", "methods", "reports", "runs", "comparison", "statistics"}``:
    ``methods`` / ``reports`` map a label to its summary dict / EvalReport (to ``{seed: ...}``
    when the config lists ``seeds``); ``runs`` is every RunResult of this call; ``comparison``
    the markdown and ``statistics`` the :class:`~fastrobust.evaluate.Comparison` written to the
    output folder. On ranks other than 0 these are empty.
    """
    # Our tqdm bar is the progress display; datasets' per-map bars and transformers' weight
    # loading/saving bars would interleave with it.
    with library_bars_off():
        return _train(
            config,
            overrides,
            methods=methods,
            resume=resume,
            deepspeed=deepspeed,
            seeds=seeds,
            parallel=parallel,
            overwrite=overwrite,
        )


def _train(
    config: Config | str | Path | None,
    overrides: Sequence[str],
    *,
    methods: Sequence[str] | None,
    resume: bool,
    deepspeed: str | None,
    seeds: Sequence[int] | None = None,
    parallel: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    cfg, sections = apply_call_arguments(
        resolve_config(config, overrides),
        methods=methods,
        deepspeed=deepspeed,
        seeds=seeds,
        parallel=parallel,
    )
    with output_lock(Path(cfg.output.dir)):  # one train at a time in a folder
        return _train_sections(cfg, sections, resume=resume, overwrite=overwrite)


def _train_sections(cfg: Config, sections: list[Any], *, resume: bool, overwrite: bool) -> dict[str, Any]:
    """Trains ``sections`` of the resolved ``cfg`` (see :func:`train`), under the folder's lock."""
    # Before anything is loaded: a used output folder is refused unless resumed or overwritten.
    check_output_dir(Path(cfg.output.dir), run_folders(cfg, sections), resume=resume, overwrite=overwrite)
    if cfg.average is not None and cfg.deepspeed.config:  # before any process group or model
        check_supported(zero_stage(load_deepspeed_json(cfg.deepspeed.config)))
    dist = init_distributed(use_deepspeed=bool(cfg.deepspeed.config))
    run = RunContext(cfg, dist, resume, overwrite)
    from fastrobust.methods import build_method  # the methods load datasets: not at import

    for mcfg in sections:  # fail before any training if a section cannot be built (e.g. no synonyms)
        build_method(mcfg, task_synonyms=run.task.synonyms)
    out_dir = run.out_dir
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log(dist, banner(cfg, run, sections))
        if run.head_warning:
            log(dist, f"warning: {run.head_warning}")
        if cfg.model.precision == "fp16" and dist.device.type == "cpu":
            log(dist, f"warning: {CPU_FP16}")
    workers, note = parallel_workers(cfg, dist)
    if note:
        log(dist, note)
    finished: list[FinishedRun] = []  # this call's runs, in training order (rank 0)
    diverged: list[str] = []
    if workers > 1:
        finished, diverged = train_parallel(run, sections, workers)
    else:
        for seed in cfg.run_seeds:
            for mcfg in sections:
                trainer = MethodTrainer(run, mcfg, seed=seed if cfg.seeds is not None else None)
                try:
                    skip, done = skip_finished(trainer) if resume else (False, None)
                    done = done if skip else trainer.train()
                    if done is not None:
                        finished.append(done)
                except DivergenceError as exc:
                    # the other runs may well train: report this one at the end, keep going
                    log(dist, f"[{trainer.label}] error: {exc}")
                    diverged.append(str(exc))
                finally:
                    trainer.close()
    result: dict[str, Any] = {"output_dir": str(out_dir), "methods": {}, "reports": {}, "runs": []}
    result.update(comparison="", statistics=None)
    if dist.is_main and finished:
        result.update(_compare_and_report(cfg, finished, out_dir))
    dist.close()  # the other ranks waited here for rank 0's report
    if diverged:
        done = sorted({r.label for r in finished})
        kept = f"; the results of {', '.join(done)} were written" if done else ""
        raise DivergenceError(" | ".join(diverged) + kept)
    return result


CPU_FP16 = (
    "model.precision: fp16 on a CPU: the runs train under fp16 autocast, as asked, but a CPU's half "
    "precision is bf16 (faster there, and no loss scaling); set model.precision: bf16"
)


def run_folders(cfg: Config, sections: Sequence[Any]) -> list[str]:
    """The folders (relative to ``output.dir``) the runs of ``sections`` write: ``<label>``, or
    ``<label>/seed-<k>`` for each seed when the config lists ``seeds``."""
    labels = [method_label(m) for m in sections]
    if cfg.seeds is None:
        return labels
    return [f"{label}/{seed_dir_name(seed)}" for label in labels for seed in cfg.run_seeds]


def _compare_and_report(cfg: Config, finished: list[FinishedRun], out_dir: Path) -> dict[str, Any]:
    """Rank 0: the comparison over this call's runs merged with the finished runs already in
    ``out_dir``, its files, the console summary, and the top-level summary.json."""
    multi = cfg.seeds is not None
    finished = [x for r in finished for x in r.with_averaged()]
    summaries = [r.summary for r in finished]
    runs = [r.result() for r in finished]
    mine = {(r.label, r.seed) for r in runs}
    prints = {s["label"]: _without_seed(s.get("fingerprint")) for s in summaries}
    try:
        # Methods (or seeds) an earlier call reported in this folder stay in the comparison, unless
        # the same label was trained with another config then (not the same method: left out).
        earlier, other = [], []
        for r in load_runs(out_dir):
            if (r.label, r.seed) in mine:
                continue
            same = r.label not in prints or _without_seed(r.fingerprint) == prints[r.label]
            (earlier if same else other).append(r)
        if other:
            print(
                f"note: {len(other)} earlier run(s) of {sorted({r.label for r in other})} in {out_dir} were "
                "trained with another config; left out of the comparison",
                flush=True,
            )
        comparison = compare_metrics([*runs, *earlier])
    except FastrobustError as exc:
        print(f"note: earlier runs in {out_dir} left out of the comparison ({exc})", flush=True)
        comparison = compare_metrics(runs)
    try:
        with writing(out_dir):
            markdown = write_comparison(comparison, out_dir)
    except OSError as exc:
        raise OutputError(
            f"{describe_os_error(exc)}; every run's results were written in its own folder under {out_dir}"
        ) from None
    print("\n" + console_summary(summaries, comparison, out_dir, cfg), flush=True)

    methods: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    for r in finished:
        s = r.summary
        if multi:
            methods.setdefault(s["label"], {})[s["seed"]] = s
            reports.setdefault(s["label"], {})[s["seed"]] = r.report
        else:
            methods[s["label"]], reports[s["label"]] = s, r.report
    brief = [{k: v for k, v in s.items() if k not in ("losses", "dev_history")} for s in summaries]
    atomic_write_json(
        out_dir / "summary.json",
        {
            "name": cfg.name,
            "config": cfg.model_dump(mode="json"),
            "seeds": cfg.run_seeds,
            "methods": {s["label"]: s for s in brief} if not multi else _by_label_seed(brief),
        },
    )
    return {
        "methods": methods,
        "reports": reports,
        "runs": runs,
        "comparison": markdown,
        "statistics": comparison,
    }


def _without_seed(fingerprint: dict[str, str] | None) -> dict[str, str] | None:
    return None if fingerprint is None else {k: v for k, v in fingerprint.items() if k != "seed"}


def _by_label_seed(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in summaries:
        out.setdefault(s["label"], {})[str(s["seed"])] = s
    return out
