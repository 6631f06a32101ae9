"""Material and report of the DeepSpeed check: ``fastrobust train`` under ``deepspeed``
(one GPU) with PGD K=2 on an XLM-R-large-sized model, ZeRO-2 and ZeRO-3 as shipped.

``python benchmarks/gpu/ds_check.py prepare --root DIR [--size large|base|tiny]`` writes, offline:

* ``DIR/model``: an ``XLMRobertaForSequenceClassification`` with random weights and the XLM-R
  config of that size (large: hidden 1024, 24 layers, 16 heads, vocabulary 250,002), saved in
  fp32 like the released checkpoint, and a WordLevel tokenizer built with ``tokenizers`` over
  the data's words, with XLM-R's special tokens and pair template (``<s> A </s></s> B </s>``,
  ``<pad>`` = 1 so that RoBERTa position ids work);
* ``DIR/data``: a PAWS-X-layout folder (``train-en.tsv``, ``dev-/test-{en,de,fr}.tsv``) whose
  sentences are 62-90 words, so that every pair is cut to the 128-token window: batches of
  32 x 128 like the training-step benchmark's (the tests' writer makes 4-8-word sentences, too
  short for a throughput figure);
* ``DIR/ds_check.yaml``: PGD K=2 (L2, relative scales as the recipes), bf16, batch 32,
  ``--steps`` optimizer steps (16), one English-dev evaluation at the end, no saved model,
  TensorBoard on with a logged step every ``LOG_EVERY`` (4) steps only: a logged step
  synchronises the GPU and times its sections, which slows the steps it touches, so logging
  every step would measure the logging.

``python benchmarks/gpu/ds_check.py report --root DIR RUN...`` reads each run folder's
``pgd-k2/summary.json`` and TensorBoard events: finite losses, samples/s (the trainer's, over
every step including the first steps' warm-up, and the steady state between the first and the
last logged step, from the cumulative ``throughput/samples_per_s`` logged there), peak memory,
the forward / backward / perturbation split (from the logged steps), and prints a Markdown table.

``python benchmarks/gpu/ds_check.py dry-launch --root DIR RUN...`` (the CPU dry run of
``benchmarks/gpu/run.sh``) stands in for the launches: it writes what ``fastrobust train``
leaves in each run folder (``pgd-k2/summary.json``, TensorBoard scalars of the logged steps)
with made-up values, so that the report's reading and the stage's file layout are exercised.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

from fastrobust.fileio import atomic_write_json

SIZES = {  # hidden, layers, heads, intermediate, vocabulary
    "large": (1024, 24, 16, 4096, 250002),
    "base": (768, 12, 12, 3072, 250002),
    "tiny": (64, 2, 2, 128, None),  # vocabulary = the tokenizer's
}
LANGUAGES = ("en", "de", "fr")
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3 as in XLM-R; <mask> goes last
LABEL = "pgd-k2"
LOG_EVERY = 4


def write_data(root: Path, *, n_train: int, n_eval: int, seed: int = 0, n_words: int = 400) -> list[str]:
    """A PAWS-X-layout folder; returns every word used (the tokenizer's vocabulary).

    A positive pair is a sentence and a shuffled copy of it; a negative pair replaces a third of
    the words. Dev and test sets are parallel across languages: another language writes each
    English word with a language prefix.
    """
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(n_words)]

    def pairs(n: int) -> list[tuple[list[str], list[str], int]]:
        rows = []
        for _ in range(n):
            s1 = [rng.choice(words) for _ in range(rng.randint(62, 90))]
            label = rng.randint(0, 1)
            s2 = list(s1)
            rng.shuffle(s2)
            if not label:
                for i in rng.sample(range(len(s2)), len(s2) // 3):
                    s2[i] = rng.choice(words)
            rows.append((s1, s2, label))
        return rows

    def write(path: Path, rows, lang: str) -> None:
        tr = (lambda w: w) if lang == "en" else (lambda w: f"{lang}{w}")
        lines = [" ".join(map(tr, a)) + "\t" + " ".join(map(tr, b)) + f"\t{y}\n" for a, b, y in rows]
        path.write_text("".join(lines), encoding="utf-8")

    root.mkdir(parents=True, exist_ok=True)
    write(root / "train-en.tsv", pairs(n_train), "en")
    dev, test = pairs(n_eval), pairs(n_eval)
    for lang in LANGUAGES:
        write(root / f"dev-{lang}.tsv", dev, lang)
        write(root / f"test-{lang}.tsv", test, lang)
    return words + [f"{lang}{w}" for lang in LANGUAGES if lang != "en" for w in words]


def write_model(folder: Path, vocab_words: list[str], size: str) -> dict:
    """Random-weight XLM-R classifier of ``size`` + an XLM-R-style WordLevel tokenizer."""
    import torch  # torch and transformers (~2 s): only to prepare, not for report or --help
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from fastrobust.data.synthetic import word_tokenizer

    vocab = {t: i for i, t in enumerate(SPECIALS + list(vocab_words) + ["<mask>"])}
    fast = word_tokenizer(vocab, style="xlmr")
    hidden, layers, heads, inter, n_vocab = SIZES[size]
    cfg = XLMRobertaConfig(
        vocab_size=n_vocab or len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=2,
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialising 560M parameters is quicker on the GPU
        model = XLMRobertaForSequenceClassification(cfg)
    model.to(torch.float32).save_pretrained(str(folder), safe_serialization=True)
    fast.save_pretrained(str(folder))
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "vocab_size": cfg.vocab_size, "hidden": hidden, "layers": layers}


def write_config(root: Path, *, size: str, steps: int, precision: str, batch: int) -> Path:
    """The run's YAML (what a user would write for this check)."""
    text = f"""# DeepSpeed check: PGD K=2 on an XLM-R-{size}-shaped model, random weights, offline.
name: ds_check
seed: 0
model:
  name_or_path: {root / "model"}
  max_length: 128
  precision: {precision}
task:
  name: pawsx
  source: local
  path: {root / "data"}
  languages: [{", ".join(LANGUAGES)}]
  gxlt: true
methods:
  - kind: pgd
    label: {LABEL}
    steps: 2
    norm: l2
    epsilon: 1.0
    step_size: 0.3
    scale_mode: relative
optim:
  learning_rate: 2.0e-5
  batch_size: {batch}
  max_steps: {steps}
  scheduler: linear
  max_grad_norm: 1.0
eval:
  every_steps: 100000
  batch_size: 64
output:
  dir: {root / "run"}
  save_model: false
  tensorboard: true
  log_every: {LOG_EVERY}
  keep_checkpoints: 1
"""
    path = root / "ds_check.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def prepare(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    n_train = args.batch * args.steps
    words = write_data(root / "data", n_train=n_train, n_eval=args.eval_examples)
    if args.dry_run:  # no model: the dry run's launches do not load one
        hidden, layers, *_ = SIZES[args.size]
        info = {
            "parameters": 0,
            "vocab_size": len(words),
            "hidden": hidden,
            "layers": layers,
            "dry_run": True,
        }
    else:
        info = write_model(root / "model", words, args.size)
    cfg = write_config(root, size=args.size, steps=args.steps, precision=args.precision, batch=args.batch)
    info.update(size=args.size, train_examples=n_train, config=str(cfg))
    atomic_write_json(root / "prepare.json", info, indent=1)
    print(json.dumps(info))
    return 0


# ------------------------------------------------------------------------------------ report


def _logged_throughput(tb_dir: Path) -> list[tuple[int, float]]:
    """(step, cumulative samples/s) at the logged steps, from a run's TensorBoard events."""
    try:
        from tensorboard.backend.event_processing import event_accumulator  # ~0.3 s: report only
    except ImportError:
        return []
    acc = event_accumulator.EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "throughput/samples_per_s" not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in sorted(acc.Scalars("throughput/samples_per_s"), key=lambda e: e.step)]


def steady_samples_per_s(logged: list[tuple[int, float]], batch: int) -> float | None:
    """Samples/s between the first and the last logged step: the trainer logs the cumulative
    rate samples / step seconds, so step k's cumulative seconds are k * batch / rate_k."""
    if len(logged) < 2 or not batch:
        return None
    (k0, r0), (k1, r1) = logged[0], logged[-1]
    t0, t1 = k0 * batch / r0, k1 * batch / r1
    return (k1 - k0) * batch / (t1 - t0) if t1 > t0 else None


def report_run(run_dir: Path, name: str) -> dict:
    """What one launch produced (or that it produced nothing)."""
    out: dict = {"run": name, "dir": str(run_dir)}
    summary_path = run_dir / LABEL / "summary.json"
    if not summary_path.is_file():
        out["ok"] = False
        out["why"] = f"no {summary_path.relative_to(run_dir.parent)} (the launch failed or timed out)"
        return out
    s = json.loads(summary_path.read_text())
    losses = [x for x in s.get("losses", []) if x is not None]
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    th = s.get("throughput", {})
    logged = _logged_throughput(run_dir / LABEL / "tb")
    steady = steady_samples_per_s(logged, s.get("batch_size") or 0)
    out.update(
        ok=finite,
        why="" if finite else f"losses not finite or missing: {losses[:8]}",
        zero_stage=(s.get("deepspeed") or {}).get("zero_stage"),
        precision=s.get("precision"),
        steps=s.get("steps"),
        batch=s.get("batch_size"),
        losses=losses,
        samples_per_s_trainer=th.get("samples_per_s"),
        tokens_per_s_trainer=th.get("tokens_per_s"),
        peak_memory_mb=th.get("peak_memory_mb"),
        time_split=th.get("time_split"),
        logged_steps=[k for k, _ in logged],
        samples_per_s_steady=steady,
        steady_step_s=s["batch_size"] / steady if steady else None,
        wall_seconds=s.get("wall_seconds"),
        eval_and_checkpoint_seconds=s.get("eval_and_checkpoint_seconds"),
        best_dev_accuracy=s.get("best_dev_accuracy"),
    )
    return out


def report(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    rows = [report_run(root / name, name) for name in args.runs]
    prep = root / "prepare.json"
    info = json.loads(prep.read_text()) if prep.is_file() else {}
    lines = [
        f"DeepSpeed check: PGD K=2, XLM-R-{info.get('size', '?')}-shaped model "
        f"({info.get('parameters', 0) / 1e6:.1f}M parameters, random weights), one GPU, batch "
        f"{rows[0].get('batch', '?') if rows else '?'} x <=128 tokens.",
        "",
        "| run | ZeRO | ok | losses (first .. last) | samples/s steady (trainer's, with warm-up) "
        "| step s (steady) | fwd / bwd / pert / other s (logged steps) | peak MiB | wall s |",
        "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        if "losses" not in r:
            lines.append(f"| {r['run']} | — | NO | {r['why']} | — | — | — | — | — |")
            continue
        ls = r["losses"]
        split = r.get("time_split") or {}
        sp = " / ".join(
            f"{split.get(f'{k}_s_per_step', 0.0):.3f}"
            for k in ("forward", "backward", "perturbation", "other")
        )
        sps = r.get("samples_per_s_steady")
        steady = "—" if sps is None else f"{sps:.1f}"
        step = "—" if r["steady_step_s"] is None else f"{r['steady_step_s']:.3f}"
        lines.append(
            f"| {r['run']} | {r['zero_stage']} | {'yes' if r['ok'] else 'NO'} | "
            f"{ls[0]:.4f} .. {ls[-1]:.4f} ({len(ls)}) | {steady} ({r['samples_per_s_trainer']:.1f}) | "
            f"{step} | {sp} | {r['peak_memory_mb']:.0f} | {r['wall_seconds']:.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        atomic_write_json(args.out, {"prepare": info, "runs": rows, "markdown": text}, indent=1)
    return 0 if rows and all(r.get("ok") for r in rows) else 1


def _write_scalars(folder: Path, tag: str, points: list[tuple[int, float]]) -> None:
    """TensorBoard scalar events, written with tensorboard's own writer (no torch import)."""
    import time

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    for step, value in points:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
    writer.close()


def dry_launch(args: argparse.Namespace) -> int:
    """What a launch leaves in a run folder, with made-up values (see the module docstring)."""
    root = Path(args.root).resolve()
    steps, batch = args.steps, args.batch
    for name in args.runs:
        run = root / name / LABEL
        # a slow first step (1 s), then 0.1 s a step: the steady state the report must find
        points = [(k, k * batch / (1.0 + 0.1 * (k - 1))) for k in range(LOG_EVERY, steps + 1, LOG_EVERY)]
        _write_scalars(run / "tb", "throughput/samples_per_s", points)
        split = {f"{sec}_s_per_step": 0.025 for sec in ("forward", "backward", "perturbation", "other")}
        summary = {
            "losses": [0.7 - 0.01 * i for i in range(steps)],
            "throughput": {"samples_per_s": steps * batch / (1.0 + 0.1 * (steps - 1)), "tokens_per_s": 0.0,
                           "peak_memory_mb": 1.0, "time_split": split},
            "deepspeed": {"zero_stage": 3 if name.startswith("zero3") else 2},
            "precision": "bf16",
            "steps": steps,
            "batch_size": batch,
            "wall_seconds": 2.0,
            "eval_and_checkpoint_seconds": 0.5,
            "best_dev_accuracy": 0.5,
        }  # fmt: skip
        atomic_write_json(run / "summary.json", summary, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="write model, tokenizer, data and config under --root")
    pp.add_argument("--root", required=True)
    pp.add_argument("--size", choices=list(SIZES), default="large")
    pp.add_argument("--steps", type=int, default=16)
    pp.add_argument("--batch", type=int, default=32)
    pp.add_argument("--eval-examples", type=int, default=32)
    pp.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    pp.add_argument("--dry-run", action="store_true", help="data and config only (no model)")
    pd = sub.add_parser("dry-launch", help="write made-up launch results under --root (CPU dry run)")
    pd.add_argument("--root", required=True)
    pd.add_argument("--steps", type=int, default=16)
    pd.add_argument("--batch", type=int, default=32)
    pd.add_argument("runs", nargs="+")
    pr = sub.add_parser("report", help="summarise run folders under --root")
    pr.add_argument("--root", required=True)
    pr.add_argument("--out", default=None, help="also write the rows as JSON here")
    pr.add_argument("runs", nargs="+", help="run folder names under --root (each holds pgd-k2/summary.json)")
    args = p.parse_args(argv)
    return {"prepare": prepare, "report": report, "dry-launch": dry_launch}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
