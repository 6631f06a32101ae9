"""The tile sweep of the ops benchmark (``bench_ops.py --sweep``): alternatives to the kernels'
launch parameters (:class:`fastrobust.kernels.common.Tuning`) at the grid's largest shape,
timed like the grid (events timer), and the winner as a Tuning the planner adopts.

A small, one-at-a-time sweep around the defaults (interactions are not explored): the L2 PGD
step with embeds for the reduction's tile (``pgd_reduce_tile``), its programs per example
(``pgd_max_split``), the warps per program (and so the update's tile) and the L2-sized
chunking; ``add_noise`` for the noise kernel's warps. A value is adopted when it is faster than
the default by more than ``MARGIN`` in the geometric mean over the dtypes and slower in none;
the adopted values of an op together are timed once more against the defaults
("sweep_confirm"), and when together they do not beat the best single value, that op keeps
only its best single value.

Adoption: ``FASTROBUST_KERNEL_TUNING=<the run's ops.jsonl>`` makes the planners use the last
"sweep_winner" record of that file; to make it the default, copy its fields into ``Tuning``
after ``python tests/kernel_lowering.py --tuning ops.jsonl`` passes (every alternative here
lowers without spills or layout conversions on Triton 3.6, except ``noise_warps = 8``, which
spills 8 bytes in the opt-in precise Gaussian path).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from _ops_calls import op_call
from _ops_cases import EPSILON, SEED, SIGMA, STEP_SIZE, Case, make_inputs
from _util import cpu_times, cuda_event_times

from fastrobust.kernels import common, noise, pgd

AXES: dict[str, list] = {
    "pgd_reduce_tile": [512, 2048, 4096],
    "pgd_max_split": [16, 32, 128],
    "pgd_warps": [2, 8],
    "pgd_l2_chunks": [True],
    "noise_warps": [2, 8],
}
OP_OF = {field: ("add_noise" if field.startswith("noise") else "pgd_step_l2+e") for field in AXES}
MARGIN = 0.02
# The dry run's stand-in for a GPU: the GPU's tiling through the interpreter (tiny L2: chunks).
DRY_TARGET = common.Target(interpreted=False, sm_count=4, l2_bytes=64 * 2**10)


def _runner(op: str, inp, tuning: common.Tuning, target: common.Target | None) -> Callable[[], object]:
    if op == "add_noise":
        out = torch.empty_like(inp.x)
        shape = tuple(inp.x.shape)
        fast = None if target is None else False  # no inline PTX in the interpreter
        return lambda: noise.launch_noise(
            inp.x, shape, out, SIGMA, SEED, True, inp.mask, 1, tuning=tuning, target=target, fast_math=fast
        )
    return lambda: pgd.pgd_step_forward(
        inp.d, inp.g, STEP_SIZE, EPSILON, "l2", inp.mask, inp.x, tuning=tuning, target=target
    )


def _check(op: str, inp, fn: Callable[[], object], features) -> str:
    """The PGD result against the reference (a tile changes only the summation order); noise
    against the default tiling's bits (the stream does not depend on tiles)."""
    got = fn()
    if op == "add_noise":
        return "ok"  # the stream is tile-independent (tests); timed, not re-checked
    ref = op_call(Case(op, tuple(inp.x.shape), "fp32", "full"), "eager", features, "off")(inp)
    tol = 1e-4 if inp.x.dtype == torch.float32 else 1e-2
    errs = [
        float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)) for a, b in zip(got, ref)
    ]
    return "ok" if max(errs) < tol else f"MISMATCH rel.err {max(errs):.2e}"


def run_sweep(
    emit: Callable[[dict], None], shape, dtypes: list[str], device, features, *, dry: bool
) -> common.Tuning:
    """Time every alternative of ``AXES`` for every dtype; emit "sweep" records, the
    "sweep_winner" and its "sweep_confirm" records; return the winning Tuning."""
    target = DRY_TARGET if dry else None
    base = common.Tuning()
    ratios: dict[tuple[str, object], list[float]] = {}

    def timed(op, dtype, tuning) -> dict:
        (inp,) = make_inputs(Case(op, tuple(shape), dtype, "full"), device)
        fn = _runner(op, inp, tuning, target)
        rec = {"check": _check(op, inp, fn, features)}
        rec.update(cpu_times(fn, calls=1, warmup=False) if dry else cuda_event_times(fn))
        return rec

    for dtype in dtypes:
        default = {op: timed(op, dtype, base) for op in set(OP_OF.values())}
        for op, r in default.items():
            emit({"kind": "sweep", "op": op, "dtype": dtype, "shape": "x".join(map(str, shape)),
                  "field": "default", "value": None, **r, "vs_default": 1.0})  # fmt: skip
        for field, values in AXES.items():
            op = OP_OF[field]
            for value in values:
                try:
                    r = timed(op, dtype, dataclasses.replace(base, **{field: value}))
                except Exception as exc:  # an alternative that does not compile is not a winner
                    r = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                ratio = r["median_ms"] / default[op]["median_ms"] if "median_ms" in r else math.inf
                if r.get("check", "ok") != "ok":
                    ratio = math.inf
                ratios.setdefault((field, value), []).append(ratio)
                emit({"kind": "sweep", "op": op, "dtype": dtype, "shape": "x".join(map(str, shape)),
                      "field": field, "value": value, **r, "vs_default": round(ratio, 4)})  # fmt: skip
    winner = pick_winner(ratios)
    for op in sorted({OP_OF[f] for f in winner}):
        fields = {f: v for f, v in winner.items() if OP_OF[f] == op}
        if len(fields) < 2:
            continue
        together = dataclasses.replace(base, **fields)
        combined = []
        for dtype in dtypes:
            new, old = timed(op, dtype, together), timed(op, dtype, base)
            combined.append(new["median_ms"] / old["median_ms"])
            rec = {"kind": "sweep_confirm", "op": op, "dtype": dtype, "fields": fields}
            rec.update(tuned_ms=new["median_ms"], default_ms=old["median_ms"], ratio=round(combined[-1], 4))
            emit(rec)
        single = {f: _gmean(ratios[(f, v)]) for f, v in fields.items()}
        best = min(single, key=single.get)
        if _gmean(combined) >= single[best]:  # interactions: keep the best single change only
            for f in fields:
                if f != best:
                    del winner[f]
    tuned = dataclasses.replace(base, **winner)
    emit({"kind": "sweep_winner", "winner": dataclasses.asdict(tuned), "changed": winner})
    return tuned


def _gmean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def pick_winner(ratios: dict[tuple[str, object], list[float]]) -> dict[str, object]:
    """Per field, the value with the lowest geometric-mean ratio to the default, if it beats the
    default by more than MARGIN and is slower for no dtype."""
    best: dict[str, tuple[float, object]] = {}
    for (field, value), rs in ratios.items():
        if not rs or any(not math.isfinite(r) or r > 1.0 for r in rs):
            continue
        gmean = _gmean(rs)
        if gmean < 1.0 - MARGIN and gmean < best.get(field, (math.inf, None))[0]:
            best[field] = (gmean, value)
    return {field: value for field, (_, value) in best.items()}
