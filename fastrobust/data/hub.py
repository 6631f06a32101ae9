"""Hugging Face hub loader (``datasets.load_dataset``) for PAWS-X and XNLI.

Hub layout: ``google-research-datasets/paws-x`` and ``facebook/xnli`` have one config per
language code and the splits ``train`` / ``validation`` / ``test``. PAWS-X columns are ``id``,
``sentence1``, ``sentence2``, ``label`` (0 / 1; the card notes missing labels are stored as -1);
XNLI columns are ``premise``, ``hypothesis``, ``label`` (ClassLabel entailment / neutral /
contradiction = 0 / 1 / 2, the convention of :mod:`fastrobust.data.tasks`).

``path`` replaces the hub id: any dataset path ``load_dataset`` accepts, such as a local folder
laid out like the hub repository (a README declaring the per-language configs, parquet or JSONL
files per config and split). The tests use such a folder, so this path is exercised offline.
"""

from __future__ import annotations

import logging

import datasets

from fastrobust.data.tasks import TaskSpec
from fastrobust.data.xtreme import PAIR_FEATURES, column
from fastrobust.errors import DataError

logger = logging.getLogger(__name__)


def load_hub_split(spec: TaskSpec, lang: str, split: str, *, path: str | None = None) -> datasets.Dataset:
    """One split (``train`` / ``dev`` / ``test``) of one language, as columns sentence1, sentence2, label.

    Rows whose label is -1 (unlabelled in the hub copy of PAWS-X) are dropped with a warning; any
    other label outside ``[0, num_labels)`` is a DataError naming the dataset, config and split.
    """
    name = path or spec.hub_id
    if name is None:
        raise DataError(f"task {spec.name}: no hub dataset id; give task.path")
    hub_split = spec.hub_splits[split]
    where = f"hub dataset {name!r} config {lang!r} split {hub_split!r}"
    try:
        ds = datasets.load_dataset(name, lang, split=hub_split)
    except Exception as exc:  # datasets raises many types (not found, offline, bad config); report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if path else "; without network, point task.path at a local XTREME-layout folder"
        raise DataError(f"{where}: cannot load ({type(exc).__name__}: {first}){hint}") from exc
    s1, s2 = spec.hub_fields
    missing = [c for c in (s1, s2, "label") if c not in ds.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; has {ds.column_names}")
    ds = ds.select_columns([s1, s2, "label"])
    if (s1, s2) != ("sentence1", "sentence2"):
        ds = ds.rename_columns({s1: "sentence1", s2: "sentence2"})
    labels = column(ds, "label")
    unlabelled = sum(1 for x in labels if x == -1)
    bad = next((x for x in labels if x != -1 and not 0 <= x < spec.num_labels), None)
    if bad is not None:
        raise DataError(
            f"{where}: unknown label {bad!r} for task {spec.name} (valid: 0..{spec.num_labels - 1})"
        )
    if unlabelled:
        logger.warning("%s: dropping %d unlabelled rows (label -1)", where, unlabelled)
        ds = ds.filter(lambda row: row["label"] != -1)
    if len(ds) == 0:
        raise DataError(f"{where}: no examples (empty split)")
    return ds.cast(PAIR_FEATURES)
