"""Helpers shared by the benchmark files: device facts, synchronised timing through
pytest-benchmark, CUDA-event timing, the copy-bandwidth yardstick and peak memory.

A leaf of the benchmarks' imports: the Markdown tables of a run are ``_ops_summary.py``'s.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

SMOKE = os.environ.get("FASTROBUST_BENCH_SMOKE") == "1"
# CPU timer: "wall" (default) or "process". On a shared machine wall time measures the
# other tenants as much as the op; "process" times CPU seconds of this process with torch
# limited to one thread, which stays reproducible under load (what BENCHMARKS.md used).
CPU_TIMER = os.environ.get("FASTROBUST_BENCH_CPU_TIMER", "wall")
if CPU_TIMER not in ("wall", "process"):
    raise ValueError(f"FASTROBUST_BENCH_CPU_TIMER must be 'wall' or 'process', got {CPU_TIMER!r}")


class RecordSink:
    """The records of a benchmark run: kept in ``records``, shown with ``show(rec)``, and written
    as one JSON line each to ``path`` when given, flushed at once (a run stopped by its time limit
    keeps every record measured so far). ``with RecordSink(path, show) as emit: emit(rec)``."""

    def __init__(self, path: str | None, show: Callable[[dict], None]) -> None:
        self.records: list[dict] = []
        self.show = show
        self._file = open(path, "w") if path else None  # noqa: SIM115 (closed by __exit__)

    def __call__(self, rec: dict) -> None:
        self.records.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()
        self.show(rec)

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


def bench_device() -> torch.device:
    """CUDA when present (never the Triton interpreter: its timings mean nothing)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton  # optional (the triton extra): absent on CPU-only installs

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "absent"
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> Callable[[], float]:
    return time.process_time if device.type == "cpu" and CPU_TIMER == "process" else time.perf_counter


def cpu_threads_for_timing() -> int | None:
    """Thread count to impose on torch while timing on CPU (1 with the process timer)."""
    return 1 if CPU_TIMER == "process" else None


def _seconds_per_call(fn: Callable[[], object], device: torch.device, calls: int = 3) -> float:
    clock = _clock(device)
    sync(device)
    start = clock()
    for _ in range(calls):
        fn()
    sync(device)
    return (clock() - start) / calls


def timed(benchmark, fn: Callable[[], object], device: torch.device, *, budget_s: float = 1.5):
    """Time ``fn`` with pytest-benchmark so that every reported duration covers finished work.

    On CUDA a round runs ``iterations`` calls back to back and synchronises after the last
    one (the wrapper counts calls), so launches overlap as in a training loop and the mean
    per call is exact. Rounds and iterations are sized from a probe to fit ``budget_s``.
    """
    fn()  # warm-up: compiles kernels / torch.compile graphs outside the timings
    sync(device)
    if SMOKE or getattr(benchmark, "disabled", False):
        return benchmark.pedantic(fn, rounds=1, iterations=1)
    per_call = max(_seconds_per_call(fn, device, calls=1 if device.type == "cpu" else 3), 1e-7)
    iterations = 1 if device.type == "cpu" else max(1, min(1000, int(2e-3 / per_call)))
    rounds = max(3, min(30, int(budget_s / (per_call * iterations))))
    counter = {"n": 0}
    if hasattr(benchmark, "_timer"):
        benchmark._timer = _clock(device)  # pytest-benchmark has no public per-test timer

    def target():
        fn()
        counter["n"] += 1
        if counter["n"] % iterations == 0:
            sync(device)

    return benchmark.pedantic(target, rounds=rounds, iterations=iterations, warmup_rounds=1)


# --------------------------------------------------------------------------- CUDA timing
# Everything below times the GPU with CUDA events (never the host clock), through Triton's
# own helpers so that the numbers are comparable with other Triton benchmarks.


def _accepted(fn: Callable, **kwargs) -> dict:
    """The keyword arguments ``fn`` accepts (triton.testing signatures move between versions)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def cuda_event_times(fn: Callable[[], object], *, warmup_ms: float = 5.0, rep_ms: float = 40.0) -> dict:
    """Median / 20th / 80th percentile milliseconds of one call of ``fn`` on the current CUDA device.

    ``triton.testing.do_bench``: CUDA events around each call, and before each call a 256 MB
    memset that evicts the inputs from L2 (so a 3 MB tensor is read from HBM, as in training,
    not from the 50-60 MB L2). Host time counts only where it exceeds the device time of the
    memset before the call (~60-80 us): a call that is host-bound beyond that is timed as the
    user experiences it.
    """
    from triton.testing import do_bench  # optional: CUDA machines only

    q = do_bench(fn, **_accepted(do_bench, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8]))
    return {"median_ms": float(q[0]), "p20_ms": float(q[1]), "p80_ms": float(q[2])}


def cuda_quick_ms(fn: Callable[[], object], calls: int = 5) -> float:
    """Rough ms per call: CUDA events around ``calls`` back-to-back calls (after one warm-up)."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def cuda_graph_times(fn: Callable[[], object], *, est_ms: float, calls: int = 100) -> dict:
    """Like :func:`cuda_event_times`, but ``calls`` back-to-back calls are captured in one CUDA
    graph and replayed (``triton.testing.do_bench_cudagraph``): no launch or Python overhead, no
    L2 flush (callers rotate through input sets larger than L2 instead). ``est_ms``: a rough
    per-call time, to size the graph at about ``calls`` calls."""
    from triton.testing import do_bench_cudagraph  # optional: CUDA machines only

    rep = min(20.0, max(0.5, calls * est_ms))
    q = do_bench_cudagraph(fn, **_accepted(do_bench_cudagraph, rep=rep, quantiles=[0.5, 0.2, 0.8]))
    return {"median_ms": float(q[0]), "p20_ms": float(q[1]), "p80_ms": float(q[2])}


def cpu_times(fn: Callable[[], object], *, calls: int = 5, warmup: bool = True) -> dict:
    """Median / 20th / 80th percentile ms of ``fn`` with this module's CPU clock (smoke runs)."""
    clock = _clock(torch.device("cpu"))
    if warmup:
        fn()
    times = []
    for _ in range(calls):
        start = clock()
        fn()
        times.append((clock() - start) * 1e3)
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * (len(times) - 1) + 0.5))]  # noqa: E731
    return {"median_ms": statistics.median(times), "p20_ms": pick(0.2), "p80_ms": pick(0.8)}


def cuda_facts(device: torch.device) -> dict:
    """Device facts that a GPU result must carry: name, SMs, L2, memory, CUDA runtime, driver."""
    props = torch.cuda.get_device_properties(device)
    out = {
        "device": props.name,
        "sms": props.multi_processor_count,
        "l2_bytes": int(getattr(props, "L2_cache_size", 0) or 0),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda_runtime": torch.version.cuda,
        "capability": f"{props.major}.{props.minor}",
    }
    try:
        out["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["driver"] = "unknown"
    return out


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak extra CUDA memory of one call (MiB) above what was allocated before it."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def copy_bandwidth_gbps(device: torch.device, nbytes: int | None = None) -> float:
    """Median device-copy bandwidth in GB/s, counting bytes read plus bytes written."""
    if nbytes is None:
        nbytes = 2**20 if SMOKE else (512 * 2**20 if device.type == "cuda" else 64 * 2**20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cpu_threads_for_timing() is not None:
        torch.set_num_threads(cpu_threads_for_timing())  # the same setting as the ops' timings
    try:
        times = [
            _seconds_per_call(lambda: dst.copy_(src), device, calls=1 if device.type == "cpu" else 10)
            for _ in range(3 if SMOKE else 15)
        ]
    finally:
        torch.set_num_threads(threads)
    return 2 * nbytes / statistics.median(times) / 1e9


def record(benchmark, *, device: torch.device, nbytes: int, copy_gbps: float, **info) -> None:
    """Attach what the summary needs (bytes floor, GB/s, ratio to copy, device) to the result."""
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(
        device=device_name(device), bytes_floor=int(nbytes), copy_gbps=round(copy_gbps, 2), **versions()
    )
    if device.type == "cpu":
        benchmark.extra_info.update(cpu_timer=CPU_TIMER, cpu_threads=torch.get_num_threads())
    if hasattr(os, "getloadavg"):
        # On a shared CPU machine other processes skew timings: keep the 1-min load with them.
        benchmark.extra_info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        median = stats.stats.median
        benchmark.extra_info["gbps"] = round(nbytes / median / 1e9, 2)
        benchmark.extra_info["fraction_of_copy"] = round(nbytes / median / 1e9 / copy_gbps, 3)
