"""Per-example predictions of one model on every test set (XLT languages and G-XLT pairs).

They are what the statistics (:mod:`fastrobust.evaluate.stats`) resample, and what tells a
calibration shift (the rate of a predicted class moves) from an accuracy change.

Shapes: for a set of N examples and C classes, ``probs`` is float32 (N, C) (softmax of the
logits, rows sum to 1) and ``labels`` int64 (N,). Sets are keyed ``("xlt", lang)`` or
``("gxlt", (lang of sentence1, lang of sentence2))``; a G-XLT diagonal pair (a, a) is the XLT set
of language a and is stored once.

File format (``predictions.npz``, written atomically): arrays ``probs_<k>`` and ``labels_<k>``
for k = 0..K-1 and a JSON string ``meta`` = ``{"version", "task", "languages",
"train_language", "label_names", "sets": [{"kind": "xlt"|"gxlt", "lang"|"pair", "index": k}]}``.
Set names never become array names, so any language code is safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastrobust.errors import DataError
from fastrobust.evaluate.calibration import apply_offsets, fit_offsets, log_probs
from fastrobust.evaluate.metrics import EvalReport
from fastrobust.evaluate.threshold_free import expected_calibration_error, roc_auc
from fastrobust.fileio import atomic_write

FORMAT_VERSION = 1
FILE_NAME = "predictions.npz"


@dataclass(frozen=True)
class SetPredictions:
    """Class probabilities (N, C) and gold labels (N,) of one test set."""

    probs: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs, dtype=np.float32)
        labels = np.asarray(self.labels).astype(np.int64).reshape(-1)
        if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
            raise DataError(
                f"predictions: probs of shape {probs.shape} do not match {labels.shape[0]} labels"
            )
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "labels", labels)

    @classmethod
    def from_logits(cls, logits: np.ndarray, labels: np.ndarray) -> SetPredictions:
        """Softmax over the last axis (computed in float64, max-subtracted) -> probabilities."""
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2:
            raise DataError(f"predictions: logits must be (N, C), got shape {z.shape}")
        z = z - z.max(axis=1, keepdims=True) if z.size else z
        e = np.exp(z)
        return cls(e / e.sum(axis=1, keepdims=True) if z.size else e, labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def predicted(self) -> np.ndarray:
        """argmax_c probs[i, c] -> int64 (N,)."""
        return self.probs.argmax(axis=1).astype(np.int64)

    @property
    def correct(self) -> np.ndarray:
        """bool (N,): predicted == label."""
        return self.predicted == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self) else float("nan")

    def predicted_rates(self, num_classes: int | None = None) -> list[float]:
        """Fraction of examples predicted as each class, length C (for 2 classes, [1 - p, p] with
        p the positive-prediction rate)."""
        c = num_classes or self.probs.shape[1]
        return (np.bincount(self.predicted, minlength=c)[:c] / max(1, len(self))).tolist()

    def label_rates(self, num_classes: int | None = None) -> list[float]:
        """Fraction of examples whose gold label is each class, length C."""
        c = num_classes or self.probs.shape[1]
        return (np.bincount(self.labels, minlength=c)[:c] / max(1, len(self))).tolist()


def _auc_or_none(p: SetPredictions) -> float | None:
    """ROC-AUC of one set; None when its labels hold fewer than two classes."""
    if len(np.unique(p.labels)) < 2:
        return None
    return roc_auc(p.probs, p.labels)


@dataclass
class TaskPredictions:
    """Predictions of one model on every XLT test set and every G-XLT pair set of a task."""

    xlt: dict[str, SetPredictions]
    gxlt: dict[tuple[str, str], SetPredictions] = field(default_factory=dict)
    task: str = ""
    languages: list[str] = field(default_factory=list)
    train_language: str | None = None
    label_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.languages:
            self.languages = list(self.xlt)

    def sets(self) -> Iterable[tuple[tuple[str, object], SetPredictions]]:
        """Every set as ((kind, lang or pair), predictions), XLT first, in insertion order."""
        for lang, p in self.xlt.items():
            yield ("xlt", lang), p
        for pair, p in self.gxlt.items():
            yield ("gxlt", pair), p

    def report(self, reference_rates: Sequence[float] | None = None) -> EvalReport:
        """The EvalReport these predictions give: accuracies, sizes, predicted-class rates, and the
        ``metrics`` ROC-AUC, ECE and accuracy after the label-free correction (reference rates:
        ``reference_rates``, default the model's own on the training language's set; no calibrated
        entry when neither is there)."""
        report = self._accuracy_report()
        report.metrics["auc"] = self._metric_report(_auc_or_none)
        report.metrics["ece"] = self._metric_report(lambda p: expected_calibration_error(p.probs, p.labels))
        if reference_rates is not None or self.train_language in self.xlt:
            calibrated, _ = self.calibrated(reference_rates)
            report.metrics["calibrated"] = calibrated._accuracy_report()
        return report

    def _accuracy_report(self) -> EvalReport:
        c = len(self.label_names) or None
        return EvalReport(
            task=self.task,
            languages=list(self.languages),
            train_language=self.train_language,
            xlt={k: p.accuracy for k, p in self.xlt.items()},
            xlt_sizes={k: len(p) for k, p in self.xlt.items()},
            gxlt={k: p.accuracy for k, p in self.gxlt.items()},
            gxlt_sizes={k: len(p) for k, p in self.gxlt.items()},
            label_names=list(self.label_names),
            xlt_pred_rates={k: p.predicted_rates(c) for k, p in self.xlt.items()},
            gxlt_pred_rates={k: p.predicted_rates(c) for k, p in self.gxlt.items()},
        )

    def _metric_report(self, metric) -> EvalReport:
        """An EvalReport whose per-set values are ``metric(set predictions)`` (None: left out)."""
        xlt = {k: metric(p) for k, p in self.xlt.items()}
        gxlt = {k: metric(p) for k, p in self.gxlt.items()}
        return EvalReport(
            task=self.task,
            languages=list(self.languages),
            train_language=self.train_language,
            xlt={k: v for k, v in xlt.items() if v is not None},
            xlt_sizes={k: len(self.xlt[k]) for k, v in xlt.items() if v is not None},
            gxlt={k: v for k, v in gxlt.items() if v is not None},
            gxlt_sizes={k: len(self.gxlt[k]) for k, v in gxlt.items() if v is not None},
            label_names=list(self.label_names),
        )

    def source_rates(self) -> list[float]:
        """The model's predicted-class rates on the training language's set (the default reference
        of the label-free correction); DataError when that set is not there."""
        if self.train_language not in self.xlt:
            raise DataError(
                f"calibration: no {self.train_language or 'training-language'} set among the predictions "
                f"({sorted(self.xlt)}) to take the reference class rates from; pass reference rates"
            )
        return self.xlt[self.train_language].predicted_rates(len(self.label_names) or None)

    def calibrated(
        self, reference_rates: Sequence[float] | None = None
    ) -> tuple[TaskPredictions, dict[tuple[str, object], list[float]]]:
        """These predictions after the label-free correction of every set, and its offsets.

        Each set's logits ``log p`` get the offsets (:func:`fastrobust.evaluate.calibration.
        fit_offsets`, fitted on that set's inputs only, no label read) that give it the reference
        class rates (default :meth:`source_rates`); the probabilities become ``softmax(log p + b)``.
        Returns (new predictions, ``{(kind, lang or pair): offsets}``).
        """
        ref = self.source_rates() if reference_rates is None else list(reference_rates)
        offsets: dict[tuple[str, object], list[float]] = {}

        def fix(key: tuple[str, object], p: SetPredictions) -> SetPredictions:
            z = log_probs(p.probs)
            b = fit_offsets(z, ref).offsets
            offsets[key] = b.tolist()
            return SetPredictions.from_logits(apply_offsets(z, b), p.labels)

        out = self.map_sets(fix)
        for key, p in self.sets():  # a G-XLT diagonal has its XLT set's offsets
            if key not in offsets:
                offsets[key] = next(offsets[k] for k, q in self.sets() if q is p and k in offsets)
        return out, offsets

    def map_sets(self, fn: Callable[[tuple[str, object], SetPredictions], SetPredictions]) -> TaskPredictions:
        """New predictions with ``fn(key, set)`` for every set; a set shared by two keys (the G-XLT
        diagonal is its XLT set) is mapped once, under its first key (XLT first), and stays shared."""
        done: dict[int, SetPredictions] = {}

        def once(key: tuple[str, object], p: SetPredictions) -> SetPredictions:
            if id(p) not in done:
                done[id(p)] = fn(key, p)
            return done[id(p)]

        xlt = {k: once(("xlt", k), p) for k, p in self.xlt.items()}
        gxlt = {k: once(("gxlt", k), p) for k, p in self.gxlt.items()}
        return TaskPredictions(
            xlt, gxlt, self.task, list(self.languages), self.train_language, list(self.label_names)
        )

    # ---- files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (an .npz, see the module docstring) atomically; returns the path."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        entries = []
        stored: dict[int, int] = {}  # id(SetPredictions) -> index: the G-XLT diagonal reuses XLT
        for (kind, key), p in self.sets():
            if id(p) not in stored:
                k = stored[id(p)] = len(stored)
                arrays[f"probs_{k}"] = p.probs
                arrays[f"labels_{k}"] = p.labels
            entry = {"kind": kind, "index": stored[id(p)]}
            entry.update({"lang": key} if kind == "xlt" else {"pair": list(key)})  # type: ignore[arg-type]
            entries.append(entry)
        meta = {
            "version": FORMAT_VERSION,
            "task": self.task,
            "languages": list(self.languages),
            "train_language": self.train_language,
            "label_names": list(self.label_names),
            "sets": entries,
        }
        arrays["meta"] = np.array(json.dumps(meta))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> TaskPredictions:
        """Read a file written by :meth:`save`; a malformed file raises DataError naming it."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("version") != FORMAT_VERSION:
                    raise DataError(
                        f"{path}: predictions format version {meta.get('version')} is not supported"
                    )
                cache: dict[int, SetPredictions] = {}
                xlt: dict[str, SetPredictions] = {}
                gxlt: dict[tuple[str, str], SetPredictions] = {}
                for e in meta["sets"]:
                    k = int(e["index"])
                    if k not in cache:
                        cache[k] = SetPredictions(z[f"probs_{k}"], z[f"labels_{k}"])
                    if e["kind"] == "xlt":
                        xlt[str(e["lang"])] = cache[k]
                    else:
                        a, b = e["pair"]
                        gxlt[(str(a), str(b))] = cache[k]
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{path}: not a readable predictions file ({type(exc).__name__}: {exc})"
            ) from None
        return cls(
            xlt=xlt,
            gxlt=gxlt,
            task=meta.get("task", ""),
            languages=list(meta.get("languages") or xlt),
            train_language=meta.get("train_language"),
            label_names=list(meta.get("label_names") or []),
        )
