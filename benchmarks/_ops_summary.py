"""Markdown tables of a CUDA ops-benchmark run (``bench_ops.py --summary FILE.jsonl``), with the
targets of issue 12 evaluated row by row."""

from __future__ import annotations

import json
from pathlib import Path

from _ops_grid import GPU_OPS, TARGET_NOTE


def load_records(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


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


def summarize_gpu(records: list[dict], *, short: bool = False) -> str:
    """Markdown: run facts, the targets table, then one full table per timer."""
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
    lines.append("")
    lines.append(TARGET_NOTE)
    lines.append("")
    # targets, compact: one line per op / dtype / mask over the shapes
    tgt = evaluate_targets(records)
    lines.append("| op | dtype | mask | shapes met | % of copy (floor) | x eager | x compile | check |")
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
    if short:
        return "\n".join(lines)
    for timer, title in (
        ("events", "CUDA events, L2 flushed before each call (do_bench, median)"),
        ("graph", "CUDA graph of ~100 calls, inputs rotating through > L2 (do_bench_cudagraph, median)"),
        ("cpu", "CPU clock (smoke/plumbing only)"),
    ):
        rows = _rows(records, timer)
        if not any(r.get("timer") == timer for by in rows.values() for r in by.values()):
            continue
        lines += ["", f"#### {title}", ""]
        header = [
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
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + " --- |" * len(header))
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
    refused = sorted(
        {
            f"{r['op']} ({r['provider']}, {r['timer']}): {r['unsupported'][:150]}"
            for r in records
            if "unsupported" in r
        }
    )
    if refused:
        lines += ["", "Not measurable (n/a):"] + [f"- {x}" for x in refused[:12]]
    errors = [r for r in records if "error" in r]
    if errors:
        lines += ["", "Errors:"]
        lines += [
            f"- {r['op']} {r['shape']} {r['dtype']} {r['mask']} {r['provider']} ({r.get('timer')}): "
            f"{r['error']}"
            for r in errors
        ]
    return "\n".join(lines)


# ============================================================================ pytest entry points
