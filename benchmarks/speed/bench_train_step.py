"""Training-step time of every method relative to the baseline, same model and batch.

Targets (the perturbation itself must cost next to nothing): RS-RP (and RS-DA) <= 1.05x
baseline; PGD-AT with K ascent steps <= 1.05 (K + 1)x (K delta-only forward/backward + 1
training); FreeLB-K <= 1.05 Kx (K forward/backward passes, all into the parameters).

* **CPU** (pytest-benchmark, as in BENCHMARKS.md): one step = ``method.training_step`` + AdamW +
  zero_grad on a hidden-256 / 4-layer XLM-R-style classifier, batch 8 x 128; the ratio is the
  median of A/B-interleaved pairs (baseline step, method step, ...); pytest-benchmark times the
  method's step. ``pytest benchmarks/speed/bench_train_step.py --benchmark-enable -s``; the table is
  printed and written to ``.benchmarks/train_step.md``.
* **CUDA**: ``python benchmarks/speed/bench_train_step.py --out train.jsonl`` runs
  ``_train_grid.measure_group`` for XLM-R base (768, 12 layers) and large (1024, 24 layers)
  shapes, random weights, batch 32 x 128, bf16 autocast and fp32, methods baseline, RS-RP,
  RS-DA, PGD K=1/2/3, FreeLB K=2/3: step time, samples/s, ratio to the baseline from
  interleaved rounds (median and range), the forward/backward/perturbation split (synchronised
  timers, separate steps), peak memory; plus RS-DA's per-epoch CPU work. A time budget sizes
  the rounds and stops starting new groups. ``--summary train.jsonl`` prints the Markdown.
  On a GPU, ``pytest benchmarks/speed/bench_train_step.py`` runs the same groups.

``FASTROBUST_BENCH_SMOKE=1`` (or ``--smoke``): one tiny shape, few methods / rounds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `python benchmarks/speed/bench_train_step.py`

import _train_grid  # noqa: E402
from _util import (  # noqa: E402
    SMOKE,
    RecordSink,
    bench_device,
    cpu_threads_for_timing,
    device_name,
    timed,
    versions,
)

DEVICE = bench_device()

# name: (_train_grid model, batch, seq); the model's (hidden, layers, heads, intermediate, vocab)
# are _train_grid.MODELS' (the CUDA groups are _train_grid's: XLM-R base and large, batch 32 x 128)
if SMOKE:
    SHAPES = {"tiny-h64": ("tiny", 4, 32)}
else:
    SHAPES = {"cpu-h256": ("h256", 8, 128)}

# name: (config, cost of the step in baseline steps, i.e. the target before the 5 % margin): the
# CUDA grid's methods; RS-DA's step is the baseline's (its cost is per epoch, see _train_grid)
METHODS = {k: v for k, v in _train_grid.METHODS.items() if k != "rs-da"}
if SMOKE:
    METHODS = {k: METHODS[k] for k in ("baseline", "rs-rp", "pgd-k1", "freelb-k2")}

RESULTS: list[dict] = []
_MODELS: dict[str, _train_grid.Setup] = {}


def _setup(shape: str) -> _train_grid.Setup:
    """The model and batch of ``shape`` (:func:`_train_grid.build`), built once per session
    (the same for every method)."""
    if shape not in _MODELS:
        model_name, batch, seq = SHAPES[shape]
        _MODELS[shape] = _train_grid.build(model_name, DEVICE, batch, seq)
    return _MODELS[shape]


def _step_fn(shape: str, method_name: str):
    """One optimizer step of ``method_name`` on ``shape`` through the trainer's engine
    (:func:`_train_grid.engine_step`): bf16 autocast on CUDA, fp32 on the CPU."""
    setup = _setup(shape)
    precision = "bf16" if DEVICE.type == "cuda" else "fp32"
    return _train_grid.engine_step(setup.model, setup.batch, METHODS[method_name][0], precision, DEVICE)


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


# ---------------------------------------------------------------------------------- CUDA

CUDA_MODELS = ["tiny"] if SMOKE else ["xlmr-base", "xlmr-large"]
CUDA_PRECISIONS = ["bf16"] if SMOKE else ["bf16", "fp32"]
CUDA_METHODS = ["baseline", "rs-rp", "pgd-k1", "freelb-k2"] if SMOKE else list(_train_grid.METHODS)


@functools.lru_cache(maxsize=8)
def _cuda_group(model: str, precision: str) -> dict[str, dict]:
    small = model == "tiny"
    rows = _train_grid.measure_group(
        model,
        precision,
        torch.device("cuda"),
        methods=CUDA_METHODS,
        batch=4 if small else 32,
        seq=32 if small else 128,
        budget_s=2.0 if small else 12.0,
    )
    return {r["method"]: r for r in rows}


if DEVICE.type == "cuda":

    @pytest.mark.parametrize("method_name", CUDA_METHODS)
    @pytest.mark.parametrize("precision", CUDA_PRECISIONS)
    @pytest.mark.parametrize("model", CUDA_MODELS)
    def test_train_step(benchmark, model: str, precision: str, method_name: str) -> None:
        """CUDA: the row of one method in its (model, precision) group, measured interleaved
        with CUDA events (extra_info; pytest-benchmark's single round is not a timing)."""
        row = _cuda_group(model, precision)[method_name]
        benchmark.extra_info.update(row=row, device=device_name(DEVICE), **versions())
        benchmark.pedantic(torch.cuda.synchronize, rounds=1, iterations=1)
        RESULTS.append(
            {
                "shape": f"{model}-{precision}",
                "method": method_name,
                "step_ms": row["step_ms"],
                "ratio": row["ratio"],
                "target": row["target"],
            }
        )
        assert row["ratio"] > 0  # speed is never asserted; the ratio is reported

else:

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
        model_name, batch, seq = SHAPES[shape]
        hidden, layers, *_ = _train_grid.MODELS[model_name]
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


# ---------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Training-step cost per method on CUDA (see the module docstring)."
    )
    p.add_argument("--out", default=None, help="JSONL file of results (written as measured)")
    p.add_argument(
        "--summary", metavar="JSONL", default=None, help="print the Markdown tables of a results file"
    )
    p.add_argument("--smoke", action="store_true", default=SMOKE, help="tiny model, few methods and rounds")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=None, help="comma list of " + ", ".join(_train_grid.MODELS))
    p.add_argument("--precisions", default=None, help="comma list of bf16, fp32 (default both)")
    p.add_argument("--methods", default=None, help="comma list of " + ", ".join(_train_grid.METHODS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--rounds-s", type=float, default=None, help="time for the interleaved rounds of a group")
    p.add_argument("--budget-s", type=float, default=110.0, help="start no new group after this many seconds")
    p.add_argument("--no-rsda-epoch", action="store_true", help="skip RS-DA's per-epoch CPU cost")
    return p


def _show(rec: dict) -> None:
    """The console line of one record as it is measured."""
    if rec.get("kind") == "row":
        print(
            f"{rec['model']:>10} {rec['precision']} {rec['method']:>9}: {rec['step_ms']:8.1f} ms  "
            f"ratio {rec['ratio']:.3f} [{rec['ratio_min']:.3f}, {rec['ratio_max']:.3f}] "
            f"(target <= {rec['target']:.2f})  peak {rec['peak_gib'] or 0:.1f} GiB",
            flush=True,
        )
    elif rec.get("kind") != "meta":
        print(json.dumps(rec)[:400], flush=True)


def _error(what: str, exc: Exception) -> dict:
    return {"kind": "error", "what": what, "error": f"{type(exc).__name__}: {exc}"[:500]}


def _run_groups(
    emit, device: torch.device, groups: list[tuple[str, str]], *, methods: list[str], batch: int, seq: int,
    rounds_s: float, start: float, budget_s: float, smoke: bool,
) -> int:  # fmt: skip
    """Measure every (model, precision) group in order until ``budget_s`` passed since ``start``
    (a perf_counter time); returns the number of groups that failed (each failure is a record; the
    next group still runs)."""
    errors = 0
    for n, (model, precision) in enumerate(groups):
        if time.perf_counter() - start > budget_s:
            emit({"kind": "budget", "not_run": [f"{m}-{q}" for m, q in groups[n:]]})
            break
        try:
            for row in _train_grid.measure_group(
                model,
                precision,
                device,
                methods=methods,
                batch=batch,
                seq=seq,
                budget_s=rounds_s,
                min_rounds=2 if smoke else 3,
                split_steps=1 if smoke else 2,
                warmup=1 if smoke else 2,
            ):
                emit(row)
        except Exception as exc:  # reported; the next group still runs
            errors += 1
            emit(_error(f"{model}-{precision}", exc))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return errors


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.summary:
        print(
            _train_grid.summarize([json.loads(x) for x in Path(args.summary).read_text().splitlines() if x])
        )
        return 0
    device = torch.device(args.device)
    smoke = args.smoke

    def pick(text, default, known):
        items = default if text is None else [t for t in text.split(",") if t]
        bad = [t for t in items if t not in known]
        if bad:
            p.error(f"unknown {bad}; choose from {list(known)}")
        return items

    models = pick(args.models, ["tiny"] if smoke else ["xlmr-base", "xlmr-large"], _train_grid.MODELS)
    precisions = pick(args.precisions, ["fp32"] if smoke else ["bf16", "fp32"], ("bf16", "fp32", "fp16"))
    methods = pick(args.methods, list(_train_grid.METHODS), _train_grid.METHODS)
    batch = args.batch or (4 if smoke else 32)
    seq = args.seq or (32 if smoke else 128)
    rounds_s = args.rounds_s if args.rounds_s is not None else (0.5 if smoke else 10.0)
    start = time.perf_counter()
    with RecordSink(args.out, _show) as emit:
        emit(_train_grid.run_meta(device))
        # bf16 first (the configuration users train in), then fp32
        groups = [(m, pr) for pr in precisions for m in models]
        errors = _run_groups(
            emit, device, groups, methods=methods, batch=batch, seq=seq, rounds_s=rounds_s,
            start=start, budget_s=args.budget_s, smoke=smoke,
        )  # fmt: skip
        if not args.no_rsda_epoch and "rs-da" in methods:
            try:
                emit(_train_grid.rsda_epoch_cost(n=256 if smoke else 2048))
            except Exception as exc:
                errors += 1
                emit(_error("rs-da epoch cost", exc))
    print()
    print(_train_grid.summarize(emit.records))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
