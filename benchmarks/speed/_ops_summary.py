"""Markdown tables of an ops-benchmark run (``python benchmarks/speed/bench_ops.py --summary FILE``): the
CUDA grid's JSONL records, with the targets evaluated row by row, or the JSON of a
pytest-benchmark run (``pytest benchmarks/speed/bench_ops.py --benchmark-json=FILE``)."""

from __future__ import annotations

import json
from pathlib import Path

from _ops_cases import GPU_OPS, TARGET_NOTE


def load_records(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarize_file(path: str | Path, *, short: bool = False) -> str:
    """The Markdown of a results file: a pytest-benchmark JSON document (one object with a
    ``benchmarks`` list) or the CUDA grid's JSONL records (``short``: only the targets table)."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # several lines: JSONL records
        data = None
    if isinstance(data, dict) and "benchmarks" in data:
        return summarize_pytest_json(data)
    return summarize_gpu(load_records(path), short=short)


def _us(r: dict | None) -> str:
    if r is None:
        return "—"
    if "error" in r:
        return "error"
    if "unsupported" in r:
        return "n/a"
    return f"{r['median_ms'] * 1e3:.1f}"


def _rows(records: list[dict], timer: str) -> dict[tuple, dict[str, dict]]:
    rows: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r.get("kind") != "result" or r.get("timer") not in (timer, "-"):
            continue
        key = (r["op"], r["shape"], r["dtype"], r["mask"])
        rows.setdefault(key, {})[r["provider"]] = r
    return rows


def _copy_gbps(rows: dict, shape: str, dtype: str) -> float | None:
    c = rows.get(("copy", shape, dtype, "full"), {}).get("torch")
    return None if c is None or "error" in c else c["gbps"]


def _primary_timer(records: list[dict]) -> str:
    meta = next((r for r in records if r.get("kind") == "meta"), {})
    return (meta.get("timers") or ["events"])[0]


def evaluate_targets(records: list[dict], timer: str | None = None) -> list[dict]:
    """One entry per measured op/shape/dtype/mask row with a target: the values and yes/no
    (on the run's first timer: ``events`` on CUDA)."""
    rows = _rows(records, timer or _primary_timer(records))
    out = []
    for (op, shape, dtype, mask), by in sorted(rows.items()):
        kind = GPU_OPS.get(op, {}).get("kind")
        if kind not in ("noise", "step"):
            continue
        tri, eager, comp = by.get("triton"), by.get("eager"), by.get("compile")
        copy = _copy_gbps(rows, shape, dtype)
        ok = lambda r: r is not None and "error" not in r and "median_ms" in r  # noqa: E731
        entry = {"op": op, "shape": shape, "dtype": dtype, "mask": mask, "check": (tri or {}).get("check")}
        if not ok(tri):
            entry["met"] = False
            entry["why"] = (
                "triton not measured"
                if tri is None
                else f"triton error: {str(tri.get('error') or tri.get('unsupported'))[:80]}"
            )
            out.append(entry)
            continue
        frac = None if copy is None else tri["gbps"] / copy
        vs_eager = eager["median_ms"] / tri["median_ms"] if ok(eager) else None
        vs_comp = comp["median_ms"] / tri["median_ms"] if ok(comp) else None
        entry.update(frac_copy=frac, vs_eager=vs_eager, vs_compile=vs_comp)
        if kind == "noise":
            conds = {
                "copy>=85%": frac is not None and frac >= 0.85,
                "eager>=3x": vs_eager is not None and vs_eager >= 3,
            }
        else:
            conds = {
                "floor>=75%": frac is not None and frac >= 0.75,
                "eager>=2x": vs_eager is not None and vs_eager >= 2,
                ">=compile": vs_comp is not None and vs_comp >= 1,
            }
        if entry["check"] not in (None, "ok"):
            conds["correct"] = False
        entry["conds"] = conds
        entry["met"] = all(conds.values())
        out.append(entry)
    return out


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.0f}%" if pct else f"{x:.2f}x"


def _run_facts(records: list[dict]) -> list[str]:
    """The lines on the run: device and versions, copy yardstick, API features, budget and abort."""
    meta = next((r for r in records if r.get("kind") == "meta"), {})
    lines = []
    facts = [
        f"{k} {meta[k]}"
        for k in ("device", "driver", "cuda_runtime", "torch", "triton", "python")
        if k in meta
    ]
    lines.append(f"Kernels on {', '.join(facts)}; {meta.get('date', '?')}.")
    if "copy_yardstick" in meta:
        y = meta["copy_yardstick"]
        lines.append(f"Copy yardstick ({y['bytes'] / 2**30:.0f} GiB moved, events timer): {y['gbps']} GB/s.")
    feats = meta.get("features", {})
    lines.append(
        f"pgd_init {'returns (delta, embeds + delta)' if feats.get('init_next') else 'returns delta only'}; "
        f"step from delta = 0 {'measured' if feats.get('step_from_zero') else 'not in this API'}; "
        f"compile mode {meta.get('compile_mode')}."
    )
    for r in records:
        if r.get("kind") == "budget":
            lines.append(f"**Budget of {r['budget_s']} s reached: {len(r['not_run'])} cases not run.**")
        if r.get("kind") == "abort":
            lines.append(f"**Run aborted at {r['case']}: {r['error']}**")
    return lines


def _targets_table(records: list[dict]) -> list[str]:
    """The targets, compact: one line per op / dtype / mask over the shapes."""
    tgt = evaluate_targets(records)
    lines = ["| op | dtype | mask | shapes met | % of copy (floor) | x eager | x compile | check |"]
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    groups: dict[tuple, list[dict]] = {}
    for e in tgt:
        groups.setdefault((e["op"], e["dtype"], e["mask"]), []).append(e)
    for (op, dtype, mask), es in groups.items():
        met = sum(e["met"] for e in es)

        def span(key, pct=False, es=es):
            vals = [e.get(key) for e in es if e.get(key) is not None]
            if not vals:
                return "—"
            lo, hi = min(vals), max(vals)
            return _fmt(lo, pct) if abs(hi - lo) < 1e-9 else f"{_fmt(lo, pct)}–{_fmt(hi, pct)}"

        checks = sorted({str(e.get("check")) for e in es})
        lines.append(
            f"| {op} | {dtype} | {mask} | {met}/{len(es)} {'yes' if met == len(es) else 'NO'} | "
            f"{span('frac_copy', True)} | {span('vs_eager')} | {span('vs_compile')} | {', '.join(checks)} |"
        )
    return lines


_TIMERS = (
    ("events", "CUDA events, L2 flushed before each call (do_bench, median)"),
    ("graph", "CUDA graph of ~100 calls, inputs rotating through > L2 (do_bench_cudagraph, median)"),
    ("cpu", "CPU clock (smoke/plumbing only)"),
)
_TIMER_HEADER = [
    "op",
    "B x L x H",
    "dtype",
    "mask",
    "floor MB",
    "copy GB/s",
    "eager us",
    "compile us (s/d)",
    "triton us",
    "triton GB/s",
    "% of copy",
    "x eager",
    "x compile",
]


def _timer_table(records: list[dict], timer: str, title: str) -> list[str]:
    """The full table of one timer (no lines when the run has no record of it)."""
    rows = _rows(records, timer)
    if not any(r.get("timer") == timer for by in rows.values() for r in by.values()):
        return []
    lines = ["", f"#### {title}", ""]
    lines.append("| " + " | ".join(_TIMER_HEADER) + " |")
    lines.append("|" + " --- |" * len(_TIMER_HEADER))
    for (op, shape, dtype, mask), by in sorted(
        rows.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3], kv[0][1])
    ):
        if op == "copy":
            continue
        copy = _copy_gbps(rows, shape, dtype)
        tri, eager, comp = by.get("triton"), by.get("eager"), by.get("compile")
        good = lambda r: r is not None and "error" not in r and "median_ms" in r  # noqa: E731
        floor = next(iter(by.values()))["floor_bytes"]
        cells = [
            op,
            shape,
            dtype,
            mask,
            f"{floor / 1e6:.1f}",
            "—" if copy is None else f"{copy:.0f}",
            _us(eager),
            _us(comp) + (f" ({comp['compile'][0]})" if good(comp) and comp.get("compile") else ""),
            _us(tri),
            f"{tri['gbps']:.0f}" if good(tri) else "—",
            _fmt(tri["gbps"] / copy, True) if good(tri) and copy else "—",
            _fmt(eager["median_ms"] / tri["median_ms"]) if good(tri) and good(eager) else "—",
            _fmt(comp["median_ms"] / tri["median_ms"]) if good(tri) and good(comp) else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _problems(records: list[dict]) -> list[str]:
    """The cases a provider refused (n/a) and the errors."""
    lines: list[str] = []
    refused = sorted(
        {
            f"{r['op']} ({r['provider']}, {r['timer']}): {r['unsupported'][:150]}"
            for r in records
            if "unsupported" in r
        }
    )
    if refused:
        lines += ["", "Not measurable (n/a):"] + [f"- {x}" for x in refused[:12]]
    # An "abort" record carries an error too, but no case: _run_facts reports it at the top.
    errors = [r for r in records if "error" in r and r.get("kind") == "result"]
    if errors:
        lines += ["", "Errors:"]
        lines += [
            f"- {r['op']} {r['shape']} {r['dtype']} {r['mask']} {r['provider']} ({r.get('timer')}): "
            f"{r['error']}"
            for r in errors
        ]
    return lines


def summarize_gpu(records: list[dict], *, short: bool = False) -> str:
    """Markdown: run facts, the targets table, then one full table per timer."""
    lines = [*_run_facts(records), "", TARGET_NOTE, "", *_targets_table(records)]
    if short:
        return "\n".join(lines)
    for timer, title in _TIMERS:
        lines += _timer_table(records, timer, title)
    lines += _problems(records)
    return "\n".join(lines)


def summarize_pytest_json(data: dict) -> str:
    """Markdown table of a ``pytest benchmarks/speed/bench_ops.py --benchmark-json=FILE`` run (its parsed
    JSON): one row per op/shape/dtype, median ms and GB/s (bytes floor / median) per provider, the
    copy bandwidth of the same shape, and speed-ups over eager torch. On a GPU the pytest cases
    carry the CUDA grid's records, summarised as by :func:`summarize_gpu`."""
    cuda = [r for b in data["benchmarks"] for r in b.get("extra_info", {}).get("records", [])]
    if cuda:  # a pytest run on a GPU: the CUDA grid's records (see bench_ops.py)
        meta = {"kind": "meta", "timers": ["events"], **data["benchmarks"][0]["extra_info"]}
        meta.pop("records", None)
        return summarize_gpu([meta, *cuda])
    rows: dict[tuple, dict[str, dict]] = {}
    copies: dict[tuple, float] = {}
    providers: list[str] = []
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "op" not in info:
            continue
        median = bench["stats"]["median"]
        if info["op"] == "copy":
            copies[(info["shape"], info["dtype"])] = info["bytes_floor"] / median / 1e9
            continue
        rows.setdefault((info["op"], info["shape"], info["dtype"]), {})[info["provider"]] = {
            "median": median,
            **info,
        }
        if info["provider"] not in providers:
            providers.append(info["provider"])
    others = [p for p in providers if p != "torch"] if "torch" in providers else []
    header = ["op", "B x L x H", "dtype", "MB floor", "copy GB/s"]
    header += [f"{p} ms (GB/s)" for p in providers] + [f"{p} vs eager" for p in others]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for (op, shape, dtype), by_provider in sorted(rows.items()):
        first = next(iter(by_provider.values()))
        copy = copies.get((shape, dtype))
        cells = [
            op,
            shape,
            dtype,
            f"{first['bytes_floor'] / 1e6:.1f}",
            "—" if copy is None else f"{copy:.1f}",
        ]
        for p in providers:
            r = by_provider.get(p)
            gbps = None if r is None else r["bytes_floor"] / r["median"] / 1e9
            cells.append("—" if r is None else f"{r['median'] * 1e3:.3f} ({gbps:.1f})")
        base = by_provider.get("torch")
        for p in others:
            r = by_provider.get(p)
            cells.append("—" if r is None or base is None else f"{base['median'] / r['median']:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
