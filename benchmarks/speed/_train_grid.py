"""Training-step cost of every method relative to the baseline, on one device, interleaved.

One step = the trainer's own step: ``TrainEngine.micro_step`` (``method.training_step`` under the
trainer's autocast and backward) then ``TrainEngine.optimizer_step`` (gradient clipping at 1.0,
the AdamW and scheduler steps, ``zero_grad``), on an engine of
:func:`fastrobust.training.engine.standalone_engine`: what ``fastrobust train`` does per optimizer
step without DeepSpeed, so a change to the engine shows in these numbers. Same randomly initialised
XLM-R-style classifier (random weights: speed does not depend on them; no hub), same batch
(real lengths uniform in [L/2, L], right padding) for every method.

Per (model, precision) group:

1. two warm-up steps per method (Triton JIT, cuBLAS heuristics, allocator);
2. one step per method alone: peak memory (``max_memory_allocated``; absolute, and above
   what model + optimizer state held before the step) and a time estimate;
3. R rounds, R sized from the estimate to fit the group's time budget (at least 3): each round
   is baseline, every other method in a fresh random order, baseline again, timed back to back
   with CUDA events (no synchronisation between steps, as in a training loop). A method's ratio
   in a round is its time over the mean of the round's two baseline steps; the reported ratio
   is the median over rounds, with the range. The baseline row's "ratio" is the second
   baseline step over the first: the noise floor of the comparison;
4. the forward / backward / perturbation split from two more steps per method with the
   trainer's ``SectionTimer``, which synchronises at every section edge: it perturbs what it
   measures (no overlap across sections), so it is reported as fractions, apart from step 3.

Targets: RS-RP and RS-DA <= 1.05x baseline; PGD-AT with K steps <= 1.05 (K + 1)x;
FreeLB-K <= 1.05 Kx. Floors (:func:`floor`), the ratio the extra passes' flops alone imply, with
P parameters and T tokens: a training forward is 2PT, its backward 4PT (activation gradients 2PT,
weight gradients 2PT). A PGD ascent step is a forward and a backward to the input only
(``torch.autograd.grad`` w.r.t. delta: no weight-gradient GEMMs), 4PT = 2/3 of a training pass,
so PGD-AT K costs 1 + 2K/3 (K=1: 1.67); FreeLB's K ascent steps each accumulate parameter
gradients, K full passes: K. RS-RP adds one pass over the embeddings (bytes, not flops): 1.00.
The optimizer step and clipping are paid once by every method, so a measured ratio may sit
slightly below its floor by their share of the baseline step.

RS-DA's step is the baseline's; its extra work is per epoch (synonym
substitution of the training set and its re-tokenisation), measured apart
(:func:`rsda_epoch_cost`) and reported per example against the baseline's time per example.
"""

from __future__ import annotations

import datetime
import gc
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _util import cuda_facts, device_name, versions

from fastrobust.config import (
    AdversarialConfig,
    BaselineConfig,
    Config,
    NoiseConfig,
    SynonymConfig,
    config_from_dict,
)
from fastrobust.methods import build_method
from fastrobust.methods.registry import MethodSection
from fastrobust.timing import NULL_TIMER, SectionTimer
from fastrobust.training.engine import backward_calls, standalone_engine

# name: (hidden, layers, heads, intermediate, vocab)
MODELS = {
    "xlmr-base": (768, 12, 12, 3072, 250002),
    "xlmr-large": (1024, 24, 16, 4096, 250002),
    "h256": (256, 4, 4, 1024, 8000),
    "tiny": (64, 2, 2, 128, 1000),
}
# name: (config, cost in baseline steps: the target before its 5 % margin)
METHODS = {
    "baseline": (BaselineConfig(), 1),
    "rs-rp": (NoiseConfig(sigma=0.5), 1),
    "rs-da": (SynonymConfig(), 1),
    "pgd-k1": (AdversarialConfig(kind="pgd", steps=1, init_magnitude=0.1), 2),
    "pgd-k2": (AdversarialConfig(kind="pgd", steps=2, init_magnitude=0.1), 3),
    "pgd-k3": (AdversarialConfig(kind="pgd", steps=3, init_magnitude=0.1), 4),
    "freelb-k2": (AdversarialConfig(kind="freelb", steps=2, init_magnitude=0.1), 2),
    "freelb-k3": (AdversarialConfig(kind="freelb", steps=3, init_magnitude=0.1), 3),
}
# RS-DA needs a synonym table to be built; its step never looks at it.
_SYNONYMS = {"good": ["fine"]}


def target(method: str) -> float:
    return 1.05 * METHODS[method][1]


def floor(method: str) -> float:
    """The step-time ratio to the baseline that the extra passes' flops imply (module docstring)."""
    cfg = METHODS[method][0]
    if getattr(cfg, "kind", None) == "pgd":
        return 1.0 + 2.0 * cfg.steps / 3.0
    if getattr(cfg, "kind", None) == "freelb":
        return float(cfg.steps)
    return 1.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Setup:
    model: torch.nn.Module
    batch: dict[str, torch.Tensor]
    real_tokens: int


def engine_config(precision: str = "fp32", **model: object) -> Config:
    """The config of the benchmarks' engine: the trainer's optimizer defaults (AdamW, clipping at
    1.0, linear schedule) at learning rate 1e-5, ``precision``, and ``model.*`` keys as given."""
    return config_from_dict({"model": {"precision": precision, **model}, "optim": {"learning_rate": 1e-5}})


def engine_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    method_cfg: MethodSection,
    precision: str,
    device: torch.device,
    **model_keys: object,
) -> Callable:
    """``step(timer=None)``: one optimizer step of the section ``method_cfg`` on ``model`` and
    ``batch`` through the trainer's engine (``micro_step`` then ``optimizer_step``); ``model_keys``:
    ``model.*`` config keys (``compile=True``: the engine compiles the forward, as the trainer does)."""
    method = build_method(method_cfg, task_synonyms=_SYNONYMS if method_cfg.kind == "rs-da" else None)
    method.setup(model)
    cfg = engine_config(precision, **model_keys)
    eng = standalone_engine(model, cfg, device, backward_calls=backward_calls(method_cfg))

    def step(timer: SectionTimer | None = None) -> None:
        loss = eng.micro_step(method, batch, timer if timer is not None else NULL_TIMER)
        eng.optimizer_step(loss)

    return step


def build(model_name: str, device: torch.device, batch: int, seq: int, seed: int = 0) -> Setup:
    """A randomly initialised XLM-R classifier (built directly on ``device``), AdamW, one batch."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification  # ~2 s: not for summarize

    hidden, layers, heads, inter, vocab = MODELS[model_name]
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=max(514, seq + 2),
        num_labels=2,
    )
    with torch.device(device):
        model = XLMRobertaForSequenceClassification(cfg)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, vocab, (batch, seq), generator=gen) * mask + cfg.pad_token_id * (1 - mask)
    data = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": torch.randint(0, 2, (batch,), generator=gen).to(device),
    }
    return Setup(model, data, int(mask.sum()))


def make_step(setup: Setup, method_name: str, precision: str, device: torch.device) -> Callable:
    """``step(timer=None)``: one optimizer step of ``method_name`` as the trainer runs it."""
    return engine_step(setup.model, setup.batch, METHODS[method_name][0], precision, device)


class _Clock:
    """Times a sequence of calls without synchronising between them (CUDA events), or with the
    host clock on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[tuple[str, object, object]] = []

    def run(self, name: str, fn: Callable[[], None]) -> None:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
        else:
            start = time.perf_counter()
            fn()
            end = time.perf_counter()
        self.marks.append((name, start, end))

    def seconds(self) -> list[tuple[str, float]]:
        _sync(self.device)
        if self.device.type == "cuda":
            return [(n, s.elapsed_time(e) / 1e3) for n, s, e in self.marks]
        return [(n, e - s) for n, s, e in self.marks]


def _estimate(steps: dict[str, Callable], device: torch.device) -> tuple[dict, dict, dict]:
    """One timed step of every method: ({method: seconds}, {method: peak GiB}, {method: peak GiB
    above what was allocated before the step}); the peaks on CUDA only."""
    est, peak, peak_extra = {}, {}, {}
    for name, step in steps.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        est[name] = time.perf_counter() - t0
        if device.type == "cuda":
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**30
            peak_extra[name] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
    return est, peak, peak_extra


def _rounds(
    steps: dict[str, Callable], device: torch.device, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``rounds`` interleaved rounds (baseline, the others in a shuffled order, baseline again):
    ({method: step seconds}, {method: ratio to the mean of its round's two baseline steps}; the
    baseline's ratio is its second step over its first)."""
    methods = list(steps)
    rng = random.Random(0)
    times: dict[str, list[float]] = {n: [] for n in methods}
    ratios: dict[str, list[float]] = {n: [] for n in methods}
    for _ in range(rounds):
        others = [n for n in methods if n != "baseline"]
        rng.shuffle(others)
        clock = _Clock(device)
        for name in ["baseline", *others, "baseline"]:
            clock.run(name, steps[name])
        secs = clock.seconds()
        b0, b1 = secs[0][1], secs[-1][1]
        for name, s in secs[1:-1]:
            times[name].append(s)
            ratios[name].append(s / ((b0 + b1) / 2))
        times["baseline"] += [b0, b1]
        ratios["baseline"].append(b1 / b0)
    return times, ratios


def _split(step: Callable, device: torch.device, split_steps: int) -> dict[str, float]:
    """The share of each timed section (SectionTimer) of one method's step, and ``step_s``."""
    timer = SectionTimer(enabled=True, device=device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(split_steps):
        step(timer)
    _sync(device)
    total = (time.perf_counter() - t0) / split_steps
    sec = {k: v / split_steps for k, v in timer.totals.items()}
    sec["other"] = max(0.0, total - sum(sec.values()))
    return {k: v / total for k, v in sec.items()} | {"step_s": total}


def measure_group(
    model_name: str,
    precision: str,
    device: torch.device,
    *,
    methods: list[str],
    batch: int = 32,
    seq: int = 128,
    budget_s: float = 20.0,
    min_rounds: int = 3,
    max_rounds: int = 15,
    split_steps: int = 2,
    warmup: int = 2,
) -> list[dict]:
    """Rows (one per method) of one (model, precision) group; see the module docstring."""
    if "baseline" not in methods:
        methods = ["baseline", *methods]
    t_build = time.perf_counter()
    setup = build(model_name, device, batch, seq)
    steps = {name: make_step(setup, name, precision, device) for name in methods}
    _sync(device)
    build_s = time.perf_counter() - t_build
    t_warm = time.perf_counter()
    for name in methods:
        for _ in range(warmup):
            steps[name]()
    _sync(device)
    warm_s = time.perf_counter() - t_warm
    est, peak, peak_extra = _estimate(steps, device)
    per_round = sum(est.values()) + est["baseline"]
    rounds = max(min_rounds, min(max_rounds, int(budget_s / max(per_round, 1e-9))))
    t_rounds = time.perf_counter()
    times, ratios = _rounds(steps, device, rounds)
    rounds_s = time.perf_counter() - t_rounds
    split = {name: _split(steps[name], device, split_steps) for name in methods}
    hidden, layers, *_ = MODELS[model_name]
    rows = []
    for name in methods:
        step_s = statistics.median(times[name])
        r = ratios[name]
        rows.append(
            {
                "kind": "row",
                "model": model_name,
                "hidden": hidden,
                "layers": layers,
                "precision": precision,
                "batch": batch,
                "seq": seq,
                "method": name,
                "step_ms": 1e3 * step_s,
                "step_ms_min": 1e3 * min(times[name]),
                "step_ms_max": 1e3 * max(times[name]),
                "samples_per_s": batch / step_s,
                "tokens_per_s": setup.real_tokens / step_s,
                "ratio": statistics.median(r),
                "ratio_min": min(r),
                "ratio_max": max(r),
                "rounds": rounds,
                "target": target(name),
                "floor": round(floor(name), 4),
                "split": split[name],
                "peak_gib": peak.get(name),
                "peak_extra_gib": peak_extra.get(name),
                "group_seconds": {"build": build_s, "warmup": warm_s, "rounds": rounds_s},
            }
        )
    del steps, setup
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def rsda_epoch_cost(n: int = 2048, seed: int = 0) -> dict:
    """Seconds per training example of RS-DA's per-epoch work: the synonym substitution of the
    training set (``augment_dataset``) and its re-tokenisation (``encode_dataset``; the baseline
    tokenises once per run). Synthetic PAWS-like pairs of 12-25 words from a 3,000-word vocabulary
    in which every third word has two synonyms; a Unigram tokenizer (XLM-R's kind) trained on
    them with ``tokenizers``. Runs on the CPU, like the trainer's data pipeline."""
    # datasets and the HF text stack load only for this case (the step timings need neither).
    import datasets
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from fastrobust.data import encode_dataset  # datasets too: only for this case
    from fastrobust.data.xtreme import pairs_dataset
    from fastrobust.methods.synonyms import SynonymTable, augment_dataset

    datasets.disable_progress_bars()  # as the trainer: no progress bars in the measurement
    rng = random.Random(seed)
    words = [f"word{i}" for i in range(3000)]
    table = SynonymTable({w: [f"{w}a", f"{w}b"] for w in words[::3]})

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(12, 25)))

    s1 = [sentence() for _ in range(n)]
    s2 = [sentence() for _ in range(n)]
    data = pairs_dataset(s1, s2, [rng.randint(0, 1) for _ in range(n)])
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    corpus = s1 + s2 + [" ".join(sum(table.table.values(), [])[i : i + 20]) for i in range(0, 2000, 20)]
    tok.train_from_iterator(
        corpus, trainers.UnigramTrainer(vocab_size=4000, special_tokens=specials, unk_token="<unk>")
    )
    ids = {t: tok.token_to_id(t) for t in specials}
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"],
    )
    t0 = time.perf_counter()
    augmented = augment_dataset(data, table, seed=seed, epoch=1)
    t1 = time.perf_counter()
    encode_dataset(augmented, fast, 128)
    t2 = time.perf_counter()
    return {
        "kind": "rsda_epoch",
        "examples": n,
        "substitute_s_per_example": (t1 - t0) / n,
        "tokenize_s_per_example": (t2 - t1) / n,
    }


def run_meta(device: torch.device) -> dict:
    meta = {
        "kind": "meta",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        **versions(),
    }
    try:
        import transformers  # ~0.6 s: only for the version, when a run's metadata is written

        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    meta.update(cuda_facts(device) if device.type == "cuda" else {"device": device_name(device)})
    return meta


# ---------------------------------------------------------------------------------- summary


def summarize(records: list[dict]) -> str:
    """Markdown: one table per (model, precision) group, then RS-DA's per-epoch cost."""
    meta = next((r for r in records if r.get("kind") == "meta"), {})
    facts = [
        f"{k} {meta[k]}"
        for k in ("device", "driver", "cuda_runtime", "torch", "triton", "transformers")
        if k in meta
    ]
    lines = [
        f"Training step on {', '.join(facts)}; {meta.get('date', '?')}; fp32 matmul precision "
        f"'{meta.get('float32_matmul_precision', '?')}' (torch's default: no TF32).",
        "",
    ]
    rows = [r for r in records if r.get("kind") == "row"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["precision"]), []).append(r)
    base_per_example = {}
    for (model, precision), rs in groups.items():
        r0 = rs[0]
        lines.append(
            f"**{model}** (hidden {r0['hidden']}, {r0['layers']} layers), {precision}, batch {r0['batch']} x "
            f"{r0['seq']}, {r0['rounds']} interleaved rounds:"
        )
        lines.append("")
        lines.append(
            "| method | step ms (median, range) | samples/s | ratio vs baseline (median, range) "
            "| flops floor | target | met | fwd / bwd / pert / other (synced) | peak GiB (+ over state) |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | :---: | --- | ---: |")
        for r in rs:
            sp = r["split"]
            split = " / ".join(
                f"{100 * sp.get(k, 0.0):.0f}" for k in ("forward", "backward", "perturbation", "other")
            )
            met = "noise" if r["method"] == "baseline" else ("yes" if r["ratio"] <= r["target"] else "NO")
            peak = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} (+{r['peak_extra_gib']:.1f})"
            ratio = f"{r['ratio']:.3f} ({r['ratio_min']:.3f}–{r['ratio_max']:.3f})"
            lines.append(
                f"| {r['method']} | {r['step_ms']:.1f} ({r['step_ms_min']:.1f}–{r['step_ms_max']:.1f}) | "
                f"{r['samples_per_s']:.0f} | {ratio} | {r.get('floor', floor(r['method'])):.2f} | "
                f"<= {r['target']:.2f} | {met} | {split} % | {peak} |"
            )
            if r["method"] == "baseline":
                base_per_example[(model, precision)] = r["step_ms"] / 1e3 / r["batch"]
        lines.append("")
    for r in records:
        if r.get("kind") == "rsda_epoch":
            per = r["substitute_s_per_example"] + r["tokenize_s_per_example"]
            lines.append(
                f"RS-DA per-epoch work (CPU, {r['examples']} pairs): substitution "
                f"{1e6 * r['substitute_s_per_example']:.0f} us + re-tokenisation "
                f"{1e6 * r['tokenize_s_per_example']:.0f} us per example; relative to a baseline step's time "
                "per example: "
                + ", ".join(f"{m} {p} {100 * per / b:.1f} %" for (m, p), b in base_per_example.items())
                + " (once per epoch, so added to RS-DA's ratio in full when the data pipeline does not "
                "overlap with the GPU)."
            )
        if r.get("kind") == "error":
            lines.append(f"**{r.get('what')}: {r.get('error')}**")
        if r.get("kind") == "budget":
            lines.append(f"**Time budget reached: not run {r.get('not_run')}**")
    return "\n".join(lines)
