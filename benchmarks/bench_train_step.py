"""Training-step time of every method relative to the baseline, same model and batch.

One step = ``method.training_step`` (forwards, perturbation, backward) + AdamW step + zero_grad,
on a randomly initialised XLM-R-style classifier (RoBERTa position ids, right padding, real
lengths between L/2 and L). Targets (the perturbation itself must cost next to nothing):

* RS-RP <= 1.05 x baseline (one forward + backward, plus the fused noise);
* PGD-AT with K ascent steps <= 1.05 x (K + 1) x baseline (K delta-only forward/backward + 1 training);
* FreeLB with K steps <= 1.05 x K x baseline (K forward/backward passes, all into the parameters).

The ratio is measured A/B interleaved (baseline step, method step, baseline step, ...) and the
median of the per-pair ratios is reported, which keeps it meaningful on a shared machine where
absolute times drift. pytest-benchmark times the method's step itself.

Shapes: CPU hidden 256 / 4 layers, batch 8 x 128; CUDA the XLM-R base and large shapes, batch
32 x 128, bf16 autocast. ``FASTROBUST_BENCH_SMOKE=1``: one tiny shape, four methods, one round.
Run: ``make bench`` or ``pytest benchmarks/bench_train_step.py --benchmark-enable -s``; the ratio
table is printed and written to ``.benchmarks/train_step.md``.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
import torch
from _util import SMOKE, bench_device, cpu_threads_for_timing, device_name, timed, versions

from fastrobust.config import AdversarialConfig, BaselineConfig, NoiseConfig
from fastrobust.methods import build_method

DEVICE = bench_device()

# name: (hidden, layers, heads, intermediate, vocab, batch, seq)
if SMOKE:
    SHAPES = {"tiny-h64": (64, 2, 2, 128, 1000, 4, 32)}
elif DEVICE.type == "cuda":
    SHAPES = {
        "xlmr-base": (768, 12, 12, 3072, 250002, 32, 128),
        "xlmr-large": (1024, 24, 16, 4096, 250002, 32, 128),
    }
else:
    SHAPES = {"cpu-h256": (256, 4, 4, 1024, 8000, 8, 128)}

# name: (config, cost of the step in baseline steps, i.e. the target before the 5 % margin)
METHODS = {
    "baseline": (BaselineConfig(), 1),
    "rs-rp": (NoiseConfig(sigma=0.5), 1),
    "pgd-k1": (AdversarialConfig(kind="pgd", steps=1, init_magnitude=0.1), 2),
    "pgd-k2": (AdversarialConfig(kind="pgd", steps=2, init_magnitude=0.1), 3),
    "pgd-k3": (AdversarialConfig(kind="pgd", steps=3, init_magnitude=0.1), 4),
    "freelb-k2": (AdversarialConfig(kind="freelb", steps=2, init_magnitude=0.1), 2),
    "freelb-k3": (AdversarialConfig(kind="freelb", steps=3, init_magnitude=0.1), 3),
}
if SMOKE:
    METHODS = {k: METHODS[k] for k in ("baseline", "rs-rp", "pgd-k1", "freelb-k2")}

RESULTS: list[dict] = []
_MODELS: dict[str, tuple] = {}


def _setup(shape: str):
    """(model, optimizer, batch) for ``shape``, built once per session (the same for every method)."""
    if shape in _MODELS:
        return _MODELS[shape]
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    hidden, layers, heads, inter, vocab, batch, seq = SHAPES[shape]
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=seq + 2,
        num_labels=2,
    )
    model = XLMRobertaForSequenceClassification(cfg).to(DEVICE).train()
    lengths = torch.randint(seq // 2, seq + 1, (batch,))
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, vocab, (batch, seq)) * mask + cfg.pad_token_id * (1 - mask)
    data = {
        "input_ids": ids.to(DEVICE),
        "attention_mask": mask.to(DEVICE),
        "labels": torch.randint(0, 2, (batch,)).to(DEVICE),
    }
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    _MODELS[shape] = (model, opt, data)
    return _MODELS[shape]


def _step_fn(shape: str, method_name: str):
    model, opt, data = _setup(shape)
    method = build_method(METHODS[method_name][0])
    method.setup(model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE.type == "cuda" else None

    def backward(loss: torch.Tensor) -> None:
        loss.backward()

    def step() -> None:
        if autocast is not None:
            with autocast:
                method.training_step(model, data, backward)
        else:
            method.training_step(model, data, backward)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _seconds(fn) -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    clock = time.process_time if cpu_threads_for_timing() == 1 else time.perf_counter
    start = clock()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return clock() - start


@pytest.fixture(scope="module", autouse=True)
def _threads_and_report():
    threads = cpu_threads_for_timing()
    before = torch.get_num_threads()
    if threads is not None and DEVICE.type == "cpu":
        torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)
    if RESULTS:
        lines = [
            f"Training step vs baseline on {device_name(DEVICE)} "
            f"({', '.join(f'{k} {v}' for k, v in versions().items())})",
            "",
            "| shape | method | step (ms, median) | ratio vs baseline (A/B median) | target | within |",
            "| --- | --- | ---: | ---: | ---: | :---: |",
        ]
        for r in RESULTS:
            lines.append(
                f"| {r['shape']} | {r['method']} | {r['step_ms']:.1f} | {r['ratio']:.3f} | "
                f"<= {r['target']:.2f} | {'yes' if r['ratio'] <= r['target'] else 'NO'} |"
            )
        text = "\n".join(lines)
        print("\n" + text)
        out = Path(os.environ.get("FASTROBUST_BENCH_OUT", ".benchmarks")) / "train_step.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


@pytest.mark.parametrize("method_name", list(METHODS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_train_step(benchmark, shape: str, method_name: str) -> None:
    base = _step_fn(shape, "baseline")
    step = _step_fn(shape, method_name)
    base()  # warm-up of both paths (allocator, autotuned kernels)
    step()
    pairs = 1 if SMOKE else (5 if DEVICE.type == "cpu" else 20)
    ratios, times = [], []
    for _ in range(pairs):
        tb = _seconds(base)
        tm = _seconds(step)
        ratios.append(tm / tb)
        times.append(tm)
    ratio = statistics.median(ratios)
    target = 1.05 * METHODS[method_name][1]
    timed(benchmark, step, DEVICE, budget_s=0.5 if SMOKE else 3.0)
    hidden, layers, _, _, _, batch, seq = SHAPES[shape]
    benchmark.extra_info.update(
        shape=shape,
        hidden=hidden,
        layers=layers,
        batch=batch,
        seq=seq,
        method=method_name,
        ratio_vs_baseline=round(ratio, 4),
        target=target,
        device=device_name(DEVICE),
        **versions(),
    )
    if hasattr(os, "getloadavg"):
        benchmark.extra_info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    RESULTS.append(
        {
            "shape": shape,
            "method": method_name,
            "step_ms": 1e3 * statistics.median(times),
            "ratio": ratio,
            "target": target,
        }
    )
    assert ratio > 0  # speed is never asserted; the ratio is reported
