"""A compact training loop for the benchmark's sweeps on machines without ``datasets``/``pyarrow``.

It runs exactly what ``fastrobust train`` runs for one method and one seed on one process — the
same pieces, not copies of them: the method object of ``fastrobust.methods.build_method`` and its
``training_step``; the data order of ``GlobalBatchSampler`` and the per-micro-batch
``torch.manual_seed(micro_seed(seed, step, 0))``; the same classifier initialisation
(``torch.manual_seed(seed)`` before ``from_pretrained``), the same AdamW parameter groups and
transformers scheduler, gradient clipping, dev evaluation every ``eval.every_steps`` and at the
end with best-on-English-dev selection (strictly better), and RS-DA's epoch draws
(``augment_examples``, ``default_rng([seed, epoch, i])``). Tokenization is the tokenizer's own
call with ``truncation="longest_first"`` and right padding, as ``encode_dataset`` + the collator.
On CPU it reproduces ``fastrobust train`` loss for loss (tests/test_real_lite.py); it exists
because the GPU machines of this project have no ``datasets`` (whose ``pyarrow`` cannot be carried
there), and it needs only torch, transformers, tokenizers, numpy, yaml and pydantic.

Writes a run in the layout ``fastrobust compare`` reads: ``OUT/<label>/summary.json`` (label,
kind, seed, method, dev history, losses, times) and ``OUT/<label>/report/{report.json,
predictions.npz}``, plus ``OUT/summary.json`` holding the config (its seed).
"""

from __future__ import annotations

import json
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

# PAWS-X's labels (fastrobust.data.tasks.PAWSX.label_names; not imported: fastrobust.data needs
# the datasets package, which this loop does without)
LABEL_NAMES = ("not_paraphrase", "paraphrase")


def _ensure_datasets_importable() -> None:
    """fastrobust.methods imports ``datasets`` for type hints and RS-DA's ``augment_dataset``, which
    this loop does not call; where the package is absent, an empty stand-in lets the import pass."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        stub = types.ModuleType("datasets")
        stub.Dataset = object  # type: ignore[attr-defined]
        stub.__fastrobust_stub__ = True  # type: ignore[attr-defined]
        sys.modules["datasets"] = stub


def read_split(path: Path) -> tuple[list[str], list[str], list[int]]:
    s1, s2, y = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line:
            a, b, c = line.split("\t")
            s1.append(a)
            s2.append(b)
            y.append(int(c))
    return s1, s2, y


class Encoded:
    """Token ids of a list of pairs (tokenizer call as ``encode_dataset``: longest_first, no padding)."""

    def __init__(self, tok, s1: list[str], s2: list[str], labels: list[int], max_length: int) -> None:
        enc = tok(s1, s2, truncation="longest_first", max_length=max_length, padding=False)
        self.keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        self.rows = [{k: enc[k][i] for k in self.keys} for i in range(len(s1))]
        self.labels = list(labels)
        self.tok = tok

    def batch(self, idx: list[int], device) -> dict[str, torch.Tensor]:
        padded = self.tok.pad(
            [self.rows[i] for i in idx], padding=True, padding_side="right", return_tensors="pt"
        )
        out = {k: v.to(device) for k, v in padded.items()}
        out["labels"] = torch.as_tensor([self.labels[i] for i in idx], dtype=torch.long, device=device)
        return out


def autocast(precision: str, device) -> Any:
    """The forwards' autocast of ``fastrobust train`` (``fastrobust.train.engine.autocast_context``)."""
    from fastrobust.train.engine import autocast_context

    return autocast_context(precision, torch.device(device).type)


@torch.no_grad()
def predict_logits(model, data: Encoded, batch_size: int, device, precision: str = "fp32") -> np.ndarray:
    """Logits (N, C) in data order; batches grouped by length (as ``predict_logits``)."""
    order = np.argsort([len(r["input_ids"]) for r in data.rows], kind="stable")
    model.eval()
    out = []
    for i in range(0, len(order), batch_size):
        b = data.batch(order[i : i + batch_size].tolist(), device)
        b.pop("labels")
        with autocast(precision, device):
            logits = model(**b).logits
        out.append(logits.float().cpu())
    model.train()
    logits = torch.cat(out).numpy()
    result = np.empty_like(logits)
    result[order] = logits
    return result


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_one(cfg, section: dict, out_dir: Path, device: str = "cpu", log=print) -> dict:
    """Train, select and test one method section with ``cfg`` (a fastrobust ``Config``); see module doc."""
    _ensure_datasets_importable()
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

    from fastrobust.evaluate.metrics import accuracy
    from fastrobust.evaluate.predictions import FILE_NAME, SetPredictions, TaskPredictions
    from fastrobust.methods import build_method
    from fastrobust.methods.synonyms import SynonymTable, augment_examples
    from fastrobust.train.batches import GlobalBatchSampler, micro_seed
    from fastrobust.train.engine import param_groups

    transformers.logging.set_verbosity_error()  # the "newly initialized classifier" report, per run
    transformers.utils.logging.disable_progress_bar()
    t_start, cpu_start = time.perf_counter(), time.process_time()
    task_dir = Path(cfg.task.path)
    langs = list(cfg.task.languages)
    seed, o = cfg.seed, cfg.optim
    tok = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    train = read_split(task_dir / "train-en.tsv")
    if cfg.task.max_train_examples:
        train = tuple(x[: cfg.task.max_train_examples] for x in train)
    n_eval = cfg.task.max_eval_examples
    dev = Encoded(tok, *[x[:n_eval] for x in read_split(task_dir / "dev-en.tsv")], cfg.model.max_length)
    synonyms = None
    syn_path = Path(cfg.task.synonyms) if cfg.task.synonyms else task_dir / "synonyms.json"
    if syn_path.is_file():
        synonyms = json.loads(syn_path.read_text(encoding="utf-8"))
    method = build_method(section, task_synonyms=synonyms)
    names = list(LABEL_NAMES)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model.name_or_path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    ).to(device)
    model.train()
    method.setup(model)
    opt = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.learning_rate, eps=o.adam_epsilon)
    spe = len(train[0]) // o.batch_size
    total = o.max_steps if o.max_steps is not None else max(1, math.ceil(o.epochs * spe))
    sched = get_scheduler(
        o.scheduler,
        optimizer=opt,
        num_warmup_steps=math.ceil(o.warmup_ratio * total),
        num_training_steps=total,
    )
    precision = cfg.model.precision
    if precision == "fp16":
        raise ValueError("model.precision fp16 needs a loss scaler; this loop runs fp32 or bf16")

    def backward(x: torch.Tensor) -> None:  # outside autocast, as fastrobust.train.engine.torch_backward
        with torch.autocast(device_type=torch.device(device).type, enabled=False):
            x.backward()

    every = cfg.eval.every_steps or spe
    dev_seconds = dev_cpu = 0.0
    best, best_step, best_state, history, losses = -math.inf, -1, None, [], []
    step = 0
    data = None
    order: list[int] = []
    while step < total:
        if step % spe == 0:
            epoch = step // spe
            s1, s2, y = train
            if method.kind == "rs-da":
                table = getattr(method, "table", None) or SynonymTable(synonyms or {})
                aug = augment_examples(
                    {"sentence1": s1, "sentence2": s2}, list(range(len(s1))), table, seed, epoch
                )
                s1, s2 = aug["sentence1"], aug["sentence2"]
            if data is None or method.kind == "rs-da":
                data = Encoded(tok, s1, s2, y, cfg.model.max_length)
            sampler = GlobalBatchSampler(
                len(y), global_batch=o.batch_size, micro_batch=o.batch_size, world_size=1, rank=0,
                seed=seed, epoch=epoch,
            )  # fmt: skip
            order = list(iter(sampler))
        k = step % spe
        batch = data.batch(order[k * o.batch_size : (k + 1) * o.batch_size], device)
        torch.manual_seed(micro_seed(seed, step, 0))
        with autocast(precision, device):
            loss = method.training_step(model, batch, backward)
        losses.append(float(loss))
        if o.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], o.max_grad_norm
            )
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % every == 0 or step == total:
            t_dev, c_dev = time.perf_counter(), time.process_time()
            logits = predict_logits(model, dev, cfg.eval.batch_size, device, precision)
            acc = accuracy(logits.argmax(1), dev.labels)
            dev_seconds += time.perf_counter() - t_dev
            dev_cpu += time.process_time() - c_dev
            history.append([step, acc])
            if acc > best:
                best, best_step = acc, step
                best_state = {n: v.detach().clone() for n, v in model.state_dict().items()}
            log(
                f"[{method.label} seed {seed}] step {step}: English dev {100 * acc:.2f}% "
                f"(best {100 * best:.2f}%)"
            )
    train_seconds, train_cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    model.load_state_dict(best_state)
    t0, c0 = time.perf_counter(), time.process_time()
    tests = {lang: read_split(task_dir / f"test-{lang}.tsv") for lang in langs}
    if n_eval:
        tests = {k: tuple(x[:n_eval] for x in v) for k, v in tests.items()}
    xlt, gxlt = {}, {}
    for lang in langs:
        logits = predict_logits(
            model, Encoded(tok, *tests[lang], cfg.model.max_length), cfg.eval.batch_size, device, precision
        )
        xlt[lang] = SetPredictions.from_logits(logits, np.asarray(tests[lang][2]))
    for a in langs:
        for b in langs:
            if a == b:
                gxlt[(a, b)] = xlt[a]
                continue
            if tests[a][2] != tests[b][2]:
                raise ValueError(f"test-{a} and test-{b} are not parallel (labels differ)")
            enc = Encoded(tok, tests[a][0], tests[b][1], tests[a][2], cfg.model.max_length)
            gxlt[(a, b)] = SetPredictions.from_logits(
                predict_logits(model, enc, cfg.eval.batch_size, device, precision), np.asarray(tests[a][2])
            )
    preds = TaskPredictions(
        xlt=xlt, gxlt=gxlt, task=cfg.task.name, languages=langs, train_language="en", label_names=names
    )
    report = preds.report()
    run_dir = out_dir / method.label
    preds.save(run_dir / "report" / FILE_NAME)
    _write_json(run_dir / "report" / "report.json", report.to_dict())
    summary = {
        "label": method.label,
        "kind": method.kind,
        "seed": seed,
        "method": section,
        "engine": "benchmarks.real.lite",
        "device": str(device),
        "steps": total,
        "best_dev_accuracy": best,
        "best_step": best_step,
        "dev_history": history,
        "losses": losses,
        "final_loss": losses[-1] if losses else None,
        "averages": report.averages(),
        "xlt": dict(report.xlt),
        "precision": precision,
        "train_seconds": train_seconds,
        "dev_eval_seconds": dev_seconds,
        "test_eval_seconds": time.perf_counter() - t0,
        # process CPU time: the cost measure that other jobs sharing the cores do not inflate
        "train_cpu_seconds": train_cpu,
        "dev_eval_cpu_seconds": dev_cpu,
        "test_eval_cpu_seconds": time.process_time() - c0,
    }
    _write_json(run_dir / "summary.json", summary)
    _write_json(out_dir / "summary.json", {"name": cfg.name, "config": cfg.model_dump(mode="json")})
    return summary
