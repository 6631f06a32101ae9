"""Task specifications: columns, label conventions, languages and hub ids — PAWS-X and XNLI
are presets of one machinery that also describes any user-defined (``custom``) task.

A task is sentence classification (one text column) or sentence-pair classification (two). Its
spec says which columns of a file hold the text(s) and the label, the label names (index = id),
and which language codes are valid. :func:`build_spec` makes the spec of a ``task`` config
section: a preset (``pawsx``, ``xnli``) supplies defaults that the section may override; ``custom``
takes everything from the section, and languages from the file names (see the loader).

Label conventions of the presets (the Hugging Face hub convention; every loader maps to it):

- **PAWS-X**: ``0 = not_paraphrase``, ``1 = paraphrase``. Files spell them ``0`` / ``1``.
- **XNLI**: ``0 = entailment``, ``1 = neutral``, ``2 = contradiction``. XTREME's XNLI TSVs
  spell labels as words; the MultiNLI-derived English training file may say
  ``contradictory``, which is mapped to ``contradiction`` (2). Integer spellings ``0/1/2`` are
  accepted as the ids above.
- **synthetic**: the PAWS-X convention (the synthetic benchmark writes PAWS-X-layout files).
- **custom**: ``task.labels`` in order, or — when not given — the sorted distinct label values of
  the training set (numerically sorted when they are all integers).

Languages: PAWS-X ``en de es fr ja ko zh``; XNLI ``ar bg de el en es fr hi ru sw th tr ur vi zh``;
custom: any code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fastrobust.errors import DataError

if TYPE_CHECKING:
    from fastrobust.config import TaskConfig

PAWSX_LANGUAGES = ("en", "de", "es", "fr", "ja", "ko", "zh")
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its columns, label names (index = label id), languages and hub location.

    ``text_columns``: ``("sentence1",)`` for a single-sentence task, ``("sentence1", "sentence2")``
    for a pair task — the roles every loaded dataset names its columns by. ``column_names`` maps
    each role and ``"label"`` to the names a file header, JSON object or hub dataset may use for
    it (first match wins). ``label_names`` empty means "read from the training data" (custom
    tasks without ``task.labels``); ``languages`` None means any code. ``label_aliases`` maps
    every accepted spelling of a label (stripped, lower-cased) to its id; with
    ``labels_are_values`` a label is matched by its value only (labels read from the data), else
    an integer or an integer string is also accepted as the id.
    """

    name: str
    label_names: tuple[str, ...]
    languages: tuple[str, ...] | None
    label_aliases: dict[str, int] = field(default_factory=dict)
    hub_id: str | None = None
    text_columns: tuple[str, ...] = ("sentence1", "sentence2")
    column_names: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(PAIR_COLUMN_NAMES))
    hub_fields: tuple[str, ...] = ("sentence1", "sentence2")
    hub_splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"}
    )
    labels_are_values: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def pair(self) -> bool:
        """True for sentence-pair tasks (two text columns)."""
        return len(self.text_columns) == 2

    @property
    def label_column(self) -> str:
        return self.column_names["label"][0]

    def with_labels(self, names: Sequence[str], *, from_data: bool = False) -> TaskSpec:
        """This spec with ``names`` as its labels (``from_data``: matched by value only)."""
        names = tuple(str(n) for n in names)
        aliases = {n.strip().lower(): i for i, n in enumerate(names)} if from_data else _aliases(names)
        return replace(self, label_names=names, label_aliases=aliases, labels_are_values=from_data)


# the names XTREME files, MultiNLI-style headers and the hub copies of PAWS-X and XNLI use
PAIR_COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "sentence1": ("sentence1", "premise"),
    "sentence2": ("sentence2", "hypothesis", "hypo"),
    "label": ("label", "gold_label"),
}


def _aliases(names: Sequence[str], extra: dict[str, int] | None = None) -> dict[str, int]:
    # ids first, names second: a name spelt like an id ("1" naming label 0) keeps its own meaning
    table = {str(i): i for i in range(len(names))}
    table.update({str(name).strip().lower(): i for i, name in enumerate(names)})
    table.update(extra or {})
    return table


PAWSX = TaskSpec(
    name="pawsx",
    label_names=("not_paraphrase", "paraphrase"),
    languages=PAWSX_LANGUAGES,
    label_aliases=_aliases(("not_paraphrase", "paraphrase")),
    hub_id="google-research-datasets/paws-x",
)

XNLI = TaskSpec(
    name="xnli",
    label_names=("entailment", "neutral", "contradiction"),
    languages=XNLI_LANGUAGES,
    # the MultiNLI-derived XNLI training file spells contradiction "contradictory"
    label_aliases=_aliases(("entailment", "neutral", "contradiction"), {"contradictory": 2}),
    hub_id="facebook/xnli",
    hub_fields=("premise", "hypothesis"),
)

PRESETS: dict[str, TaskSpec] = {"pawsx": PAWSX, "xnli": XNLI}
TASKS = PRESETS  # the old name


def synthetic_spec(languages: Sequence[str]) -> TaskSpec:
    """The synthetic benchmark: PAWS-X labels over the languages the benchmark generated."""
    return TaskSpec(
        name="synthetic",
        label_names=PAWSX.label_names,
        languages=tuple(languages),
        label_aliases=dict(PAWSX.label_aliases),
    )


def get_spec(name: str) -> TaskSpec:
    """The spec of a preset task (``pawsx`` or ``xnli``); DataError naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise DataError(
            f"task.name: unknown task {name!r}; valid: {sorted(PRESETS)}, 'custom' or 'synthetic'"
        ) from None


def custom_spec(cfg: TaskConfig) -> TaskSpec:
    """The spec of a ``custom`` task section: its text/label columns, labels (or none yet), any language."""
    if not cfg.text_columns:
        raise DataError(
            "task.text_columns: required for task 'custom': the column(s) holding the text, "
            "e.g. [text] (one sentence) or [sentence1, sentence2] (a pair)"
        )
    roles = ("sentence1", "sentence2")[: len(cfg.text_columns)]
    spec = TaskSpec(
        name="custom",
        label_names=(),
        languages=None,
        hub_id=None,
        text_columns=roles,
        column_names={**{r: (c,) for r, c in zip(roles, cfg.text_columns)}, "label": (cfg.label_column,)},
        hub_fields=tuple(cfg.text_columns),
    )
    return spec.with_labels(cfg.labels) if cfg.labels else spec


def build_spec(cfg: TaskConfig) -> TaskSpec:
    """The spec of a task section: a preset (with the section's column/label overrides) or custom."""
    if cfg.name == "custom":
        return custom_spec(cfg)
    spec = get_spec(cfg.name)
    if cfg.text_columns:
        if len(cfg.text_columns) != 2:
            raise DataError(f"task.text_columns: task {cfg.name} is a sentence-pair task; give two columns")
        spec = replace(
            spec,
            column_names={
                "sentence1": (cfg.text_columns[0],),
                "sentence2": (cfg.text_columns[1],),
                "label": (cfg.label_column,),
            },
            hub_fields=tuple(cfg.text_columns),
        )
    elif cfg.label_column != "label":
        spec = replace(spec, column_names={**spec.column_names, "label": (cfg.label_column,)})
    if cfg.labels:
        if len(cfg.labels) != spec.num_labels:
            raise DataError(
                f"task.labels: task {cfg.name} has {spec.num_labels} labels ({', '.join(spec.label_names)}), "
                f"got {len(cfg.labels)}"
            )
        spec = replace(
            spec.with_labels(cfg.labels), label_aliases={**spec.label_aliases, **_aliases(cfg.labels)}
        )
    return spec


def labels_from_values(values: Sequence[Any], where: str) -> list[str]:
    """Label names read from data: the sorted distinct values (numerically when all are integers).

    Raises DataError when fewer than 2 distinct values are found or two differ only in case.
    """
    distinct = sorted({str(v).strip() for v in values if v is not None}, key=_label_order)
    lowered = {}
    for name in distinct:
        other = lowered.setdefault(name.lower(), name)
        if other != name:
            raise DataError(
                f"{where}: labels {other!r} and {name!r} differ only in case; list them in task.labels"
            )
    if len(distinct) < 2:
        raise DataError(
            f"{where}: found {len(distinct)} distinct label(s) {distinct}; a classification task needs at "
            "least 2 (or list them in task.labels)"
        )
    return distinct


def _label_order(name: str) -> tuple:
    try:
        return (0, int(name), "")
    except ValueError:
        return (1, 0, name)


def parse_label(spec: TaskSpec, raw: object, where: str) -> int:
    """Map one label spelling (``'1'``, ``'contradictory'``, ``2``) to its id in ``spec``'s convention.

    ``where`` names the file and line (or split) for the error message.
    """
    if isinstance(raw, bool):  # bool is an int subclass; True is not a label
        raw = str(raw)
    if isinstance(raw, int) and not spec.labels_are_values:
        if 0 <= raw < spec.num_labels:
            return raw
    elif isinstance(raw, (str, int)):
        key = str(raw).strip().lower()
        if key in spec.label_aliases:
            return spec.label_aliases[key]
    valid = ", ".join(f"{i}={n}" for i, n in enumerate(spec.label_names))
    hint = (
        " — labels were read from the training set; list them all in task.labels"
        if spec.labels_are_values
        else ""
    )
    raise DataError(f"{where}: unknown label {raw!r} for task {spec.name} (valid: {valid}){hint}")


def resolve_languages(spec: TaskSpec, requested: Sequence[str] | None, train_language: str) -> list[str]:
    """Evaluation languages, train language first, each checked against the task's languages.

    ``requested=None`` means every language of the task (a spec without a language list must be
    given ``requested``). The train language is prepended if the list does not contain it (its dev
    set selects the checkpoint and its test set is the reference).
    """
    valid = list(spec.languages) if spec.languages is not None else None

    def check(lang: str, key: str) -> None:
        if not isinstance(lang, str) or not lang or "/" in lang or lang != lang.strip():
            raise DataError(f"{key}: {lang!r} is not a language code")
        if valid is not None and lang not in valid:
            raise DataError(
                f"{key}: unknown language {lang!r} for task {spec.name}; valid: {' '.join(valid)} "
                "(for other languages use task.name: custom)"
            )

    check(train_language, "task.train_language")
    if requested is None and valid is None:
        raise DataError(f"task.languages: task {spec.name} has no language list; give task.languages")
    langs = list(valid) if requested is None else list(requested)
    if not langs:
        raise DataError("task.languages: empty list (use null for every language of the task)")
    for lang in langs:
        check(lang, "task.languages")
    dup = sorted({x for x in langs if langs.count(x) > 1})
    if dup:
        raise DataError(f"task.languages: {dup} listed twice")
    return [train_language] + [x for x in langs if x != train_language]
