"""The confirmatory study's tables, from ``benchmarks/real/results/`` alone (protocol:
docs/real-benchmark.md, section 5).

``write_study_report(RESULTS)`` writes ``RESULTS/report/``:

* ``study.md`` / ``study.json``: per configuration, mean ± sd over the whole seeds (those every
  configuration has) of English dev, English test, XLT zero-shot average, G-XLT cross-language
  average and gap; each method's difference to the baseline with 95% paired bootstrap intervals
  (10,000 draws, test examples and seeds); the primary endpoint's bootstrap p-value and Holm's
  verdict over the six comparisons; per-language XLT differences; the training cost;
* ``precision.md``: the fp32-vs-bf16 check and the rule's verdict;
* ``timings.md``: wall time per run (training, dev evaluation, test evaluation);
* ``comparison.*``: the full comparison (``fastrobust.evaluate.write_comparison``).

With ``update_docs=True`` the README's and docs/real-benchmark.md's generated blocks (between
``<!-- real-study:begin -->`` and ``<!-- real-study:end -->``) are rewritten from it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from benchmarks.real.protocol import CHECK_DIR, CHECK_SEEDS, LABELS, PRECISIONS, SEEDS, finished
from fastrobust.evaluate.multiplicity import holm
from fastrobust.evaluate.report import write_comparison
from fastrobust.evaluate.runs import read_run
from fastrobust.evaluate.stats import compare
from fastrobust.fileio import atomic_write_json, atomic_write_text

N_BOOT = 10_000
ALPHA = 0.05
PRIMARY = "gxlt_cross"
SECONDARY = ("xlt_zero_shot_avg", "xlt:en", "gxlt_gap")
LANGS = ("en", "de", "fr", "ja", "ko")
BEGIN, END = "<!-- real-study:begin -->", "<!-- real-study:end -->"
ROOT = Path(__file__).resolve().parents[2]


def _pct(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def _iv(d: dict | None) -> str:
    if d is None:
        return "-"
    star = "*" if d["excludes_zero"] else ""
    return f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]{star}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def whole_seeds(results: Path, labels=LABELS, seeds=SEEDS) -> list[int]:
    """The seeds that every configuration has finished (a cut-short study reports only these)."""
    return [s for s in seeds if all(finished(results / label / f"seed-{s}") for label in labels)]


def samples_per_second(summary: dict) -> float:
    """Training examples per second of training compute, dev evaluations excluded: per second of
    process CPU time where the run recorded it (other jobs on the cores do not inflate it), else
    of wall time."""
    batch = summary.get("config", {}).get("optim", {}).get("batch_size", 16)
    if "train_cpu_seconds" in summary:
        seconds = summary["train_cpu_seconds"] - summary.get("dev_eval_cpu_seconds", 0.0)
    else:
        seconds = summary["train_seconds"] - summary.get("dev_eval_seconds", 0.0)
    return summary["steps"] * batch / seconds


# ---- the study ---------------------------------------------------------------------------------
def study_tables(results: Path) -> dict:
    """Everything ``study.md`` shows, as data (see the module doc)."""
    seeds = whole_seeds(results)
    if not seeds:
        raise RuntimeError(f"{results}: no seed is finished for all of {', '.join(LABELS)}")
    runs, summaries = [], {}
    for label in LABELS:
        for s in seeds:
            folder = results / label / f"seed-{s}"
            runs.append(read_run(folder, label=label))
            summaries[(label, s)] = _summary(folder)
    cmp = compare(runs, baseline="baseline", n_boot=N_BOOT, seed=0)
    d = cmp.to_dict()["methods"]
    methods = [x for x in LABELS if x != "baseline"]
    p = {m: d[m]["cells"][PRIMARY]["difference"]["p_value"] for m in methods}
    verdicts = holm(p, ALPHA)
    base_speed = np.mean([samples_per_second(summaries[("baseline", s)]) for s in seeds])
    rows = {}
    for label in LABELS:
        cells = d[label]["cells"]
        speed = np.mean([samples_per_second(summaries[(label, s)]) for s in seeds])
        dev = [summaries[(label, s)]["best_dev_accuracy"] for s in seeds]
        row = {
            "seeds": seeds,
            "english_dev": {
                "mean": float(np.mean(dev)),
                "sd": float(np.std(dev, ddof=1)) if len(dev) > 1 else None,
            },
            "cells": {k: cells[k] for k in (PRIMARY, *SECONDARY, "xlt_avg", *[f"xlt:{x}" for x in LANGS])},
            "samples_per_second": float(speed),
            "cost_ratio": float(base_speed / speed),
        }
        if label != "baseline":
            h = verdicts[label]
            diff = cells[PRIMARY]["difference"]["estimate"]
            row["holm"] = h.to_dict()
            row["verdict"] = (
                ("gain" if diff > 0 else "loss") + " (confirmed)" if h.rejected else "no difference shown"
            )
        rows[label] = row
    return {
        "seeds": seeds,
        "complete": seeds == list(SEEDS),
        "n_boot": N_BOOT,
        "alpha": ALPHA,
        "primary": PRIMARY,
        "rows": rows,
        "comparison": cmp,
    }


def _mean_sd(cell: dict) -> str:
    sd = cell.get("sd")
    return f"{100 * cell['mean']:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def verdict_table(t: dict) -> str:
    """The short table (README): cost, primary and zero-shot differences with intervals, verdict."""
    rows = []
    for label, r in t["rows"].items():
        if label == "baseline":
            continue
        c = r["cells"]
        rows.append([
            label, f"{r['cost_ratio']:.2f}x", _iv(c[PRIMARY]["difference"]),
            _iv(c["xlt_zero_shot_avg"]["difference"]), f"{r['holm']['p_value']:.4f}", r["verdict"],
        ])  # fmt: skip
    header = [
        "method",
        "step cost vs baseline",
        "G-XLT cross-language",
        "XLT zero-shot",
        "p (Holm)",
        "verdict",
    ]
    return _table(header, rows)


def study_markdown(t: dict) -> str:
    seeds = ", ".join(map(str, t["seeds"]))
    status = "complete" if t["complete"] else f"incomplete: seeds {seeds} of {', '.join(map(str, SEEDS))}"
    out = [
        f"Seeds {seeds} ({status}); differences in points, method − baseline, 95% paired bootstrap "
        f"intervals over test examples and seeds ({t['n_boot']} draws; * = excludes 0). Verdict: "
        f"Holm over the six G-XLT cross-language comparisons at family-wise {t['alpha']:.0%}.",
        "",
        verdict_table(t),
        "",
    ]
    rows = []
    for label, r in t["rows"].items():
        c = r["cells"]
        dev = r["english_dev"]
        dev_s = f"{100 * dev['mean']:.1f}" + ("" if dev["sd"] is None else f" ± {100 * dev['sd']:.1f}")
        rows.append([label, dev_s, _mean_sd(c["xlt:en"]), _mean_sd(c["xlt_zero_shot_avg"]),
                     _mean_sd(c[PRIMARY]), _mean_sd(c["gxlt_gap"])])  # fmt: skip
    out += [
        _table(["configuration", "English dev", "English test", "XLT zero-shot", "G-XLT cross", "gap"], rows),
        "",
    ]
    rows = []
    for label, r in t["rows"].items():
        if label == "baseline":
            continue
        c = r["cells"]
        rows.append(
            [label, *(_iv(c[f"xlt:{x}"]["difference"]) for x in LANGS), _iv(c["gxlt_gap"]["difference"])]
        )
    out += [_table(["per-language XLT difference", *LANGS, "gap"], rows), ""]
    return "\n".join(out)


# ---- precision check and timings ---------------------------------------------------------------
def precision_markdown(results: Path) -> str | None:
    path = results / CHECK_DIR / "decision.json"
    if not path.is_file():
        return None
    dec = json.loads(path.read_text())
    rows = []
    for prec in PRECISIONS:
        for s in CHECK_SEEDS:
            folder = results / CHECK_DIR / prec / "baseline" / f"seed-{s}"
            r, sm = read_run(folder), _summary(folder)
            av = r.report.averages()
            rows.append([prec, str(s), _pct(sm["best_dev_accuracy"]), _pct(r.report.xlt["en"]),
                         _pct(av["xlt_avg"]), _pct(av["gxlt_cross_lang_avg"]),
                         f"{sm['train_seconds']:.0f}", f"{sm['test_eval_seconds']:.0f}"])  # fmt: skip
    e = dec["english_dev"]
    text = [
        _table(
            [
                "precision",
                "seed",
                "English dev",
                "English test",
                "XLT avg",
                "G-XLT cross",
                "train s",
                "test s",
            ],
            rows,
        ),
        "",
        f"bf16 − fp32: XLT avg {_iv(dec['differences']['xlt_avg'])}, G-XLT cross "
        f"{_iv(dec['differences']['gxlt_cross'])} (95% paired bootstrap over examples and seeds 0-1); "
        f"English dev {100 * e['bf16_minus_fp32']:+.2f} (tolerance {100 * e['tolerance']:.2f}: the larger of "
        f"the seed spread {100 * e['seed_spread']:.2f} and 0.5). Verdict: **{dec['precision']}**.",
    ]
    return "\n".join(text)


def timings_markdown(results: Path) -> str:
    rows = []
    folders = sorted(p.parent for p in results.glob("*/seed-*/summary.json"))
    folders += sorted(p.parent for p in (results / CHECK_DIR).glob("*/*/seed-*/summary.json"))
    by: dict[str, list[dict]] = {}
    for f in folders:
        sm = _summary(f)
        prec = sm.get("provenance", {}).get("precision", sm.get("precision", "?"))
        by.setdefault(f"{sm['label']} ({prec})", []).append(sm)
    for key, sms in by.items():
        train = np.mean([s["train_seconds"] - s.get("dev_eval_seconds", 0.0) for s in sms])
        dev = np.mean([s.get("dev_eval_seconds", float("nan")) for s in sms])
        test = np.mean([s["test_eval_seconds"] for s in sms])
        wall = np.mean([s.get("provenance", {}).get("wall_seconds", float("nan")) for s in sms])
        rows.append([key, str(len(sms)), f"{train:.0f}", f"{dev:.0f}", f"{test:.0f}", f"{wall:.0f}",
                     f"{np.mean([samples_per_second(s) for s in sms]):.2f}"])  # fmt: skip
    header = [
        "configuration (precision)",
        "runs",
        "training s",
        "dev eval s",
        "test eval s",
        "wall s",
        "samples/s",
    ]
    return _table(header, rows)


# ---- writing -----------------------------------------------------------------------------------
def replace_block(path: Path, body: str) -> bool:
    """Rewrite the text between the generated-block markers of ``path``; False if it has none."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        return False
    atomic_write_text(path, pattern.sub(lambda _m: f"{BEGIN}\n{body}\n{END}", text))
    return True


def write_study_report(results: Path, *, update_docs: bool = False) -> dict:
    rep = results / "report"
    rep.mkdir(parents=True, exist_ok=True)
    precision = precision_markdown(results)
    if precision is not None:
        atomic_write_text(rep / "precision.md", precision + "\n")
        print(precision, "\n")
    timings = timings_markdown(results)
    atomic_write_text(rep / "timings.md", timings + "\n")
    print(timings, "\n")
    t = study_tables(results)
    write_comparison(t.pop("comparison"), rep / "comparison")
    text = study_markdown(t)
    atomic_write_text(rep / "study.md", text)
    atomic_write_json(rep / "study.json", t, indent=1)
    print(text)
    if update_docs:
        replace_block(ROOT / "README.md", verdict_table(t) + f"\n\nSeeds {', '.join(map(str, t['seeds']))}.")
        replace_block(ROOT / "docs" / "real-benchmark.md", text)
    return t
