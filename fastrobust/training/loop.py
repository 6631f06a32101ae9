"""The step loop of one method: build, (resume,) train with dev evaluation and checkpoints, finish.

Each optimizer step runs ``A`` micro-batches through ``method.training_step`` (via
:meth:`fastrobust.training.engine.TrainEngine.micro_step`), re-seeding torch's generator before each
with :func:`fastrobust.training.batches.micro_seed`, then one optimizer step. Dev evaluation
(:mod:`.selection`) runs every ``eval.every_steps`` (or every epoch) and at the end; checkpoints
(:mod:`.resume`) every ``output.checkpoint_every`` steps and at the end; then :func:`.final.finish`.
"""

from __future__ import annotations

import gc
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastrobust.config import method_label
from fastrobust.errors import ConfigError, Interrupted
from fastrobust.evaluate.runs import seed_dir_name
from fastrobust.progress import bar as progress_bar
from fastrobust.timing import SectionTimer
from fastrobust.training import checkpoint as ckpt
from fastrobust.training import preflight
from fastrobust.training.averaging import WeightAverage, averaged_label, check_supported, trainable_names
from fastrobust.training.batches import GlobalBatchSampler, micro_seed
from fastrobust.training.compiled import compiled_graphs
from fastrobust.training.console import log_step_scalars
from fastrobust.training.engine import TrainEngine, backward_calls
from fastrobust.training.final import FinishedRun, finish
from fastrobust.training.guard import DivergenceGuard
from fastrobust.training.lora import apply_lora, new_modules
from fastrobust.training.meter import ThroughputMeter, peak_memory_mb
from fastrobust.training.resume import load_checkpoint, save_checkpoint
from fastrobust.training.run import RunContext, cpu_state, fingerprint, log, quiet_transformers
from fastrobust.training.selection import DevSelection
from fastrobust.training.signals import stop_on_signals

if TYPE_CHECKING:  # annotations only
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from fastrobust.methods.registry import MethodSection

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class MethodTrainer:
    """Trains, selects, evaluates and saves one method section with one seed.

    ``seed`` (default: the config's ``seed``) replaces ``cfg.seed`` for this run: head init, data
    order and every random draw follow it. The run's folder is ``<output.dir>/<label>/`` for a
    single-seed config and ``<output.dir>/<label>/seed-<k>/`` when the config lists ``seeds``.
    """

    def __init__(self, run: RunContext, mcfg: MethodSection, seed: int | None = None) -> None:
        from fastrobust.methods import build_method  # the methods load datasets: not at import

        self.run = run
        self.cfg = run.cfg if seed is None else run.cfg.model_copy(update={"seed": seed})
        self.seed = self.cfg.seed
        self.dist = run.dist
        self.mcfg = mcfg
        self.label = method_label(mcfg)
        self.dir = run.out_dir / self.label
        if run.cfg.seeds is not None:
            self.dir = self.dir / seed_dir_name(self.seed)
        self.ckpt_root = self.dir / "checkpoints"
        self.method = build_method(mcfg, task_synonyms=run.task.synonyms)
        self.device = run.dist.device
        self.eng: TrainEngine | None = None
        self.step = 0
        self.selection = DevSelection()
        self.losses: list[float] = []
        self.meter = ThroughputMeter()
        self.resumed_from: int | None = None
        self._pending_losses: list[torch.Tensor] = []
        self._pending_tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        self._encoded: dict[int, Any] = {}
        self.fingerprint = fingerprint(self.cfg, mcfg, run.dist.world_size)
        self.guard: DivergenceGuard | None = None
        self.truncated: int | None = None  # training pairs cut to model.max_length (first epoch)
        # model.compile: graphs compiled in this process before training / after its first step
        self.graphs: list[int] = []
        self.warming = False  # this step compiles (model.compile: the first one of the run)
        self.averager: WeightAverage | None = None  # average: the running weight average

    def averaged_dir(self) -> Path:
        """The folder of this run's weight-averaged evaluation (``<label>+avg``)."""
        base = self.run.out_dir / averaged_label(self.label)
        return base / seed_dir_name(self.seed) if self.run.cfg.seeds is not None else base

    # ---- building -------------------------------------------------------------------------

    def build(self) -> None:
        from transformers import AutoModelForSequenceClassification  # ~1.3 s: loaded when a model is built

        names = list(self.run.task.label_names)
        # Same seed before every method's model: the freshly initialised head is identical.
        torch.manual_seed(self.cfg.seed)
        lora = self.cfg.model.lora
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                self.run.model_path,
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
                ignore_mismatched_sizes=self.run.head_warning is not None,
                output_loading_info=True,
            )
        if lora is not None:
            model = apply_lora(model, lora, base_path=self.run.model_path, fresh=new_modules(info))
        model.to(self.device)
        model.train()
        # Relative scales are resolved on the full embedding table, before ZeRO-3 partitions it.
        self.method.setup(model)
        self.eng = TrainEngine(model, self.run, backward_calls=backward_calls(self.mcfg))
        if self.cfg.average is not None:
            check_supported(self.eng.zero_stage)
            names = trainable_names(self.eng.module, set(self.eng.module.state_dict()))
            self.averager = WeightAverage(self.cfg.average, self.run.total_steps, names)

    # ---- data -----------------------------------------------------------------------------

    def _loader(self, epoch: int, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        from fastrobust.data import encode_dataset, make_collator  # datasets: loaded with the data

        train = self.method.epoch_train_dataset(self.run.task.train, epoch, self.cfg.seed)
        key = id(train) if train is self.run.task.train else -1
        encoded = self._encoded.get(key)
        if encoded is None:
            stats: dict[str, int] = {}
            encoded = encode_dataset(train, self.run.tokenizer, self.cfg.model.max_length, stats=stats)
            if self.truncated is None:
                self.truncated = stats["truncated"]
                if self.truncated:
                    share = 100 * self.truncated / max(1, stats["examples"])
                    n, limit = stats["examples"], self.cfg.model.max_length
                    log(
                        self.dist,
                        f"[{self.label}] {self.truncated} of {n} training pairs ({share:.1f}%) are longer "
                        f"than model.max_length = {limit} tokens and were truncated",
                    )
            encoded = encoded.select_columns([c for c in MODEL_INPUTS if c in encoded.column_names])
            if key != -1:
                self._encoded[key] = encoded  # unchanged across epochs: tokenize once
        if len(encoded) != len(self.run.task.train):
            raise ConfigError(
                f"method {self.label}: epoch_train_dataset changed the training-set size "
                f"({len(self.run.task.train)} -> {len(encoded)})"
            )
        sampler = GlobalBatchSampler(
            len(encoded),
            global_batch=self.cfg.optim.batch_size,
            micro_batch=self.run.micro,
            world_size=self.dist.world_size,
            rank=self.dist.rank,
            seed=self.cfg.seed,
            epoch=epoch,
            start_step=start_step,
        )
        loader = torch.utils.data.DataLoader(
            encoded, batch_size=self.run.micro, sampler=sampler, collate_fn=make_collator(self.run.tokenizer)
        )
        return iter(loader)

    # ---- one optimizer step ---------------------------------------------------------------

    def _train_step(
        self, it: Iterator[dict[str, torch.Tensor]], timer: SectionTimer
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Runs A micro-batches and one optimizer step.

        Returns (mean micro loss, grad norm or None, non-finite flag); a flagged step was skipped
        (see :meth:`fastrobust.training.engine.TrainEngine.optimizer_step`).
        """
        losses = []
        for k in range(self.run.accum):
            batch = next(it)
            batch = {key: v.to(self.device, non_blocking=True) for key, v in batch.items()}
            self._pending_tokens += batch["attention_mask"].sum()
            q = k * self.dist.world_size + self.dist.rank
            # Randomness of this micro-batch depends on (seed, step, q) only: see batches.py.
            torch.manual_seed(micro_seed(self.cfg.seed, self.step, q))
            loss = self.eng.micro_step(self.method, batch, timer)
            losses.append(loss.detach().float())
        loss = torch.stack(losses).mean()
        grad_norm, bad = self.eng.optimizer_step(loss)
        return loss, grad_norm, bad

    def _flush(self) -> list[float]:
        """Mean-over-ranks losses of the steps since the last flush (a collective on every rank)."""
        if not self._pending_losses:
            return []
        local = torch.stack(self._pending_losses).to(torch.float64)
        values = self.dist.all_reduce_mean(local).cpu().tolist()
        tokens = self.dist.all_reduce_sum(self._pending_tokens.clone()).item()
        self.meter.tokens += int(tokens)
        self._pending_tokens.zero_()
        self._pending_losses = []
        self.losses.extend(values)
        return values

    # ---- the loop -------------------------------------------------------------------------

    def _due(self, every: int | None) -> bool:
        return bool(every) and self.step % every == 0

    def _start(self) -> None:
        """Build, then resume from the newest complete checkpoint or clear old ones."""
        run, dist = self.run, self.dist
        self.build()
        if run.resume:
            found = ckpt.latest(self.ckpt_root)
            if found is not None:
                load_checkpoint(self, found)
                log(dist, f"[{self.label}] resumed from {found} (step {self.step}/{run.total_steps})")
            elif self.dir.exists():  # a run never started before has nothing to say
                log(
                    dist,
                    f"[{self.label}] --resume: no complete checkpoint under {self.ckpt_root}; starting anew",
                )
        elif dist.is_main and run.overwrite:
            # --overwrite: nothing of the previous run (checkpoints, TensorBoard events) mixes in.
            preflight.clear_method_dir(self.dir)
        elif dist.is_main and self.ckpt_root.exists():
            # A fresh run must not leave older checkpoints for a later --resume to mix in (the
            # folder was checked to hold no finished or checkpointed run before training began).
            shutil.rmtree(self.ckpt_root)
        dist.barrier()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _agree(self, flag: bool) -> bool:
        """``flag`` of any rank, on every rank (a collective with several processes)."""
        if self.dist.world_size == 1:
            return flag
        return bool(self.dist.all_reduce_max(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def _interrupted(self, signum: int, saved: Path | None, checkpoints_on: bool) -> Exception:
        if saved is not None:
            kept = f"checkpoint {saved} written; continue with --resume"
        elif checkpoints_on:
            kept = "the checkpoint could not be written"
        else:
            kept = "no checkpoint (output.checkpoint_minutes and output.checkpoint_every are null)"
        return Interrupted(
            f"{signal.Signals(signum).name}: method {self.label} stopped at step "
            f"{self.step}/{self.run.total_steps}; {kept}",
            signum,
        )

    def _divergence_hint(self) -> str:
        o = self.cfg.optim
        clip = "" if o.max_grad_norm else ", or set optim.max_grad_norm"
        return f"; lower optim.learning_rate (now {o.learning_rate:g}){clip}"

    def _check_divergence(self) -> None:
        """Raises DivergenceError (on every rank) once the guard's patience is spent."""
        self.guard.check(self.step, self.dist, self._divergence_hint())

    def _open_writer(self) -> Any:
        """Rank 0's TensorBoard writer under ``<run>/tb`` when ``output.tensorboard``, else None."""
        if not (self.dist.is_main and self.cfg.output.tensorboard):
            return None
        from torch.utils.tensorboard import SummaryWriter  # optional (tensorboard): only when asked for

        return SummaryWriter(log_dir=str(self.dir / "tb"))

    def train(self) -> FinishedRun | None:
        """Builds (or resumes), runs every optimizer step, then evaluates and saves the run; returns
        it on rank 0, None elsewhere (:func:`fastrobust.training.final.finish`)."""
        t_start = time.perf_counter()
        self._start()
        # DeepSpeed applies a step inside backward: a non-finite one cannot be skipped, so stop at once.
        patience = self.cfg.optim.nonfinite_patience if self.eng.skips_nonfinite else 0
        self.guard = DivergenceGuard(patience, self.device, self.label)
        writer = self._open_writer()
        bar = progress_bar(
            total=self.run.total_steps,
            initial=self.step,
            desc=self.label,
            unit="step",
            disable=not (self.dist.is_main and self.run.progress_bar),
        )
        try:
            eval_seconds = self._step_loop(writer, bar)
            self._flush()
            self._check_divergence()
            if not self.selection.history:  # defensive: a resumed final checkpoint without any dev evaluation
                self.selection.evaluate(self.eng, self.run, self.step, self.label, writer)
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        finally:
            bar.close()
        if writer is not None:
            writer.flush()
        return self._finish(writer, t_start, eval_seconds)

    def _step_loop(self, writer: SummaryWriter | None, bar: tqdm) -> float:
        """Optimizer steps up to ``total_steps`` with logging, dev evaluation and checkpoints; stops
        with :class:`fastrobust.errors.Interrupted` on SIGINT / SIGTERM. Returns the seconds spent
        after the steps themselves (evaluation, checkpoints)."""
        run, cfg, dist = self.run, self.cfg, self.dist
        spe, total, log_every = run.steps_per_epoch, run.total_steps, cfg.output.log_every
        every_steps, minutes = cfg.output.checkpoint_every, cfg.output.checkpoint_minutes
        checkpoints_on = bool(every_steps or minutes)
        it: Iterator[dict[str, torch.Tensor]] | None = None
        eval_seconds = 0.0
        last_checkpoint = time.monotonic()
        with stop_on_signals() as stop:
            while self.step < total:
                if it is None or self.step % spe == 0:
                    it = self._loader(self.step // spe, self.step % spe)
                logged = (self.step + 1) % log_every == 0 or self.step + 1 == total
                timer, grad_norm, seconds = self._timed_step(it, logged)
                if logged:
                    self._log_step(writer, bar, timer, grad_norm, seconds)
                bar.update(1)
                t_eval = time.perf_counter()
                if self.averager is not None and self.averager.due(self.step):
                    self.averager.snapshot(self.step, self.eng.module, dist.is_main)
                if self._due(cfg.eval.every_steps or spe) or self.step == total:
                    self._check_divergence()  # never evaluate (or keep) a diverged model
                    self.selection.evaluate(self.eng, self.run, self.step, self.label, writer)
                # Host-side decisions every rank must share (time, signals) are taken where the
                # ranks synchronise anyway: every step with one process, logged steps with several.
                synced = logged or dist.world_size == 1
                stopping = synced and self._agree(stop.signum is not None)
                timely = (
                    synced
                    and minutes is not None
                    and self._agree(time.monotonic() - last_checkpoint >= 60 * minutes)
                )
                saved = None
                periodic = self.step < total and (self._due(every_steps) or timely)
                if checkpoints_on and (periodic or stopping):
                    self._flush()
                    self._check_divergence()
                    saved = save_checkpoint(self)
                    last_checkpoint = time.monotonic()
                if stopping:
                    raise self._interrupted(int(stop.signum or signal.SIGTERM), saved, checkpoints_on)
                eval_seconds += time.perf_counter() - t_eval
        return eval_seconds

    def _timed_step(
        self, it: Iterator[dict[str, torch.Tensor]], logged: bool
    ) -> tuple[SectionTimer, Any, float]:
        """One optimizer step, timed (per section when ``logged``); returns (timer, grad norm, seconds)."""
        timer = SectionTimer(enabled=logged, device=self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        # model.compile: Dynamo compiles in the first step; it is timed apart from the throughput
        self.warming = self.cfg.model.compile and not self.graphs
        if self.warming:
            self.graphs.append(compiled_graphs())
            tokens_before = self._pending_tokens.clone()
        loss, grad_norm, bad = self._train_step(it, timer)
        if len(self.graphs) == 1:
            self.graphs.append(compiled_graphs())  # warm: every later step reuses these
        self.guard.observe(bad)
        self._pending_losses.append(loss)
        self.step += 1
        if logged and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        if self.warming:
            self._pending_tokens.copy_(tokens_before)
            self.meter.add_warmup(seconds)
        else:
            self.meter.add_step(seconds, self.cfg.optim.batch_size, 0, time.process_time() - c0)
        return timer, grad_norm, seconds

    def _log_step(
        self,
        writer: SummaryWriter | None,
        bar: tqdm,
        timer: SectionTimer,
        grad_norm: torch.Tensor | float | None,
        seconds: float,
    ) -> None:
        """A logged step: flush the losses (a collective), check divergence, update the bar and
        TensorBoard."""
        if not self.warming:
            self.meter.add_timed(seconds, timer.totals)
        values = self._flush()
        self._check_divergence()
        s = self.meter.summary()
        if self.dist.is_main:
            bar.set_postfix(loss=f"{values[-1]:.4f}", samples_s=f"{s['samples_per_s']:.1f}")
        if writer is not None:
            log_step_scalars(
                writer,
                self.step,
                values,
                lr=self.eng.lr(),
                grad_norm=grad_norm,
                throughput=s,
                sections=timer.totals,
                step_seconds=seconds,
                peak_mb=peak_memory_mb(self.device),
            )

    def _finish(
        self, writer: SummaryWriter | None, t_start: float, eval_seconds: float
    ) -> FinishedRun | None:
        """Test evaluation and saving (:func:`fastrobust.training.final.finish`); then the run's
        checkpoints are removed, unless ``output.keep_finished_checkpoints`` (then a final one of the
        last parameters is added when ``output.checkpoint_every`` is set)."""
        keep = self.cfg.output.keep_finished_checkpoints
        final_checkpoint = (
            keep
            and bool(self.cfg.output.checkpoint_every)
            and not (ckpt.step_dir(self.ckpt_root, self.step).is_dir())
        )
        last_state = None
        if final_checkpoint and self.eng.engine is None and self.dist.is_main:
            # finish() loads the best parameters into the model; the checkpoint keeps the last ones
            last_state = cpu_state(self.eng.module)
        finished = finish(self, time.perf_counter() - t_start, eval_seconds)
        if writer is not None:
            writer.close()
        if final_checkpoint:
            # Written after the results (report, model, summary): a full disk must cost the
            # optional checkpoint, never the results.
            if last_state is not None:
                self.eng.module.load_state_dict(last_state)
            save_checkpoint(self)
        elif not keep and self.dist.is_main:
            # the results are complete (finish raised otherwise): nothing is left to resume
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
        return finished

    def close(self) -> None:
        if self.eng is not None:
            self.eng.close()
        self.eng = None
        self.selection.best_state = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
