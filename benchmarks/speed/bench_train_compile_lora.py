"""Training-step time of ``model.compile`` against eager, and of LoRA + PGD against LoRA alone (CPU).

One step is what ``fastrobust train`` runs per optimizer step without DeepSpeed, through the
trainer's own engine (``TrainEngine.micro_step`` + ``optimizer_step``: forwards, perturbation,
backward, clipping at 1.0, AdamW, scheduler, zero_grad; :func:`_train_grid.engine_step`), on
the randomly initialised XLM-R-style classifier of :mod:`_train_grid` (hidden 256, 4 layers,
batch 8 x 128, real lengths in [64, 128], fp32). Variants:

* ``eager`` / ``compiled`` for baseline and PGD K=1 on the full model: the compiled forward is
  :class:`fastrobust.training.compiled.CompiledModel` (inductor, sequence length marked dynamic),
  built by the engine from ``model.compile: true``; the eager one is the module itself (same weights);
* ``lora`` baseline and PGD K=1: the model wrapped by :func:`fastrobust.training.lora.apply_lora` with
  ``model.lora``'s defaults (r 8 on query and value), AdamW over the adapter and head only.

Timing: process CPU time (``time.process_time``) with one torch thread, so that other jobs on a
shared machine do not inflate it; warm-up steps first (they compile), then R rounds in which every
variant runs one step, in the same order; the table gives each variant's median over rounds and
the per-round ratios (median and range over rounds: a drift of the machine cancels within a round).
``python benchmarks/speed/bench_train_compile_lora.py [--rounds 10] [--out x.json]``, ``--summary x.json``
(``--smoke``: a tiny shape, 2 rounds, the aot_eager backend — checks the plumbing only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # `python benchmarks/speed/bench_train_compile_lora.py`

import _train_grid  # noqa: E402

from fastrobust.config import AdversarialConfig, BaselineConfig, LoraSection  # noqa: E402
from fastrobust.training.compiled import compiled_graphs  # noqa: E402
from fastrobust.training.lora import apply_lora  # noqa: E402

METHODS = {"baseline": BaselineConfig(), "pgd-k1": AdversarialConfig(kind="pgd", steps=1, init_magnitude=0.1)}


def variants(shape: str, batch: int, seq: int, backend: str) -> dict[str, Callable[[], None]]:
    """Every variant's step: the trainer's engine (:func:`_train_grid.engine_step`) on the full model,
    the same compiling its forward (``model.compile``), and on the LoRA model."""
    cpu = torch.device("cpu")
    full = _train_grid.build(shape, cpu, batch, seq)
    lora = _train_grid.build(shape, cpu, batch, seq)
    lora_model = apply_lora(lora.model, LoraSection(dropout=0.0), base_path="random-init")
    lora_model.train()
    compiled = {"compile": True, "compile_mode": "default", "compile_backend": backend}
    out = {}
    for name, cfg in METHODS.items():
        out[f"eager {name}"] = _train_grid.engine_step(full.model, full.batch, cfg, "fp32", cpu)
        out[f"compiled {name}"] = _train_grid.engine_step(
            full.model, full.batch, cfg, "fp32", cpu, **compiled
        )
        out[f"lora {name}"] = _train_grid.engine_step(lora_model, lora.batch, cfg, "fp32", cpu)
    return out


def measure(steps: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, list[float]]:
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        for _ in range(warmup):
            step()
    graphs = compiled_graphs()
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.process_time()
            step()
            cpu[name].append(time.process_time() - t0)
    if compiled_graphs() != graphs:
        raise RuntimeError(f"recompiled during the timed rounds ({graphs} -> {compiled_graphs()} graphs)")
    return cpu


def _ratio(cpu: dict[str, list[float]], a: str, b: str) -> str:
    """Median (and range) over rounds of a's step time / b's step time in the same round."""
    r = [x / y for x, y in zip(cpu[a], cpu[b])]
    return f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"


def table(cpu: dict[str, list[float]]) -> str:
    """Markdown: each variant's median step, and per-round ratios (median, range over rounds)."""
    rows = [
        ("eager baseline", None, ""),
        ("compiled baseline", "eager baseline", "compiled / eager"),
        ("eager pgd-k1", None, ""),
        ("compiled pgd-k1", "eager pgd-k1", "compiled / eager"),
        ("lora baseline", "eager baseline", "LoRA / full-model eager baseline"),
        ("lora pgd-k1", "lora baseline", "LoRA + PGD K=1 / LoRA baseline"),
    ]
    lines = ["| variant | step CPU ms (median) | ratio (median, range over rounds) |", "| --- | ---: | --- |"]
    for name, ref, what in rows:
        ratio = f"{_ratio(cpu, name, ref)} {what}" if ref else "-"
        lines.append(f"| {name} | {statistics.median(cpu[name]) * 1e3:.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--summary", type=Path, default=None, help="print the table of a saved --out file")
    args = parser.parse_args(argv)
    if args.summary is not None:
        print(table(json.loads(args.summary.read_text())["cpu_s"]))
        return 0
    torch.set_num_threads(1)
    shape, batch, seq = ("tiny", 2, 16) if args.smoke else ("h256", 8, 128)
    rounds, backend = (2, "aot_eager") if args.smoke else (args.rounds, args.backend)
    cpu = measure(variants(shape, batch, seq, backend), rounds, 1 if args.smoke else args.warmup)
    print(
        f"{shape}, batch {batch} x {seq}, fp32, backend {backend}, {rounds} rounds, 1 thread, "
        "process CPU time"
    )
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(table(cpu))
    if args.out is not None:
        args.out.write_text(json.dumps({"shape": shape, "batch": batch, "seq": seq, "cpu_s": cpu}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
