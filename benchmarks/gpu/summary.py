"""End of ``benchmarks/gpu/run.sh``: writes ``$OUT/summary.md`` (every table, for BENCHMARKS.md)
and prints a compact summary (the device tool returns only the last 12,000 characters).

``python benchmarks/gpu/summary.py OUT_DIR [--stages FILE] [--env FILE]``: reads what the stages
left in OUT_DIR (``ops.jsonl``, ``train.jsonl``, ``ds.json``, ``tests.log``), the stage status
lines (``name<TAB>status<TAB>seconds``) and the environment report that run.sh wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "speed"))  # the speed suites' helpers


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by a timeout
            out.append(json.loads(line))
    return out


def tests_line(log: Path) -> str:
    """pytest's final counts line of the tests stage, or why there is none."""
    if not log.is_file():
        return "not run"
    counts = r"\d+ (?:passed|failed|errors?|skipped|xfailed|deselected|tests? collected)"
    pattern = rf"^=*\s*({counts}.* in [\d.]+s.*?)\s*=*$"
    found = re.findall(pattern, log.read_text(errors="replace"), flags=re.MULTILINE)
    return found[-1] if found else "no pytest summary line (timed out or crashed: see tests.log)"


def lowering_lines(log: Path) -> list[str]:
    """The kernel lowering's verdict lines (tests/kernel_lowering.py) from the tests stage's log."""
    if not log.is_file():
        return []
    text = log.read_text(errors="replace")
    return re.findall(r"^(?:triton \S+: \d+ variants.*|lowering: .*|FAILED: .*)$", text, flags=re.MULTILINE)


def ops_extras(records: list[dict]) -> list[str]:
    """The run's plan (timings, compiled graphs), what compiling cost, and the tile sweep's verdict."""
    lines = []
    for r in records:
        if r.get("kind") == "plan":
            timings = ", ".join(f"{n} {t}" for t, n in r["timings"].items())
            static, dynamic = r["compile_graphs_static"], r["compile_graphs_dynamic"]
            lines.append(
                f"ops plan: {r['cases']} cases, timings {timings}; torch.compile graphs "
                f"{r['compile_graphs']} ({static} static, {dynamic} dynamic)"
            )
        elif r.get("kind") == "compile":
            lines.append(
                f"ops compile: {r['graphs_built']} graphs built of {r['graphs_expected']} planned, "
                f"{r['seconds']} s of first calls"
            )
        elif r.get("kind") == "sweep_winner":
            changed = ", ".join(f"{k}={v}" for k, v in r["changed"].items()) or "none (the defaults stay)"
            lines.append(f"tile sweep winner: {changed}  (FASTROBUST_KERNEL_TUNING=ops.jsonl adopts it)")
        elif r.get("kind") == "sweep_confirm":
            lines.append(
                f"  confirm {r['op']} {r['dtype']}: {1e3 * r['tuned_ms']:.1f} us tuned vs "
                f"{1e3 * r['default_ms']:.1f} us default (x{r['ratio']:.3f})"
            )
    sweep = [r for r in records if r.get("kind") == "sweep" and r.get("field") != "default"]
    if sweep:
        best = sorted((r for r in sweep if "median_ms" in r), key=lambda r: r["vs_default"])[:4]
        lines.append(
            "tile sweep, fastest alternatives: "
            + "; ".join(
                f"{r['op']} {r['dtype']} {r['field']}={r['value']} x{r['vs_default']:.3f}" for r in best
            )
        )
    return lines


def sweep_table(records: list[dict]) -> str:
    """Every sweep timing: one row per (field, value), one column per op and dtype."""
    rows = [r for r in records if r.get("kind") == "sweep"]
    if not rows:
        return ""
    cols = list(dict.fromkeys(f"{r['op']} {r['dtype']}" for r in rows))
    by = {(r["field"], str(r["value"]), f"{r['op']} {r['dtype']}"): r for r in rows}
    keys = list(dict.fromkeys((r["field"], str(r["value"])) for r in rows))
    lines = ["| field = value | " + " | ".join(f"{c} us (x default)" for c in cols) + " |"]
    lines.append("|---|" + "---|" * len(cols))
    for field, value in keys:
        cells = []
        for c in cols:
            r = by.get((field, value, c))
            if r is None:
                cells.append("—")
            elif "median_ms" not in r:
                cells.append("error")
            else:
                cells.append(f"{1e3 * r['median_ms']:.1f} (x{r['vs_default']:.3f})")
        label = "defaults" if field == "default" else f"{field} = {value}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ops_compact(records: list[dict]) -> str:
    """One line per op and dtype: targets met per mask, ranges of the deciding ratios."""
    # The summary tabulates whatever stages finished: the grids (torch, fastrobust) load only
    # when there are records of theirs.
    from _ops_summary import evaluate_targets

    entries = evaluate_targets(records)
    if not entries:
        return "ops: no target rows measured"
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["op"], e["dtype"]), []).append(e)

    def rng(es, key, pct=False):
        vals = [e[key] for e in es if e.get(key) is not None]
        if not vals:
            return "—"
        f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:.1f}x")
        return f(min(vals)) if max(vals) - min(vals) < 1e-9 else f"{f(min(vals))}..{f(max(vals))}"

    lines = [
        "| op | dtype | met full | met padded | % of copy | x eager | x compile | check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (op, dtype), es in groups.items():
        met = {
            m: f"{sum(e['met'] for e in es if e['mask'] == m)}/{sum(e['mask'] == m for e in es)}"
            for m in ("full", "padded")
        }
        checks = ",".join(sorted({str(e.get("check")) for e in es}))[:40]
        ranges = f"{rng(es, 'frac_copy', True)} | {rng(es, 'vs_eager')} | {rng(es, 'vs_compile')}"
        lines.append(f"| {op} | {dtype} | {met['full']} | {met['padded']} | {ranges} | {checks} |")
    return "\n".join(lines)


def train_compact(records: list[dict]) -> str:
    """Ratios to the baseline: one row per method, one column per (model, precision) group."""
    rows = [r for r in records if r.get("kind") == "row"]
    if not rows:
        return "train: no rows"
    groups = list(dict.fromkeys(f"{r['model']}/{r['precision']}" for r in rows))
    by = {(r["method"], f"{r['model']}/{r['precision']}"): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "| method | floor | target | " + " | ".join(groups) + " |",
        "|---|---|---|" + "---|" * len(groups),
    ]
    for m in methods:
        cells = []
        for g in groups:
            r = by.get((m, g))
            if r is None:
                cells.append("—")
                continue
            mark = "" if m == "baseline" else (" ok" if r["ratio"] <= r["target"] else " NO")
            spread = f"[{r['ratio_min']:.2f},{r['ratio_max']:.2f}]"
            cells.append(f"{r['ratio']:.2f} {spread}{mark} {r['step_ms']:.0f}ms")
        target = next(r["target"] for r in rows if r["method"] == m)
        floor = next(r.get("floor") for r in rows if r["method"] == m)
        floor_text = "—" if floor is None else f"{floor:.2f}"
        lines.append(f"| {m} | {floor_text} | <= {target:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--stages", default=None, help="file of name<TAB>status<TAB>seconds lines")
    p.add_argument("--env", default=None, help="file with the environment report")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    stages = []
    if args.stages and Path(args.stages).is_file():
        stages = [ln.split("\t") for ln in Path(args.stages).read_text().splitlines() if ln.strip()]
    env = Path(args.env).read_text(errors="replace") if args.env and Path(args.env).is_file() else ""
    ops = _jsonl(out / "ops.jsonl")
    train = _jsonl(out / "train.jsonl")
    ds_path = out / "ds.json"
    ds = json.loads(ds_path.read_text()) if ds_path.is_file() else None

    stage_table = ["| stage | status | seconds |", "|---|---|---|"]
    stage_table += ["| " + " | ".join((s + ["", ""])[:3]) + " |" for s in stages]
    tests = tests_line(out / "tests.log")
    log = (out / "tests.log").read_text(errors="replace") if (out / "tests.log").is_file() else ""
    copy = re.findall(r"^copy bandwidth: .*$", log, flags=re.MULTILINE)
    if copy:
        tests = f"{tests}; {copy[0]}"

    lowering = lowering_lines(out / "tests.log")
    full = ["# GPU run (benchmarks/gpu/run.sh)", "", "```", env.strip(), "```", "", *stage_table, ""]
    full += ["Kernel lowering (tests/kernel_lowering.py): " + ("; ".join(lowering) or "not run"), ""]
    full += [f"Kernel and op tests (native CUDA): {tests}", ""]
    compact = [*stage_table, "lowering: " + ("; ".join(lowering) or "not run"), f"tests: {tests}"]
    if "DRY RUN" in env:
        banner = "DRY RUN (CPU rehearsal): no figure here is a measurement"
        full.insert(1, f"\n**{banner}**")
        compact.insert(0, banner)
    if ops:
        from _ops_summary import summarize_gpu  # torch and fastrobust.ops: see ops_compact

        full += ["## Kernels", "", *ops_extras(ops), "", summarize_gpu(ops), ""]
        if sweep_table(ops):
            full += ["### Tile sweep (events timer, largest shape)", "", sweep_table(ops), ""]
        meta = next((r for r in ops if r.get("kind") == "meta"), {})
        y = meta.get("copy_yardstick", {})
        compact += ["", f"ops on {meta.get('device', '?')}: copy yardstick {y.get('gbps', '?')} GB/s"]
        compact += [ops_compact(ops), *ops_extras(ops)]
        compact += [f"ops {r['kind']}: {str(r)[:300]}" for r in ops if r.get("kind") in ("budget", "abort")]
        n_err = sum("error" in r for r in ops)
        if n_err:
            compact.append(f"ops: {n_err} records with errors (see summary.md / ops.jsonl)")
    if train:
        from _train_grid import summarize  # torch and fastrobust.methods: see ops_compact

        full += ["## Training step", "", summarize(train), ""]
        compact += ["", "train (ratio to baseline [range over rounds], median step):", train_compact(train)]
        compact += [
            f"train {r['kind']}: {str(r)[:300]}" for r in train if r.get("kind") in ("error", "budget")
        ]
        for r in train:
            if r.get("kind") == "rsda_epoch":
                sub, tok = 1e6 * r["substitute_s_per_example"], 1e6 * r["tokenize_s_per_example"]
                compact.append(
                    f"rs-da per epoch (CPU): substitution {sub:.0f} us + tokenisation {tok:.0f} us / example"
                )
    if ds is not None:
        text = ds.get("markdown") or json.dumps(ds)[:2000]
        full += ["## DeepSpeed", "", text, ""]
        compact += ["", text]
    (out / "summary.md").write_text("\n".join(full) + "\n")
    print("\n".join(compact))
    print(f"\n(full tables: {out / 'summary.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
