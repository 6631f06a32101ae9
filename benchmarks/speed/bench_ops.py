"""Benchmarks of the fused ops against their pure-torch twin (eager and torch.compile).

* **CPU** (pytest-benchmark; what CPU users get): ``pytest benchmarks/speed/bench_ops.py --benchmark-enable``.
  Providers ``torch`` (= ``fastrobust.reference`` eager), ``torch_compile`` (its compiled twin),
  ``compile_global_rng`` (noise ops: compiled ``x + sigma * randn * mask`` with inductor's RNG);
  op ``copy`` is the yardstick. Timer: wall clock, or process CPU time with
  ``FASTROBUST_BENCH_CPU_TIMER=process``. Floors as in BENCHMARKS.md's CPU table.
* **CUDA**: ``python benchmarks/speed/bench_ops.py --out ops.jsonl`` runs the grid of
  ``_ops_cases.py`` (measured by ``_ops_grid.py`` through ``_ops_calls.py``: ops add_noise,
  noisy_copies n = 4 / 32, pgd_init, pgd_step L2 / Linf with and without embeds [, from delta =
  0]; shapes 8x128x768, 32x128x768, 32x512x1024; fp32, bf16; full and padded masks; providers
  eager / compile / triton and the same-shape copy), timed with
  CUDA events: ``events`` = ``triton.testing.do_bench`` (median, L2 flushed before each call)
  and ``graph`` = ``do_bench_cudagraph`` (~100 calls per CUDA graph, inputs rotating through
  more than L2; primary rows only). Each record is written to the JSONL file as soon as it is
  measured; a time budget (``--budget-s``) stops starting new cases. ``--sweep`` adds the tile
  sweep of ``_ops_sweep.py`` after the primary rows (its winner: a "sweep_winner" record that
  ``FASTROBUST_KERNEL_TUNING=ops.jsonl`` makes the planners adopt). ``--dry-run``: the same
  passes on CPU at the grid's structure in miniature (``DRY_SHAPES``), every timer one
  host-timed call, torch.compile traced by dynamo without compiling (its graph count is the
  GPU grid's), the triton provider through the interpreter. ``--summary ops.jsonl`` prints the
  Markdown tables for BENCHMARKS.md with the targets met or not (``_ops_summary.py``);
  ``--summary ops.json`` the table of a ``pytest --benchmark-json=ops.json`` run.
  On a GPU, ``pytest benchmarks/speed/bench_ops.py`` runs the same cases (events timer), one test
  each, failing on an error or a wrong result.

FASTROBUST_BENCH_SMOKE=1 (or ``--smoke``): tiny shapes, a few calls, no torch.compile.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `python benchmarks/speed/bench_ops.py` (pytest: conftest)

from _ops_cases import (  # noqa: E402
    DRY_SHAPES,
    GPU_DTYPES,
    GPU_OPS,
    GPU_SHAPES,
    MASKS,
    SMOKE_SHAPES,
    Case,
    Features,
    gpu_cases,
)
from _ops_grid import Run, measure_case, raise_recompile_limits, run_grid  # noqa: E402
from _ops_summary import summarize_file, summarize_gpu  # noqa: E402
from _ops_sweep import run_sweep  # noqa: E402
from _util import (  # noqa: E402
    SMOKE,
    RecordSink,
    cpu_threads_for_timing,
    device_name,
    peak_memory_mb,
    record,
    timed,
    versions,
)

from fastrobust import reference  # noqa: E402

# ============================================================================ CPU (pytest-benchmark)

DTYPES = [torch.float32] if SMOKE else [torch.float32, torch.bfloat16]
SHAPES = (
    [(2, 32, 64)]
    if SMOKE
    else [(b, length, h) for b in (8, 32) for length in (128, 512) for h in (768, 1024)]
)
OPS = ["copy", "add_noise", "noisy_copies", "pgd_step_l2", "pgd_step_linf"]
N_COPIES = 4
NOISE_OPS = ("add_noise", "noisy_copies")


def _cpu_providers() -> list[str]:
    return ["torch"] if SMOKE else ["torch", "torch_compile", "compile_global_rng"]


def _dtype_id(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _cpu_cases():
    for op in OPS:
        for provider in _cpu_providers():
            if op == "copy" and provider != "torch":
                continue
            if provider == "compile_global_rng" and op not in NOISE_OPS:
                continue
            for shape in SHAPES:
                for dtype in DTYPES:
                    yield pytest.param(
                        op,
                        provider,
                        shape,
                        dtype,
                        id=f"{op}-{provider}-{'x'.join(map(str, shape))}-{_dtype_id(dtype)}",
                    )


def _cpu_bytes_floor(op: str, shape, dtype: torch.dtype, mask: torch.Tensor) -> int:
    # The CPU table's floors (all tokens real): L2 counted as the exact two-pass 7 N of that table.
    n = shape[0] * shape[1] * shape[2] * torch.empty((), dtype=dtype).element_size()
    m = mask.numel() * mask.element_size()
    return {
        "copy": 2 * n,
        "add_noise": 2 * n + m,
        "noisy_copies": (1 + N_COPIES) * n + m,
        "pgd_step_l2": 7 * n + 2 * m,
        "pgd_step_linf": 5 * n + m,
    }[op]


def _global_rng_noise(x, sigma, mask, copies):
    shape = x.shape if copies is None else (copies, *x.shape)
    z = torch.randn(shape, device=x.device, dtype=torch.float32)
    return (x.float() + sigma * z * mask.unsqueeze(-1).float()).to(x.dtype)


def _cpu_call(op: str, provider: str, x, grad, delta, mask):
    if op == "copy":
        out = torch.empty_like(x)
        return lambda: out.copy_(x)
    kw = {
        "add_noise": lambda f: lambda: f.add_noise(x, 0.1, seed=1234, mask=mask),
        "noisy_copies": lambda f: lambda: f.noisy_copies(x, N_COPIES, 0.1, seed=1234, mask=mask),
        "pgd_step_l2": lambda f: (
            lambda: f.pgd_step(delta, grad, step_size=0.01, epsilon=0.1, norm="l2", mask=mask, embeds=x)
        ),
        "pgd_step_linf": lambda f: (
            lambda: f.pgd_step(delta, grad, step_size=0.01, epsilon=0.1, norm="linf", mask=mask, embeds=x)
        ),
    }
    if provider == "torch":
        return kw[op](reference)
    if provider == "torch_compile":

        class Compiled:
            add_noise = staticmethod(torch.compile(reference.add_noise, dynamic=False))
            noisy_copies = staticmethod(torch.compile(reference.noisy_copies, dynamic=False))
            pgd_step = staticmethod(torch.compile(reference.pgd_step, dynamic=False))

        return kw[op](Compiled)
    if provider == "compile_global_rng":
        fn = torch.compile(_global_rng_noise, dynamic=False)
        copies = None if op == "add_noise" else N_COPIES
        return lambda: fn(x, 0.1, mask, copies)
    raise AssertionError(provider)


@pytest.fixture(autouse=True, scope="module")
def _bench_settings():
    restore = raise_recompile_limits()
    old_threads = torch.get_num_threads()
    old_backend = os.environ.get("FASTROBUST_BACKEND")
    threads = cpu_threads_for_timing()
    if threads is not None and not torch.cuda.is_available():
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        os.environ["FASTROBUST_BACKEND"] = "triton"  # once for the module, never per call
    yield
    restore()
    torch.set_num_threads(old_threads)
    if old_backend is None:
        os.environ.pop("FASTROBUST_BACKEND", None)
    else:
        os.environ["FASTROBUST_BACKEND"] = old_backend


# ============================================================================ CUDA (pytest)


@functools.lru_cache(maxsize=1)
def _gpu_run() -> Run:
    return Run(
        device=torch.device("cuda"),
        features=Features.detect(),
        compile_mode="off" if SMOKE else "targets",
        triton=True,
        l2_bytes=int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0),
    )


if torch.cuda.is_available():
    _GPU_CASES = gpu_cases(
        SMOKE_SHAPES if SMOKE else GPU_SHAPES, GPU_DTYPES, list(GPU_OPS), MASKS, Features.detect()
    )

    @pytest.mark.parametrize("case", _GPU_CASES, ids=lambda c: c.key)
    def test_op(benchmark, case: Case) -> None:
        """CUDA: one case of the grid, CUDA-event timing (do_bench); the records go to extra_info
        (pytest-benchmark's own single round below is not a timing)."""
        run = _gpu_run()
        recs = measure_case(case, run, "events")
        benchmark.extra_info.update(records=recs, device=device_name(run.device), **versions())
        benchmark.pedantic(torch.cuda.synchronize, rounds=1, iterations=1)
        bad = [r for r in recs if "error" in r or r.get("check", "ok") != "ok"]
        assert not bad, bad  # an error or a wrong result on CUDA is a failure, not a number

else:

    @pytest.mark.parametrize("op, provider, shape, dtype", list(_cpu_cases()))
    def test_op(benchmark, op, provider, shape, dtype, bench_dev, copy_gbps):
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(shape, generator=gen).to(bench_dev, dtype)
        grad = torch.randn(shape, generator=gen).to(bench_dev, dtype)
        delta = (0.01 * torch.randn(shape, generator=gen)).to(bench_dev, dtype)
        mask = torch.ones(shape[:2], dtype=torch.long, device=bench_dev)
        call = _cpu_call(op, provider, x, grad, delta, mask)
        timed(benchmark, call, bench_dev, budget_s=0.5)
        record(
            benchmark,
            device=bench_dev,
            nbytes=_cpu_bytes_floor(op, shape, dtype, mask),
            copy_gbps=copy_gbps,
            op=op,
            provider=provider,
            shape="x".join(map(str, shape)),
            dtype=_dtype_id(dtype),
            peak_mem_mb=peak_memory_mb(call, bench_dev),
        )


# ============================================================================ command line


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"shape must be BxLxH, got {text!r}")
    return parts  # type: ignore[return-value]


def _csv(choices: Iterable[str]):
    choices = list(choices)

    def parse(text: str) -> list[str]:
        items = [t for t in text.split(",") if t]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {choices}")
        return items

    return parse


def _print_record(rec: dict) -> None:
    if rec.get("kind") == "result":
        what = rec.get("error") or f"{rec['median_ms'] * 1e3:10.1f} us {rec['gbps']:8.1f} GB/s"
        check = rec.get("check", "")
        print(
            f"{rec['op']:>20} {rec['shape']:>12} {rec['dtype']} {rec['mask']:>6} "
            f"{rec['provider']:>7} {rec['timer']:>6}: {what} {'' if check == 'ok' else check}",
            flush=True,
        )
    elif rec.get("kind") == "sweep":
        what = rec.get("error") or f"{rec['median_ms'] * 1e3:10.1f} us  x{rec['vs_default']:.3f} of default"
        print(f"sweep {rec['op']:>14} {rec['dtype']} {rec['field']}={rec['value']}: {what}", flush=True)
    elif rec.get("kind") != "meta":
        print(json.dumps(rec)[:400], flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CUDA grid of the fused ops (see the module docstring).")
    p.add_argument(
        "--out", default=None, help="JSONL file of results (one record per line, written as measured)"
    )
    p.add_argument(
        "--summary",
        metavar="FILE",
        default=None,
        help="print the Markdown tables of a results file: this command's JSONL, or the JSON of "
        "pytest --benchmark-json",
    )
    p.add_argument("--short", action="store_true", help="with --summary: only the targets table")
    p.add_argument("--smoke", action="store_true", default=SMOKE, help="tiny shapes, no torch.compile")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", type=lambda s: [_shape(x) for x in s.split(",")], default=None)
    p.add_argument("--dtypes", type=_csv(GPU_DTYPES), default=GPU_DTYPES)
    p.add_argument("--ops", type=_csv(GPU_OPS), default=list(GPU_OPS))
    p.add_argument("--masks", type=_csv(MASKS), default=MASKS)
    p.add_argument("--timers", type=_csv(["events", "graph"]), default=["events", "graph"])
    p.add_argument(
        "--compile-mode",
        choices=["targets", "all", "static", "dynamic", "off"],
        default=None,
        help="targets (default): the pgd_step ops only (static graphs per shape with embeds, dynamic "
        "shapes without); all: also the noise/init ops (dynamic)",
    )
    p.add_argument("--budget-s", type=float, default=150.0, help="start no new case after this many seconds")
    p.add_argument(
        "--sweep", action="store_true", help="tile sweep at the largest shape after the primary rows"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU: the GPU run's passes at tiny shapes, one host-timed call per timer, compile traced only",
    )
    args = p.parse_args(argv)
    if args.summary:
        print(summarize_file(args.summary, short=args.short))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    cuda = device.type == "cuda"
    # The triton provider: CUDA, or CPU tensors in the interpreter (plumbing checks only). The
    # backend is chosen once here; its calls never touch the environment.
    triton = cuda or os.environ.get("TRITON_INTERPRET") == "1"
    if triton:
        os.environ["FASTROBUST_BACKEND"] = "triton"
    smoke, dry = args.smoke, args.dry_run
    if dry and cuda:
        p.error("--dry-run is the CPU rehearsal of a GPU run: use --device cpu")
    run = Run(
        device=device,
        features=Features.detect(),
        compile_mode=args.compile_mode or ("off" if smoke else "targets"),
        triton=triton,
        cpu_calls=2 if smoke else 5,
        dry=dry,
    )
    shapes = args.shapes or (DRY_SHAPES if dry else SMOKE_SHAPES if smoke else GPU_SHAPES)
    cases = gpu_cases(shapes, args.dtypes, args.ops, args.masks, run.features)
    timers = args.timers if cuda or dry else ["cpu"]
    largest = max(shapes, key=lambda s: s[0] * s[1] * s[2])

    def sweep(emit) -> None:
        if triton:
            run_sweep(emit, largest, args.dtypes, device, run.features, dry=dry or not cuda)

    with RecordSink(args.out, _print_record) as emit:
        errors = run_grid(
            cases, run, timers, emit, budget_s=args.budget_s, yardstick_bytes=2**24 if smoke else 2**29,
            interlude=sweep if args.sweep else None,
        )  # fmt: skip
    print()
    print(summarize_gpu(emit.records, short=True))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
