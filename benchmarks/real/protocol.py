"""The confirmatory study's fixed facts: configurations, seeds, the precision check, the layout.

Written before the study's first run (docs/real-benchmark.md, section 5); the runner
(:mod:`benchmarks.real.study`) and the report (:mod:`benchmarks.real.study_report`) both read them.
A run of ``<label>`` and seed k lives in ``RESULTS/<label>/seed-<k>/``; the precision check's in
``RESULTS/precision-check/<precision>/baseline/seed-<k>/``.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LABELS = ("baseline", "rs-da", "shift-s2-0.4", "shift-0.2", "rs-rp-l6-0.25", "rs-rp-0.25", "pgd-k1-1")
SEEDS = (1, 2, 3, 4, 5)
# The same study again on fresh seeds, where a GPU is lent (benchmarks/gpu/run.sh real): reported
# beside the confirmatory table, never pooled with it.
REPLICATION_SEEDS = (6, 7, 8, 9, 10)
CHECK_SEEDS = (0, 1)
PRECISIONS = ("fp32", "bf16")
CHECK_DIR = "precision-check"


def finished(run_dir: Path) -> bool:
    """A run is finished when its summary (written last), report and predictions are there."""
    return all(
        (run_dir / p).is_file() for p in ("report/report.json", "report/predictions.npz", "summary.json")
    )


def check_items() -> list[tuple[str, int, str, Path]]:
    """(label, seed, precision, results folder of the run) of the precision check."""
    return [
        ("baseline", s, p, Path(CHECK_DIR) / p / "baseline" / f"seed-{s}")
        for p in PRECISIONS
        for s in CHECK_SEEDS
    ]


def study_items(precision: str, seeds=SEEDS, labels=LABELS) -> list[tuple[str, int, str, Path]]:
    return [(label, s, precision, Path(label) / f"seed-{s}") for s in seeds for label in labels]
