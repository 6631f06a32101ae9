"""``datasets`` sources: the Hugging Face hub copies of PAWS-X and XNLI, or any dataset laid out alike.

Hub layout: one config per language code and the splits ``train`` / ``validation`` / ``test``.
``google-research-datasets/paws-x``: columns ``id``, ``sentence1``, ``sentence2``, ``label`` (0 / 1;
the card notes missing labels are stored as -1); ``facebook/xnli``: ``premise``, ``hypothesis``,
``label`` (ClassLabel entailment / neutral / contradiction = 0 / 1 / 2, the convention of
:mod:`fastrobust.data.tasks`). A ``custom`` task names its own text and label columns; its labels
come from the config, else from the dataset's ``ClassLabel`` names, else from the training values.

``path`` replaces the hub id: any dataset path ``load_dataset`` accepts, such as a local folder
laid out like the hub repository (a README declaring the per-language configs, parquet or JSONL
files per config and split). The tests use such folders, so this path is exercised offline.
"""

from __future__ import annotations

import logging

import datasets

from fastrobust.data.tasks import TaskSpec, parse_label
from fastrobust.data.xtreme import column, texts_dataset
from fastrobust.errors import DataError

logger = logging.getLogger(__name__)


def _where(spec: TaskSpec, lang: str, split: str, path: str | None) -> tuple[str, str]:
    name = path or spec.hub_id
    if name is None:
        raise DataError(f"task {spec.name}: no hub dataset id; give task.path")
    return name, f"hub dataset {name!r} config {lang!r} split {spec.hub_splits[split]!r}"


def load_hub_raw(spec: TaskSpec, lang: str, split: str, *, path: str | None = None) -> datasets.Dataset:
    """One split of one language with the text columns renamed to their roles and the raw labels."""
    name, where = _where(spec, lang, split, path)
    try:
        ds = datasets.load_dataset(name, lang, split=spec.hub_splits[split])
    except Exception as exc:  # datasets raises many types (not found, offline, bad config); report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if path else "; without network, point task.path at a local XTREME-layout folder"
        raise DataError(f"{where}: cannot load ({type(exc).__name__}: {first}){hint}") from exc
    fields = [*spec.hub_fields, spec.label_column]
    missing = [c for c in fields if c not in ds.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; has {ds.column_names}")
    ds = ds.select_columns(fields)
    renames = {c: r for c, r in zip(fields, [*spec.text_columns, "label"]) if c != r}
    return ds.rename_columns(renames) if renames else ds


def hub_label_names(ds: datasets.Dataset) -> list[str] | None:
    """The label names a ``ClassLabel`` column declares, or None."""
    feature = ds.features.get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def map_hub_labels(ds: datasets.Dataset, spec: TaskSpec, where: str) -> datasets.Dataset:
    """Labels of a raw hub split as ids of ``spec``; -1 rows (unlabelled) dropped with a warning."""
    labels = column(ds, "label")
    unlabelled = sum(1 for x in labels if x == -1)
    if all(isinstance(x, int) and not isinstance(x, bool) for x in labels) and not spec.labels_are_values:
        bad = next((x for x in labels if x != -1 and not 0 <= x < spec.num_labels), None)
        if bad is not None:
            raise DataError(
                f"{where}: unknown label {bad!r} for task {spec.name} (valid: 0..{spec.num_labels - 1})"
            )
        ids = labels
    else:
        ids = [-1 if x == -1 else parse_label(spec, x, f"{where} row {i}") for i, x in enumerate(labels)]
    texts = {role: column(ds, role) for role in spec.text_columns}
    if unlabelled:
        logger.warning("%s: dropping %d unlabelled rows (label -1)", where, unlabelled)
        keep = [i for i, x in enumerate(ids) if x != -1]
        texts = {k: [v[i] for i in keep] for k, v in texts.items()}
        ids = [ids[i] for i in keep]
    if not ids:
        raise DataError(f"{where}: no examples (empty split)")
    return texts_dataset(texts, ids)


def load_hub_split(spec: TaskSpec, lang: str, split: str, *, path: str | None = None) -> datasets.Dataset:
    """One split (``train`` / ``dev`` / ``test``) of one language, as columns sentence1 [, sentence2], label.

    Rows whose label is -1 (unlabelled in the hub copy of PAWS-X) are dropped with a warning; any
    other label the task does not know is a DataError naming the dataset, config and split.
    """
    _, where = _where(spec, lang, split, path)
    return map_hub_labels(load_hub_raw(spec, lang, split, path=path), spec, where)


def hub_languages(path: str) -> list[str]:
    """The config names (languages) of a ``datasets`` source, sorted."""
    try:
        return sorted(datasets.get_dataset_config_names(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"task.languages: cannot list the configs of {path!r} ({first}); give task.languages"
        ) from exc
