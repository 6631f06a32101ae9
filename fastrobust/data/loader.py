"""``load_task``: one TaskConfig -> train / dev / test / G-XLT datasets of one task.

One machinery for every task: :func:`fastrobust.data.tasks.build_spec` turns the task section into
a spec (PAWS-X and XNLI are presets; ``custom`` names its columns and labels), and the sources
read any spec. Sources (``task.source``): ``hub`` reads
``datasets.load_dataset(<hub id or task.path>, <lang>)``; ``local`` reads a folder in the XTREME
layout (``task.format`` tsv, jsonl or csv, see :mod:`fastrobust.data.xtreme`); ``auto`` is local
when ``task.path`` is given, hub otherwise. A custom task without ``task.languages`` takes its
languages from the ``test-<lang>`` file names (hub: the dataset's configs), and without
``task.labels`` its labels from the training set.
Task ``synthetic`` builds (or reuses from its cache) the synthetic benchmark and reads its folder
with the local TSV loader, taking the synonym table the benchmark ships.

Truncation is deterministic: ``max_train_examples`` keeps the first N training rows,
``max_eval_examples`` the first N rows of each dev and test set (test sets stay parallel, so G-XLT
pairs are built from the truncated sets), ``max_gxlt_examples`` the first N rows of each G-XLT pair
set. ``gxlt_pairs`` chooses the pairs: all, those with the train language, or a list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets

from fastrobust.data.gxlt import build_gxlt_pairs, select_pairs
from fastrobust.data.hub import hub_label_names, hub_languages, load_hub_raw, load_hub_split, map_hub_labels
from fastrobust.data.tasks import TaskSpec, build_spec, labels_from_values, resolve_languages, synthetic_spec
from fastrobust.data.textio import read_text
from fastrobust.data.xtreme import RawSplit, column, gxlt_files, read_split_raw, split_file, split_languages
from fastrobust.errors import DataError

if TYPE_CHECKING:
    from fastrobust.config import TaskConfig


@dataclass
class TaskData:
    """Everything one run needs from a task.

    ``train``, every ``dev`` / ``test`` set and every ``gxlt`` set have the columns sentence1 (str),
    sentence2 (str, pair tasks only: ``pair``), label (int, index into ``label_names``).
    ``languages`` lists the evaluation languages, train language first; ``gxlt`` maps (language of
    sentence1, language of sentence2) to its pair set (empty when G-XLT is off or for
    single-sentence tasks).
    """

    name: str
    label_names: list[str]
    train_language: str
    languages: list[str]
    train: datasets.Dataset
    dev: dict[str, datasets.Dataset]
    test: dict[str, datasets.Dataset]
    gxlt: dict[tuple[str, str], datasets.Dataset]
    synonyms: dict[str, list[str]] | None = None
    pair: bool = True

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def load_synonyms(path: str | Path) -> dict[str, list[str]]:
    """Read a JSON synonym table ``{word: [synonym, ...]}``; DataError naming the file when malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: synonym file not found")
    try:
        table = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if not isinstance(table, dict):
        raise DataError(f"{path}: expected a JSON object word -> list of synonyms")
    for word, syns in table.items():
        if not isinstance(syns, list) or not all(isinstance(s, str) for s in syns):
            raise DataError(f"{path}: entry {word!r} must be a list of strings")
    return table


def _head(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None or len(ds) <= n else ds.select(range(n))


def _local_languages(cfg: TaskConfig, spec: TaskSpec, folder: Path) -> list[str]:
    """Evaluation languages of a local folder: the config's, or (no language list) its test files'."""
    if cfg.languages is not None or spec.languages is not None:
        return resolve_languages(spec, cfg.languages, cfg.train_language)
    found = split_languages(folder, "test", cfg.format)
    if not found:
        raise DataError(
            f"task.languages: no test-<lang>.{cfg.format} files in {folder} to take the languages from "
            "(name them test-<lang>, or give task.languages)"
        )
    return resolve_languages(spec, found, cfg.train_language)


def _load_local(cfg: TaskConfig, spec: TaskSpec, folder: Path):
    """(spec with its labels, languages, train, dev, test, ready-made G-XLT) of a local folder."""
    if not folder.is_dir():
        raise DataError(
            f"task.path: {folder} is not a folder (expected the XTREME layout: train-en.tsv, ...)"
        )
    fmt = cfg.format
    languages = _local_languages(cfg, spec, folder)

    def need(path: Path, what: str) -> Path:
        if not path.is_file():
            raise DataError(
                f"{path}: file not found ({what}; set task.languages to the languages the folder has, "
                f"task.format is {fmt!r})"
            )
        return path

    def read(path: Path) -> RawSplit:
        return read_split_raw(path, spec, fmt)

    train_raw = read(
        need(split_file(folder, "train", cfg.train_language, fmt), "training set of task.train_language")
    )
    if not spec.label_names:  # a custom task without task.labels: the training set defines them
        names = labels_from_values(train_raw.labels, f"{train_raw.path} (labels)")
        spec = spec.with_labels(names, from_data=True)
    train = train_raw.to_dataset(spec)
    dev = {}
    for lang in languages:
        path = split_file(folder, "dev", lang, fmt)
        # only the train language's dev set is required (it selects the checkpoint)
        if path.is_file() or lang == cfg.train_language:
            dev[lang] = read(
                need(path, "dev set of task.train_language, used to select checkpoints")
            ).to_dataset(spec)
    test = {
        lang: read(need(split_file(folder, "test", lang, fmt), f"test set of {lang!r}")).to_dataset(spec)
        for lang in languages
    }
    ready = {}
    if cfg.gxlt and spec.pair:
        ready = {
            pair: read(path).to_dataset(spec) for pair, path in gxlt_files(folder, languages, fmt).items()
        }
    return spec, languages, train, dev, test, ready


def _load_hub(cfg: TaskConfig, spec: TaskSpec):
    """(spec with its labels, languages, train, dev, test, {}) of a ``datasets`` source."""
    requested = cfg.languages
    if requested is None and spec.languages is None:
        if not cfg.path:
            raise DataError("task.path: required for task 'custom' (a folder or any load_dataset path)")
        requested = hub_languages(cfg.path)
    languages = resolve_languages(spec, requested, cfg.train_language)
    where = f"hub dataset {cfg.path or spec.hub_id!r} config {cfg.train_language!r} split 'train'"
    raw_train = load_hub_raw(spec, cfg.train_language, "train", path=cfg.path)
    if not spec.label_names:
        names = hub_label_names(raw_train)
        if names is not None:
            spec = spec.with_labels(names)
        else:
            spec = spec.with_labels(labels_from_values(column(raw_train, "label"), where), from_data=True)
    train = map_hub_labels(raw_train, spec, where)
    dev = {lang: load_hub_split(spec, lang, "dev", path=cfg.path) for lang in languages}
    test = {lang: load_hub_split(spec, lang, "test", path=cfg.path) for lang in languages}
    return spec, languages, train, dev, test, {}


def load_task(cfg: TaskConfig) -> TaskData:
    """Load the task described by ``cfg`` (a :class:`fastrobust.config.TaskConfig`).

    Returns TaskData with the train set of ``cfg.train_language``, dev sets (the train language's
    is required; other languages' when available), test sets of every evaluation language and,
    when ``cfg.gxlt`` and the task is a pair task, the len(languages)**2 G-XLT pair sets. Raises
    DataError for a missing file, a malformed row, an unknown label or language, an empty split or
    non-parallel test sets.
    """
    synonyms_path = Path(cfg.synonyms) if cfg.synonyms else None
    if cfg.name == "synthetic":
        # imported here: the benchmark's builder loads the config schema (pydantic) and, to build,
        # tokenizers/transformers; the other tasks need none of them
        from fastrobust.data.synthetic import prepare_synthetic

        spec = synthetic_spec(cfg.synthetic.languages)
        # checked before building: a wrong language should not cost a benchmark build
        resolve_languages(spec, cfg.languages, cfg.train_language)
        if cfg.format != "tsv":
            raise DataError(f"task.format: the synthetic benchmark is written as tsv, not {cfg.format!r}")
        folder = Path(prepare_synthetic(cfg.synthetic).data_dir)
        spec, languages, train, dev, test, ready = _load_local(cfg, spec, folder)
        if synonyms_path is None and (folder / "synonyms.json").is_file():
            synonyms_path = folder / "synonyms.json"
    else:
        spec = build_spec(cfg)
        source = cfg.source
        if source == "auto":
            source = "local" if cfg.path else "hub"
        if source == "local":
            if not cfg.path:
                raise DataError("task.path: required when task.source is 'local'")
            folder = Path(cfg.path).expanduser()
            spec, languages, train, dev, test, ready = _load_local(cfg, spec, folder)
            if synonyms_path is None and (folder / "synonyms.json").is_file():
                synonyms_path = folder / "synonyms.json"
        else:
            spec, languages, train, dev, test, ready = _load_hub(cfg, spec)

    train = _head(train, cfg.max_train_examples)
    n_eval = cfg.max_eval_examples
    dev = {k: _head(v, n_eval) for k, v in dev.items()}
    test = {k: _head(v, n_eval) for k, v in test.items()}
    gxlt = {}
    if cfg.gxlt and spec.pair:
        pairs = select_pairs(cfg.gxlt_pairs, languages, cfg.train_language)
        try:
            gxlt = build_gxlt_pairs(test, languages, {k: _head(v, n_eval) for k, v in ready.items()}, pairs)
        except DataError as exc:
            raise DataError(
                f"{exc} — G-XLT needs test sets that are translations of each other, row by row; "
                "set task.gxlt: false otherwise"
            ) from None
        # a separate cap: n*n pair sets cost n times the XLT test (225 sets for XNLI)
        gxlt = {k: _head(v, cfg.max_gxlt_examples) for k, v in gxlt.items()}
    return TaskData(
        name=spec.name,
        label_names=list(spec.label_names),
        train_language=cfg.train_language,
        languages=languages,
        train=train,
        dev=dev,
        test=test,
        gxlt=gxlt,
        synonyms=load_synonyms(synonyms_path) if synonyms_path is not None else None,
        pair=spec.pair,
    )
