"""``fastrobust compare RUN_DIR [RUN_DIR ...]``: one comparison of finished runs, with intervals.

Reads every finished run under the given training output folders (see
:mod:`fastrobust.evaluate.runs`), pools the seeds of each method label, and writes
comparison.md / .json / .csv / .png (mean ± sd over seeds, differences to the baseline with paired
bootstrap intervals, for accuracy, accuracy after the label-free correction and ROC-AUC;
docs/statistics.md) to ``--out`` (default: the RUN_DIR when there is one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastrobust.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="output folder of `fastrobust train` (or a method folder)",
    )
    parser.add_argument(
        "--out", default=None, help="where to write comparison.* (default: the single RUN_DIR)"
    )
    parser.add_argument(
        "--baseline", default=None, help="label of the reference method (default: 'baseline' or the first)"
    )
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws (default 2000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")


def run(args: argparse.Namespace) -> int:
    # numpy loads when the command runs, not for ``fastrobust compare --help``
    from fastrobust.evaluate import compare_metrics, write_comparison
    from fastrobust.evaluate.report import comparison_text
    from fastrobust.evaluate.runs import merge_runs

    if args.out is None and len(args.run_dirs) > 1:
        raise ConfigError("--out: required when comparing several RUN_DIRs")
    if not 0.0 < args.confidence < 1.0:
        raise ConfigError(f"--confidence: must be in (0, 1), got {args.confidence}")
    if args.n_boot < 100:
        raise ConfigError(f"--n-boot: must be >= 100, got {args.n_boot}")
    runs = merge_runs(args.run_dirs)
    comparison = compare_metrics(runs, baseline=args.baseline, n_boot=args.n_boot, confidence=args.confidence)
    out = Path(args.out or args.run_dirs[0])
    write_comparison(comparison, out)
    print(comparison_text(comparison))
    print(f"\ncomparison written to {out}/comparison.md|json|csv|png")
    return 0
