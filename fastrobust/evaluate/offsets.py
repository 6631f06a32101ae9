"""Label-free calibration offsets kept beside a model: ``MODEL_DIR/calibration.json``.

Deployment of :mod:`fastrobust.evaluate.calibration`: offsets are fitted on a batch of unlabeled
inputs of a target language (or language pair), saved under a name (``"de"``, ``"en-de"``), and
added to the logits whenever the model predicts for that target (:func:`apply_named`; the
smoothed classifier takes them too, :func:`fastrobust.methods.smoothing.sample_counts`).

File layout::

    {"version": 1, "task": "pawsx", "label_names": ["not_paraphrase", "paraphrase"],
     "targets": {"de": {"offsets": [b_0, ..., b_C-1], "examples": N,
                        "reference": "source" | "prior" | "given", "reference_rates": [...],
                        "predicted_rates": [...]}}}

A file fitted for another task or another label set is refused (DataError naming the file and
what differs), so offsets never silently move the wrong classes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastrobust.errors import DataError
from fastrobust.evaluate.calibration import OffsetFit
from fastrobust.fileio import atomic_write_json, atomic_write_text

FILE_NAME = "calibration.json"
VERSION = 1
CARD_BEGIN = "<!-- fastrobust-calibration:begin -->"
CARD_END = "<!-- fastrobust-calibration:end -->"


@dataclass
class CalibrationFile:
    """The offsets of one model for each named target."""

    task: str
    label_names: list[str]
    targets: dict[str, dict[str, Any]]

    def offsets(self, target: str) -> np.ndarray:
        if target not in self.targets:
            raise DataError(
                f"calibration: no offsets for target {target!r}; the file has {sorted(self.targets)}"
            )
        return np.asarray(self.targets[target]["offsets"], dtype=np.float64)

    def add(self, target: str, fit: OffsetFit, reference: str) -> None:
        self.targets[target] = {
            "offsets": [float(x) for x in fit.offsets],
            "examples": fit.n,
            "reference": reference,
            "reference_rates": [float(x) for x in fit.reference_rates],
            "predicted_rates": [float(x) for x in fit.predicted_rates],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "task": self.task,
            "label_names": self.label_names,
            "targets": self.targets,
        }


def read_calibration(
    path: str | Path, *, task: str | None = None, label_names: Sequence[str] | None = None
) -> CalibrationFile:
    """Reads ``path`` (a calibration.json or the model folder holding one) and checks that it was
    fitted for ``task`` and ``label_names`` when given; DataError naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path}: no calibration offsets file (fit one with `fastrobust calibrate`)"
        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if (
        not isinstance(data, dict)
        or data.get("version") != VERSION
        or not isinstance(data.get("targets"), dict)
    ):
        raise DataError(f"{path}: not a calibration offsets file (version {VERSION} with 'targets')")
    out = CalibrationFile(
        str(data.get("task", "")), [str(x) for x in data.get("label_names", [])], data["targets"]
    )
    if task is not None and out.task != task:
        raise DataError(f"{path}: offsets fitted for task {out.task!r}, not {task!r}")
    if label_names is not None and list(label_names) != out.label_names:
        raise DataError(
            f"{path}: offsets fitted for labels {out.label_names}, the model has {list(label_names)}"
        )
    for name, entry in out.targets.items():
        b = entry.get("offsets") if isinstance(entry, dict) else None
        if not isinstance(b, list) or len(b) != len(out.label_names) or not all(np.isfinite(b)):
            raise DataError(f"{path}: target {name!r} needs {len(out.label_names)} finite offsets")
    return out


def load_or_new(model_dir: Path, task: str, label_names: Sequence[str]) -> CalibrationFile:
    """The model folder's offsets file (checked against the task), or an empty one."""
    if (model_dir / FILE_NAME).is_file():
        return read_calibration(model_dir, task=task, label_names=label_names)
    return CalibrationFile(task, list(label_names), {})


def card_block(cal: CalibrationFile) -> str:
    """The model card's section naming every target's offsets."""
    lines = [
        CARD_BEGIN,
        "## Label-free calibration offsets",
        "",
        f"`{FILE_NAME}` holds per-class logit offsets fitted on unlabeled inputs (no target label read) "
        "so that each target's predicted-class rates equal the reference rates; "
        "`fastrobust evaluate --offsets` and `fastrobust.evaluate.offsets.apply_named` add them to the "
        "logits. "
        "They assume the target's class mix is the reference's.",
        "",
        "| target | examples | reference | offsets | predicted rates after |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, e in sorted(cal.targets.items()):
        offs = ", ".join(f"{x:+.3f}" for x in e["offsets"])
        rates = ", ".join(f"{100 * x:.1f}%" for x in e["predicted_rates"])
        lines.append(f"| {name} | {e['examples']} | {e['reference']} | {offs} | {rates} |")
    return "\n".join([*lines, CARD_END])


def save_calibration(model_dir: Path, cal: CalibrationFile) -> Path:
    """Writes ``model_dir/calibration.json`` and puts its section into the model card (README.md)."""
    path = atomic_write_json(model_dir / FILE_NAME, cal.to_dict())
    card = model_dir / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    if CARD_BEGIN in text and CARD_END in text:
        head, rest = text.split(CARD_BEGIN, 1)
        text = head + card_block(cal) + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + card_block(cal) + "\n"
    atomic_write_text(card, text)
    return path


def apply_named(logits: np.ndarray, cal: CalibrationFile, target: str) -> np.ndarray:
    """``logits`` (N, C) plus the offsets saved for ``target``."""
    z = np.asarray(logits, dtype=np.float64)
    b = cal.offsets(target)
    if z.ndim != 2 or z.shape[1] != b.shape[0]:
        raise DataError(f"calibration: {b.shape[0]} offsets for target {target!r}, logits of shape {z.shape}")
    return z + b
