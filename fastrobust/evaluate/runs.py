"""Finished runs on disk -> :class:`RunResult` objects, for comparisons that merge runs.

Layout written by ``fastrobust train`` into its output folder OUT (one run = one method, one seed)::

    OUT/<label>/summary.json, OUT/<label>/report/{report.json, predictions.npz}           single seed
    OUT/<label>/seed-<k>/summary.json, OUT/<label>/seed-<k>/report/{...}                   several seeds

A run counts as finished when its ``summary.json`` and ``report/report.json`` exist (both are
written after the test evaluation). ``predictions.npz`` is optional: without it the run has no
per-example predictions and the comparison gives no interval for its method.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fastrobust.errors import DataError
from fastrobust.evaluate.metrics import EvalReport
from fastrobust.evaluate.predictions import FILE_NAME, TaskPredictions
from fastrobust.evaluate.stats import RunResult

SEED_PREFIX = "seed-"


def seed_dir_name(seed: int) -> str:
    """The folder of one seed's run inside a method's folder."""
    return f"{SEED_PREFIX}{seed}"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _default_seed(run_dir: Path) -> int:
    """The config seed from OUT/summary.json (older runs did not record it per method), else 0."""
    path = run_dir / "summary.json"
    if path.is_file():
        try:
            return int(_read_json(path).get("config", {}).get("seed", 0))
        except (DataError, TypeError, ValueError, AttributeError):
            return 0
    return 0


def read_run(folder: str | Path, *, default_seed: int = 0, label: str | None = None) -> RunResult | None:
    """The finished run in ``folder`` (a method folder or one seed's folder); None if unfinished."""
    folder = Path(folder)
    summary_path, report_path = folder / "summary.json", folder / "report" / "report.json"
    if not (summary_path.is_file() and report_path.is_file()):
        return None
    summary = _read_json(summary_path)
    if summary.get("status", "complete") != "complete":  # a failed write rescued its results here
        return None
    report = EvalReport.from_dict(_read_json(report_path))
    pred_path = folder / "report" / FILE_NAME
    predictions = TaskPredictions.load(pred_path) if pred_path.is_file() else None
    seed = summary.get("seed")
    if seed is None and folder.name.startswith(SEED_PREFIX):
        seed = folder.name[len(SEED_PREFIX) :]
    try:
        seed = default_seed if seed is None else int(seed)
    except ValueError:
        raise DataError(f"{summary_path}: seed {seed!r} is not an integer") from None
    return RunResult(
        label=label or str(summary.get("label") or folder.name),
        seed=seed,
        report=report,
        predictions=predictions,
        kind=summary.get("kind"),
        path=folder,
        fingerprint=summary.get("fingerprint") if isinstance(summary.get("fingerprint"), dict) else None,
    )


def load_runs(run_dir: str | Path) -> list[RunResult]:
    """Every finished run under a training output folder (see the module doc), in folder order.

    ``run_dir`` may also be one method's folder or one seed's folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a folder")
    own = read_run(run_dir)
    if own is not None:
        return [own]
    default = _default_seed(run_dir)
    runs: list[RunResult] = []
    for child in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        if child.name.startswith(SEED_PREFIX):  # run_dir is one method's folder
            found = [read_run(child, default_seed=default)]
        else:
            seed_dirs = [p for p in child.iterdir() if p.is_dir() and p.name.startswith(SEED_PREFIX)]
            found = [read_run(child, default_seed=default)]
            found += [read_run(p, default_seed=default) for p in sorted(seed_dirs, key=_seed_order)]
        runs += [r for r in found if r is not None]
    return runs


def _seed_order(path: Path) -> tuple[int, str]:
    tail = path.name[len(SEED_PREFIX) :]
    return (int(tail), "") if tail.lstrip("-").isdigit() else (1 << 62, tail)


def merge_runs(run_dirs: Sequence[str | Path]) -> list[RunResult]:
    """The finished runs of several output folders, ready for :func:`compare`.

    Runs of one method label are pooled across folders (their seeds add up). When the same label
    and seed occur in two folders, that label's runs are renamed ``<folder name>/<label>`` in every
    folder, so the two are compared instead of silently merged.
    """
    per_dir: list[tuple[str, list[RunResult]]] = []
    names = [Path(d).name or str(d) for d in run_dirs]
    for d, name in zip(run_dirs, names):
        runs = load_runs(d)
        if not runs:
            raise DataError(f"{d}: no finished run (a summary.json with report/report.json) found")
        per_dir.append((name if names.count(name) == 1 else str(d), runs))
    seen: dict[tuple[str, int], str] = {}
    clash: set[str] = set()
    for name, runs in per_dir:
        for r in runs:
            key = (r.label, r.seed)
            if key in seen and seen[key] != name:
                clash.add(r.label)
            seen.setdefault(key, name)
    out = []
    for name, runs in per_dir:
        for r in runs:
            if r.label in clash:
                r.label = f"{name}/{r.label}"
            out.append(r)
    return out
