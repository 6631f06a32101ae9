"""Where a real-benchmark run's time goes: tokenization, collation, forward+backward, optimizer,
dev and test evaluation, timed separately on the real encoder and task.

``python -m benchmarks.real.profile_step --config ~/.cache/fastrobust/real/real.yaml`` times, for
each precision asked (default fp32 and bf16), with ``--threads`` torch threads, the pieces that
``fastrobust train`` runs (the task loader, ``encode_dataset``, the collator, the trainer's engine
— ``TrainEngine.micro_step``: the method's ``training_step`` under its autocast and backward, and
``optimizer_step``: clipping, AdamW on its parameter groups, the scheduler — ``predict_logits``):

* tokenizing the English training set (one ``encode_dataset`` call);
* per training step: collation (padding a batch), forward+backward, the optimizer and scheduler
  step, split with ``time.perf_counter``;
* one G-XLT test set's evaluation (tokenize + forward), scaled to the run's
  ``len(languages)**2`` sets, and one English dev evaluation, scaled to the run's dev evaluations;

and prints the estimated seconds of one run per part. Medians over ``--steps`` steps after one
warm-up step.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from fastrobust.config import load_config


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def profile(config: Path, precision: str, steps: int, method: dict) -> dict[str, float]:
    # torch, transformers and datasets (through the product's modules) load only to profile, so
    # that --help answers at once.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastrobust.data import encode_dataset, load_task, make_collator  # datasets: not for --help
    from fastrobust.evaluate.predict import predict_logits
    from fastrobust.methods import build_method
    from fastrobust.timing import NULL_TIMER
    from fastrobust.training.engine import autocast_context, backward_calls, standalone_engine

    cfg = load_config(config, [f"model.precision={precision}"])
    o, max_length = cfg.optim, cfg.model.max_length
    task = load_task(cfg.task)
    tok = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    t_tok, data = _time(lambda: encode_dataset(task.train, tok, max_length))
    collate = make_collator(tok)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model.name_or_path, num_labels=task.num_labels
    )
    model.train()
    m = build_method(method, task_synonyms=task.synonyms)
    m.setup(model)
    # the trainer's own engine: its micro_step and optimizer_step are what is timed
    eng = standalone_engine(
        model, cfg, torch.device("cpu"), backward_calls=backward_calls(m.cfg), total_steps=o.max_steps
    )

    parts: dict[str, list[float]] = {"collate": [], "forward+backward": [], "optimizer": []}
    g = torch.Generator().manual_seed(0)
    for step in range(steps + 1):
        idx = torch.randint(0, len(data), (o.batch_size,), generator=g).tolist()
        t_c, batch = _time(lambda idx=idx: collate([data[i] for i in idx]))

        t_f, loss = _time(lambda batch=batch: eng.micro_step(m, batch, NULL_TIMER))

        def update(loss=loss):
            eng.optimizer_step(loss)

        t_o, _ = _time(update)
        if step:  # the first step warms up allocations and kernels
            for k, v in zip(parts, (t_c, t_f, t_o)):
                parts[k].append(v)

    def evaluate(dataset):
        with autocast_context(precision, "cpu"):
            return predict_logits(
                model, tok, dataset, max_length=max_length, batch_size=cfg.eval.batch_size, device="cpu"
            )

    a, b = task.languages[-1], task.languages[1 % len(task.languages)]
    n_sets = len(task.gxlt) or len(task.test)
    t_test, _ = _time(lambda: evaluate(task.gxlt[(a, b)] if task.gxlt else task.test[a]))
    t_dev, _ = _time(lambda: evaluate(task.dev[task.train_language]))
    n_dev = math.ceil(o.max_steps / cfg.eval.every_steps)
    run = {f"{k} (x{o.max_steps})": statistics.median(v) * o.max_steps for k, v in parts.items()}
    return {
        "tokenize train set (x1, x2 epochs for RS-DA)": t_tok,
        **run,
        f"dev evaluation (x{n_dev})": t_dev * n_dev,
        f"test evaluation (x{n_sets} sets, one measured)": t_test * n_sets,
        "per step: forward+backward": statistics.median(parts["forward+backward"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.real.profile_step", description=__doc__.split("\n")[0]
    )
    p.add_argument("--config", required=True)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--method", default='{"kind": "baseline"}', help="a method section as JSON")
    args = p.parse_args(argv)
    import torch  # after parsing: see profile()

    torch.set_num_threads(args.threads)
    results = {
        prec: profile(Path(args.config), prec, args.steps, json.loads(args.method))
        for prec in args.precisions.split(",")
    }
    keys = list(next(iter(results.values())))
    print("| part of one run (s) | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r[k]:.1f}" for r in results.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
