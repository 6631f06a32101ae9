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
* ``reread.md``: the study re-read on ROC-AUC and calibrated accuracy (:mod:`benchmarks.real.reread`);
* ``averaging.md``: the averaging study (:mod:`benchmarks.real.averaging_report`), once a seed is whole.
* ``replication.md`` / ``replication.json`` / ``replication-comparison.*``: the same tables over
  the replication seeds (:data:`~benchmarks.real.protocol.REPLICATION_SEEDS`, trained on a GPU by
  ``benchmarks/gpu/run.sh real``) once one of them is whole: its own Holm family, never pooled.

With ``update_docs=True`` the generated blocks (between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``) are rewritten from it: ``real-study`` in README.md (the verdict table) and
in docs/real-benchmark.md (the study tables), ``real-study-precision``, ``real-study-timings``
and ``real-replication`` in docs/real-benchmark.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from benchmarks.real.averaging_report import averaging_markdown, averaging_tables
from benchmarks.real.endpoints import md_table
from benchmarks.real.protocol import (
    CHECK_DIR,
    CHECK_SEEDS,
    LABELS,
    PRECISIONS,
    REPLICATION_SEEDS,
    SEEDS,
    finished,
)
from benchmarks.real.reread import precision_reread, readme_table, reread_markdown, reread_tables
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


def _p(p: float, threshold: float, n_boot: int) -> str:
    """A bootstrap p-value and its Holm threshold; no draw on the far side of 0 is p < 1/n_boot."""
    shown = f"< {1 / n_boot:.4f}" if p == 0 else f"{p:.4f}"
    return f"{shown} ({threshold:.4f})"


_table = md_table  # one layout for every study table (benchmarks.real.endpoints)


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def whole_seeds(results: Path, labels=LABELS, seeds=SEEDS) -> list[int]:
    """The seeds that every configuration has finished (a cut-short study reports only these)."""
    return [s for s in seeds if all(finished(results / label / f"seed-{s}") for label in labels)]


def samples_per_second(summary: dict, measure: str | None = None) -> float:
    """Training examples per second of training compute, dev evaluations excluded.

    ``measure``: ``"cpu"`` (process CPU time: other jobs on the cores do not inflate it; needs the
    run to have recorded it) or ``"wall"``; None = CPU time where the run recorded it, else wall.
    """
    batch = summary.get("config", {}).get("optim", {}).get("batch_size", 16)
    if measure is None:
        measure = "cpu" if "train_cpu_seconds" in summary else "wall"
    if measure == "cpu":
        seconds = summary["train_cpu_seconds"] - summary.get("dev_eval_cpu_seconds", 0.0)
    else:
        seconds = summary["train_seconds"] - summary.get("dev_eval_seconds", 0.0)
    return summary["steps"] * batch / seconds


LEGACY_ENGINE = "benchmarks.real.lite"


def _engine(summary: dict) -> str:
    return summary.get("engine", LEGACY_ENGINE)


def cost_ratio(method: list[dict], baseline: list[dict]) -> tuple[float | None, list[int]]:
    """Mean over seeds of baseline samples/s / method samples/s in process CPU time, and the
    indices of the seeds it used.

    ``method`` / ``baseline``: the two configurations' summaries, seed by seed. Only seeds whose
    two runs both recorded CPU time count: wall time depends on what else the machine ran at the
    time (runs of one seed may come from different days), so it is not compared; nor are runs of
    two training engines (their ``engine``: ``fastrobust.train``, or :data:`LEGACY_ENGINE`, the
    one-process copy of its loop that trained the study's first runs and is assumed where a run
    names none). None when no seed has both.
    """
    timed = [("train_cpu_seconds" in m and "train_cpu_seconds" in b and _engine(m) == _engine(b))
             for m, b in zip(method, baseline, strict=True)]  # fmt: skip
    used = [i for i, ok in enumerate(timed) if ok]
    if not used:
        return None, []
    ratios = [samples_per_second(baseline[i], "cpu") / samples_per_second(method[i], "cpu") for i in used]
    return float(np.mean(ratios)), used


def verdict(diff: float, rejected: bool, complete: bool) -> str:
    """The primary endpoint's verdict: Holm's decision, called *confirmed* only for the complete
    study; a study cut short gives an *interim* direction (its interval has fewer seeds than the
    protocol's, and with one seed it reflects test-example noise only, not seed-to-seed noise)."""
    if not rejected:
        return "no difference shown"
    return ("gain" if diff > 0 else "loss") + (" (confirmed)" if complete else " (interim)")


# ---- the study ---------------------------------------------------------------------------------
def study_tables(results: Path, planned: tuple[int, ...] = SEEDS) -> dict:
    """Everything ``study.md`` shows, as data (see the module doc), over the whole seeds among
    ``planned`` (the confirmatory seeds, or :data:`REPLICATION_SEEDS` for the replication)."""
    seeds = whole_seeds(results, seeds=planned)
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
    complete = seeds == list(planned)
    base_runs = [summaries[("baseline", s)] for s in seeds]
    rows = {}
    for label in LABELS:
        runs_of = [summaries[(label, s)] for s in seeds]
        cells = d[label]["cells"]
        ratio, used = cost_ratio(runs_of, base_runs)
        dev = [r["best_dev_accuracy"] for r in runs_of]
        row = {
            "seeds": seeds,
            "english_dev": {
                "mean": float(np.mean(dev)),
                "sd": float(np.std(dev, ddof=1)) if len(dev) > 1 else None,
            },
            "cells": {k: cells[k] for k in (PRIMARY, *SECONDARY, "xlt_avg", *[f"xlt:{x}" for x in LANGS])},
            "samples_per_second": float(np.mean([samples_per_second(r) for r in runs_of])),
            "cost_ratio": ratio,
            "cost_seeds": [seeds[i] for i in used],
        }
        if label != "baseline":
            h = verdicts[label]
            row["holm"] = h.to_dict()
            row["verdict"] = verdict(cells[PRIMARY]["difference"]["estimate"], h.rejected, complete)
        rows[label] = row
    return {
        "seeds": seeds,
        "planned": list(planned),
        "complete": complete,
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
        cost = "n/a" if r["cost_ratio"] is None else f"{r['cost_ratio']:.2f}x"
        rows.append([
            label, cost, _iv(c[PRIMARY]["difference"]),
            _iv(c["xlt_zero_shot_avg"]["difference"]),
            _p(r["holm"]["p_value"], r["holm"]["threshold"], t["n_boot"]), r["verdict"],
        ])  # fmt: skip
    header = [
        "method",
        "training time vs baseline",
        "G-XLT cross-language",
        "XLT zero-shot",
        "p (Holm threshold)",
        "verdict",
    ]
    return _table(header, rows)


def status_line(t: dict) -> str:
    """What the tables below it rest on: seeds, completeness, intervals, the verdict rule, the cost."""
    seeds = ", ".join(map(str, t["seeds"]))
    if t["complete"]:
        status = "complete"
    else:
        status = (
            f"incomplete: seeds {seeds} of {', '.join(map(str, t['planned']))}, so verdicts are interim"
            + ("; with one seed an interval reflects test-example noise only, not seed-to-seed noise"
               if len(t["seeds"]) == 1 else "")
        )  # fmt: skip
    timed = sorted({x for label, r in t["rows"].items() if label != "baseline" for x in r["cost_seeds"]})
    timed_s = ", ".join(map(str, timed)) if timed else "none yet"
    return (
        f"Seeds {seeds} ({status}). Differences in points, method − baseline, 95% paired bootstrap "
        f"intervals over test examples and seeds ({t['n_boot']} draws; * = excludes 0). Verdict: Holm "
        f"over the six G-XLT cross-language comparisons at family-wise {t['alpha']:.0%} (a difference is "
        f"shown when its bootstrap p and every smaller one are at most their thresholds). Training time "
        f"per example relative to the baseline's, dev evaluations excluded, in process CPU time, from the "
        f"seeds whose two runs recorded it ({timed_s}; n/a: none)."
    )


def study_markdown(t: dict) -> str:
    out = [
        status_line(t),
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
        if "copied_from" in sm:
            continue  # the same run as the precision check's, counted there
        prec = sm.get("provenance", {}).get("precision", sm.get("precision", "?"))
        by.setdefault(f"{sm['label']} ({prec})", []).append(sm)
    for key, sms in by.items():
        train = np.mean([s["train_seconds"] - s.get("dev_eval_seconds", 0.0) for s in sms])
        dev = np.mean([s.get("dev_eval_seconds", float("nan")) for s in sms])
        test = np.mean([s["test_eval_seconds"] for s in sms])
        wall = np.mean([s.get("provenance", {}).get("wall_seconds", float("nan")) for s in sms])
        cpu = [samples_per_second(s, "cpu") for s in sms if "train_cpu_seconds" in s]
        rows.append([key, str(len(sms)), f"{train:.0f}", f"{dev:.0f}", f"{test:.0f}", f"{wall:.0f}",
                     f"{np.mean(cpu):.2f} ({len(cpu)})" if cpu else "-"])  # fmt: skip
    header = [
        "configuration (precision)",
        "runs",
        "training s",
        "dev eval s",
        "test eval s",
        "wall s",
        "samples/s of CPU time (runs)",
    ]
    return _table(header, rows)


# ---- writing -----------------------------------------------------------------------------------
def markers(name: str) -> tuple[str, str]:
    """The comment lines around a generated block: ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->``."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_block(path: Path, body: str, name: str = "real-study") -> bool:
    """Rewrite the text between the generated-block markers ``name`` of ``path``; False if it has none."""
    begin, end = markers(name)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return False
    atomic_write_text(path, pattern.sub(lambda _m: f"{begin}\n{body}\n{end}", text))
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
    reread = reread_tables(results, t["seeds"], N_BOOT)
    checked = precision_reread(results, N_BOOT) if precision is not None else None
    reread_text = reread_markdown(reread, checked)
    atomic_write_text(rep / "reread.md", reread_text + "\n")
    print("\n" + reread_text)
    averaging = averaging_markdown(averaging_tables(results, N_BOOT))
    atomic_write_text(rep / "averaging.md", averaging + "\n")
    print("\n" + averaging)
    if update_docs:
        replace_block(ROOT / "README.md", averaging, "real-averaging")
        replace_block(ROOT / "docs" / "real-benchmark.md", averaging, "real-averaging")
        readme = (
            readme_table(t, reread) + "\n\n" + status_line(t) + " Secondary endpoints (ROC-AUC, calibrated "
        )
        readme += (
            "accuracy): chosen after the primary results were known, Holm over the six comparisons of each."
        )
        replace_block(ROOT / "README.md", readme)
        docs = ROOT / "docs" / "real-benchmark.md"
        replace_block(docs, text)
        replace_block(docs, reread_text, "real-study-reread")
        replace_block(docs, timings, "real-study-timings")
        if precision is not None:
            replace_block(docs, precision, "real-study-precision")
    if whole_seeds(results, seeds=REPLICATION_SEEDS):
        r = study_tables(results, REPLICATION_SEEDS)
        write_comparison(r.pop("comparison"), rep / "replication-comparison")
        first, last = REPLICATION_SEEDS[0], REPLICATION_SEEDS[-1]
        rtext = f"The replication on seeds {first}-{last} (a separate family: not pooled with the study).\n\n"
        rtext += study_markdown(r)
        atomic_write_text(rep / "replication.md", rtext)
        atomic_write_json(rep / "replication.json", r, indent=1)
        print("\n" + rtext)
        if update_docs:
            replace_block(ROOT / "docs" / "real-benchmark.md", rtext, "real-replication")
    return t
