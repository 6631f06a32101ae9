"""Seed-to-seed spread of the synthetic benchmark: train one method over several seeds, one run at a time.

Each (tag, method, seed) run writes ``<results>/<tag>/<method>-seed<k>.json`` (English / XLT / G-XLT
accuracies, best dev accuracy and its history, CPU seconds) and is skipped when that file exists, so
an interrupted sweep resumes where it stopped. Example::

    python benchmarks/synthetic/spread.py --tag demo --method baseline --seeds 0-4 \
        --set optim.learning_rate=1e-3
    python benchmarks/synthetic/spread.py --tag demo --summary
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fastrobust.fileio import atomic_write_json
from fastrobust.training import train

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results" / "spread"


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += list(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def one_run(
    config: str | None, overrides: list[str], method: str, seed: int, keep: Path | None = None
) -> dict:
    """Train ``method`` with ``seed`` in a temporary output folder; return the accuracies (and copy
    the run's predictions.npz to ``keep`` when given)."""
    import torch  # torch and the trainer load only to train: --summary needs neither

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory(prefix="spread-") as tmp:
        sets = [
            *overrides,
            f"seed={seed}",
            "seeds=null",  # one run (the demo lists 3 seeds)
            "parallel=1",
            f"output.dir={tmp}",
            "output.save_model=false",
            "output.tensorboard=false",
        ]
        c0, w0 = time.process_time(), time.perf_counter()
        result = train(config, sets, methods=[method])
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        preds = Path(tmp) / method / "report" / "predictions.npz"
        if keep is not None and preds.is_file():
            shutil.copyfile(preds, keep)
    s = result["methods"][method]
    rep = result["reports"][method]
    train_lang = rep.train_language
    others = [lang for lang in rep.languages if lang != train_lang]
    cross = [v for (a, b), v in rep.gxlt.items() if a != b and train_lang not in (a, b)]
    return {
        "method": method,
        "seed": seed,
        "overrides": overrides,
        "en": rep.xlt[train_lang],
        "xlt": dict(rep.xlt),
        "zero_shot": float(np.mean([rep.xlt[lang] for lang in others])),
        "gxlt_same": rep.gxlt_same_lang_avg,
        "gxlt_cross": rep.gxlt_cross_lang_avg,
        "gxlt_cross_no_en": float(np.mean(cross)) if cross else None,
        "best_dev": s["best_dev_accuracy"],
        "best_step": s["best_step"],
        "dev_history": s["dev_history"],
        "final_loss": s["final_loss"],
        "steps": s["steps"],
        "cpu_seconds": cpu,
        "wall_seconds": wall,
    }


def summarize(folder: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    lines = [f"{folder.name}:"]
    for method, rs in by_method.items():
        rs.sort(key=lambda r: r["seed"])

        def stat(key: str, rs: list[dict] = rs) -> str:
            v = 100 * np.array([r[key] for r in rs], dtype=float)
            sd = v.std(ddof=1) if len(v) > 1 else float("nan")
            return f"{key} {v.mean():.1f} ± {sd:.1f} [{' '.join(f'{x:.1f}' for x in v)}]"

        cpu = np.mean([r["cpu_seconds"] for r in rs])
        lines.append(
            f"  {method} (n={len(rs)}, seeds {[r['seed'] for r in rs]}, {cpu:.0f} CPU s/run): "
            + "; ".join(stat(k) for k in ("en", "zero_shot", "gxlt_cross_no_en", "best_dev"))
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", required=True, help="experiment name (sub-folder of the results)")
    p.add_argument("--config", default=None, help="YAML config (default: the demo)")
    p.add_argument("--method", action="append", default=None, help="method label (repeatable)")
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--results", default=str(DEFAULT_RESULTS))
    p.add_argument("--summary", action="store_true", help="only print the summary of finished runs")
    args = p.parse_args(argv)
    folder = Path(args.results) / args.tag
    if not args.summary:
        folder.mkdir(parents=True, exist_ok=True)
        for method in args.method or ["baseline"]:
            for seed in parse_seeds(args.seeds):
                path = folder / f"{method}-seed{seed}.json"
                if path.exists():
                    continue
                record = one_run(args.config, args.overrides, method, seed, keep=path.with_suffix(".npz"))
                atomic_write_json(path, record, indent=1)
                print(
                    f"{args.tag} {method} seed {seed}: en {100 * record['en']:.1f} "
                    f"zero-shot {100 * record['zero_shot']:.1f} dev {100 * record['best_dev']:.1f} "
                    f"({record['cpu_seconds']:.0f} CPU s)",
                    flush=True,
                )
    print(summarize(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
