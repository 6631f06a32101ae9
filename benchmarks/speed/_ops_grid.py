"""The CUDA grid of the ops benchmark, part 3: measurement of the cases (:mod:`_ops_cases`) through
the providers (:mod:`_ops_calls`) and the run's metadata.

Used by ``benchmarks/speed/bench_ops.py`` (its command line and, on a GPU, its pytest cases). Every
time is a CUDA-event time through ``triton.testing`` (see ``_util.cuda_event_times`` and
``_util.cuda_graph_times``); on CPU the same code runs with a host clock for plumbing checks
only (``--smoke``; with ``TRITON_INTERPRET=1`` the ``triton`` provider runs in the interpreter;
``--dry-run``: the GPU run's passes and timer names, each timer a single host-timed call, the
compile provider traced by dynamo without compiling).

Order of a run: the primary cases (:func:`_ops_cases.is_primary`) with every timer, then the
interlude (the tile sweep), then the other cases with the events timer only, then the eager
random ops under the CUDA-graph timer (their capture may be refused). A time budget stops
starting new cases; what was not run is listed in a "budget" record.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from _ops_calls import check_triton, compile_graphs, compile_kind, op_call, providers_for, rotating
from _ops_cases import DTYPE, Case, Features, bytes_floor, is_primary, make_inputs
from _util import (
    cpu_times,
    cuda_event_times,
    cuda_facts,
    cuda_graph_times,
    cuda_quick_ms,
    device_name,
    peak_memory_mb,
    versions,
)

# ---- the run ------------------------------------------------------------------------------


def raise_recompile_limits() -> Callable[[], None]:
    """Dynamo settings of a run: one static graph per shape and dtype is more than its default
    recompile limit, and automatic dynamic shapes are off (dynamic dims are marked explicitly,
    see :func:`_compiled`). Returns a function that restores the previous settings."""
    cfg = torch._dynamo.config
    saved = {}
    for name, value in (
        ("recompile_limit", 256),
        ("cache_size_limit", 256),
        ("accumulated_recompile_limit", 4096),
        ("accumulated_cache_size_limit", 4096),
        ("automatic_dynamic_shapes", False),
    ):
        if hasattr(cfg, name):
            saved[name] = getattr(cfg, name)
            setattr(cfg, name, value if isinstance(value, bool) else max(value, saved[name]))
    return lambda: [setattr(cfg, k, v) for k, v in saved.items()]


def _rotation_sets(case: Case, device: torch.device, l2_bytes: int) -> int:
    """Input sets for the graph timer: enough that one sweep streams >= 4x L2 (at most 32)."""
    if device.type != "cuda":
        return 1
    b, length, h = case.shape
    per_set = 3 * b * length * h * DTYPE[case.dtype].itemsize
    return int(max(1, min(32, math.ceil(4 * max(l2_bytes, 50 * 2**20) / per_set))))


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


@dataclass
class Run:
    """What every case of one run shares."""

    device: torch.device
    features: Features
    compile_mode: str
    triton: bool  # the triton provider is measured (CUDA, or CPU under the interpreter)
    l2_bytes: int = 0
    cpu_calls: int = 5
    dry: bool = False  # every timer one host-timed call; compile provider traced, not compiled

    @property
    def compile_backend(self) -> str:
        return "eager" if self.dry else "inductor"


def _dynamo_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def measure_case(
    case: Case,
    run: Run,
    timer: str,
    *,
    providers: Iterable[str] | None = None,
    check: bool = True,
    may_refuse: bool = False,
) -> list[dict]:
    """One record per provider of ``case`` with ``timer`` ("events", "graph" or "cpu").

    An error becomes a record with an ``error`` field (``unsupported`` instead when
    ``may_refuse``: a limitation of that provider, e.g. CUDA-graph capture of a private
    torch.Generator, not a failure); the exception is not raised, except when the CUDA context
    itself is gone (a synchronize after the error raises), which ends the run.
    """
    device = run.device
    sets = make_inputs(case, device, sets=1)
    floor = bytes_floor(case, sets[0].mask, run.features)
    base = {
        "kind": "result",
        "op": case.op,
        "shape": "x".join(map(str, case.shape)),
        "dtype": case.dtype,
        "mask": case.mask,
        "real_frac": round(float((sets[0].mask != 0).float().mean()), 4),
        "floor_bytes": floor,
        "timer": timer,
    }
    verdict = None
    if check and run.triton and case.spec["kind"] != "copy":
        try:
            verdict = check_triton(case, sets[0], run.features)
        except Exception as exc:  # reported, never fatal
            verdict = "ERROR " + _error(exc)
    wanted = providers_for(case, compile_mode=run.compile_mode, triton=run.triton)
    if providers is not None:
        wanted = [p for p in wanted if p in providers]
    records = []
    for provider in wanted:
        rec = dict(base, provider=provider)
        if provider == "compile":
            rec["compile"] = compile_kind(case.op, run.compile_mode)
        if provider == "triton" and verdict is not None:
            rec["check"] = verdict
        try:
            call = op_call(case, provider, run.features, run.compile_mode, run.compile_backend)
            fn = rotating(call, sets)
            graphs = _dynamo_graphs()
            t0 = time.perf_counter()
            fn()  # first call: compiles (torch.compile, Triton JIT) outside every timing
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rec["first_call_s"] = round(time.perf_counter() - t0, 3)
            if provider == "compile":
                rec["graphs_compiled"] = _dynamo_graphs() - graphs
            if run.dry:
                res = cpu_times(fn, calls=1, warmup=False)
                rec["dry"] = True
            elif timer == "events":
                res = cuda_event_times(fn)
                rec["peak_mem_mb"] = round(peak_memory_mb(fn, device) or 0.0, 1)
            elif timer == "graph":
                more = make_inputs(case, device, sets=_rotation_sets(case, device, run.l2_bytes))[1:]
                rec["rotation_sets"] = 1 + len(more)
                gfn = rotating(call, sets + more)
                res = cuda_graph_times(gfn, est_ms=cuda_quick_ms(gfn))  # a graph of ~100 calls
            else:
                res = cpu_times(fn, calls=run.cpu_calls)
            rec.update(res)
            rec["gbps"] = round(floor / (res["median_ms"] * 1e-3) / 1e9, 2)
        except Exception as exc:
            rec["unsupported" if may_refuse else "error"] = _error(exc)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # raises if the context is gone: the run stops
        records.append(rec)
    return records


def run_meta(run: Run, timers: list[str]) -> dict:
    meta = {
        "kind": "meta",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timers": timers,
        "dry_run": run.dry,
        "compile_mode": run.compile_mode,
        "features": dict(run.features.__dict__),
        **versions(),
    }
    if run.device.type == "cuda":
        meta.update(cuda_facts(run.device))
    else:
        meta["device"] = device_name(run.device)
    return meta


def copy_yardstick(device: torch.device, nbytes: int) -> dict:
    """A large device copy (bytes read + written over the events-timer median)."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = cuda_event_times(lambda: dst.copy_(src))
    return {"bytes": 2 * nbytes, "gbps": round(2 * nbytes / (t["median_ms"] * 1e-3) / 1e9, 1)}


Pass = tuple[list[Case], str, "tuple[str, ...] | None"]
INTERLUDE = "interlude"


def plan_passes(cases: list[Case], timers: list[str]) -> list[Pass | str]:
    """The run's passes in order (see the module docstring); ``INTERLUDE`` marks where the sweep
    goes. The CUDA-graph timer measures the primary cases only (a graph per row costs ~5x an
    events timing; the primary rows are where launch overhead decides a target)."""
    random_kinds = ("noise", "init")
    primary = [c for c in cases if is_primary(c)]
    rest = [c for c in cases if not is_primary(c)]
    passes: list[Pass | str] = []
    for timer in timers:
        if timer == "graph":
            steps = [c for c in primary if c.spec["kind"] not in random_kinds]
            passes += [(primary, "graph", ("torch", "triton")), (steps, "graph", ("eager", "compile"))]
        else:
            passes.append((primary, timer, None))
    passes.append(INTERLUDE)
    passes += [(rest, timer, None) for timer in timers if timer != "graph"]
    if "graph" in timers:  # eager's private generator and inductor's RNG: capture may be refused
        random = [c for c in primary if c.spec["kind"] in random_kinds]
        passes.append((random, "graph", ("eager", "compile")))
    return passes


def plan_counts(cases: list[Case], run: Run, timers: list[str]) -> dict:
    """What a run of ``cases`` measures: timings per timer and the torch.compile graphs it builds
    (what the stage's time budget is sized from)."""
    per_timer: dict[str, int] = {}
    for item in plan_passes(cases, timers):
        if item == INTERLUDE:
            continue
        group, timer, providers = item
        for case in group:
            wanted = providers_for(case, compile_mode=run.compile_mode, triton=run.triton)
            n = len([p for p in wanted if providers is None or p in providers])
            per_timer[timer] = per_timer.get(timer, 0) + n
    graphs = compile_graphs(cases, run.compile_mode)
    static = sum(1 for g in graphs if g[0] == "static")
    return {
        "kind": "plan",
        "cases": len(cases),
        "timings": per_timer,
        "compile_graphs": len(graphs),
        "compile_graphs_static": static,
        "compile_graphs_dynamic": len(graphs) - static,
    }


def run_grid(
    cases: list[Case],
    run: Run,
    timers: list[str],
    emit: Callable[[dict], None],
    *,
    budget_s: float,
    yardstick_bytes: int = 2**29,
    interlude: Callable[[Callable[[dict], None]], None] | None = None,
) -> int:
    """Measures ``cases`` and emits one dict per record; returns the number of error records.

    Passes in the order of :func:`plan_passes`; ``interlude(emit)`` runs between the primary
    cases and the others. The graph timer runs the eager and compiled random ops (noise, init)
    last of all: they draw from a private torch.Generator or inductor's RNG, whose CUDA-graph
    capture may be refused (recorded as ``unsupported``), and a refused capture must not cost
    any other row.
    No new case starts after ``budget_s`` seconds: a "budget" record lists what was not run. The
    last records: "compile" (graphs expected, graphs dynamo built, their first-call seconds) and
    "end".
    """
    restore = raise_recompile_limits()
    meta = run_meta(run, timers)
    run.l2_bytes = int(meta.get("l2_bytes", 0) or 0)
    if run.device.type == "cuda":
        meta["copy_yardstick"] = copy_yardstick(run.device, yardstick_bytes)
        torch.cuda.empty_cache()
    emit(meta)
    plan = plan_counts(cases, run, timers)
    emit(plan)
    start = time.perf_counter()
    errors = 0
    compiled = {"graphs": 0, "seconds": 0.0}
    passes = plan_passes(cases, timers)
    try:
        for k, item in enumerate(passes):
            if item == INTERLUDE:
                if interlude is not None and time.perf_counter() - start <= budget_s:
                    interlude(emit)
                continue
            group, timer, providers = item
            last = "graph" in timers and k == len(passes) - 1
            for n, case in enumerate(group):
                if time.perf_counter() - start > budget_s:
                    rest = [c.key for c in group[n:]]
                    emit({"kind": "budget", "timer": timer, "not_run": rest, "budget_s": budget_s})
                    break
                t0 = time.perf_counter()
                try:
                    recs = measure_case(
                        case, run, timer, providers=providers, check=timer != "graph", may_refuse=last
                    )
                except Exception as exc:  # the CUDA context is gone: nothing more can be measured
                    emit({"kind": "abort", "case": case.key, "timer": timer, "error": _error(exc)})
                    return errors + 1
                for r in recs:
                    r["case_s"] = round(time.perf_counter() - t0, 2)
                    errors += "error" in r or r.get("check", "ok") != "ok"
                    if r.get("graphs_compiled"):
                        compiled["graphs"] += r["graphs_compiled"]
                        compiled["seconds"] += r["first_call_s"]
                    emit(r)
                if run.device.type == "cuda":
                    torch.cuda.empty_cache()  # n = 32 copies of 32x512x1024 fp32 are 2 GiB
            else:
                continue
            break  # the budget is spent: no later pass either
    finally:
        restore()
        emit(
            {
                "kind": "compile",
                "graphs_expected": plan["compile_graphs"],
                "graphs_built": compiled["graphs"],
                "seconds": round(compiled["seconds"], 1),
            }
        )
        emit({"kind": "end", "seconds": round(time.perf_counter() - start, 1)})
    return errors
