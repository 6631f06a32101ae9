"""Task specifications: label conventions, languages and hub ids of PAWS-X and XNLI.

Label conventions (one per task, the Hugging Face hub convention; every loader maps to it):

- **PAWS-X**: ``0 = not_paraphrase``, ``1 = paraphrase``. Files spell them ``0`` / ``1``.
- **XNLI**: ``0 = entailment``, ``1 = neutral``, ``2 = contradiction``. XTREME's XNLI TSVs
  spell labels as words; the MultiNLI-derived English training file may say
  ``contradictory``, which is mapped to ``contradiction`` (2). Integer spellings ``0/1/2`` are
  accepted as the ids above.
- **synthetic**: the PAWS-X convention (the synthetic benchmark writes PAWS-X-layout files).

Languages: PAWS-X ``en de es fr ja ko zh``; XNLI ``ar bg de el en es fr hi ru sw th tr ur vi zh``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fastrobust.errors import DataError

PAWSX_LANGUAGES = ("en", "de", "es", "fr", "ja", "ko", "zh")
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its label names (index = label id), languages and hub location.

    ``label_aliases`` maps every accepted spelling of a label in a file (lower-cased) to its id.
    ``hub_fields`` names the hub columns that become ``sentence1`` and ``sentence2``.
    """

    name: str
    label_names: tuple[str, ...]
    languages: tuple[str, ...]
    label_aliases: dict[str, int] = field(default_factory=dict)
    hub_id: str | None = None
    hub_fields: tuple[str, str] = ("sentence1", "sentence2")
    hub_splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"}
    )

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _aliases(names: Sequence[str], extra: dict[str, int] | None = None) -> dict[str, int]:
    table = {str(i): i for i in range(len(names))}
    table.update({name.lower(): i for i, name in enumerate(names)})
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

TASKS: dict[str, TaskSpec] = {"pawsx": PAWSX, "xnli": XNLI}


def synthetic_spec(languages: Sequence[str]) -> TaskSpec:
    """The synthetic benchmark: PAWS-X labels over the languages the benchmark generated."""
    return TaskSpec(
        name="synthetic",
        label_names=PAWSX.label_names,
        languages=tuple(languages),
        label_aliases=dict(PAWSX.label_aliases),
    )


def get_spec(name: str) -> TaskSpec:
    """The spec of a real task (``pawsx`` or ``xnli``); DataError naming the valid ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"task.name: unknown task {name!r}; valid: {sorted(TASKS)} or 'synthetic'") from None


def parse_label(spec: TaskSpec, raw: object, where: str) -> int:
    """Map one label spelling (``'1'``, ``'contradictory'``, ``2``) to its id in ``spec``'s convention.

    ``where`` names the file and line (or split) for the error message.
    """
    if isinstance(raw, bool):  # bool is an int subclass; True is not a label
        raw = str(raw)
    if isinstance(raw, int):
        if 0 <= raw < spec.num_labels:
            return raw
    elif isinstance(raw, str):
        key = raw.strip().lower()
        if key in spec.label_aliases:
            return spec.label_aliases[key]
    valid = ", ".join(f"{i}={n}" for i, n in enumerate(spec.label_names))
    raise DataError(f"{where}: unknown label {raw!r} for task {spec.name} (valid: {valid})")


def resolve_languages(spec: TaskSpec, requested: Sequence[str] | None, train_language: str) -> list[str]:
    """Evaluation languages, train language first, each checked against the task's languages.

    ``requested=None`` means every language of the task. The train language is prepended if the
    list does not contain it (English dev selects the checkpoint and English test is the reference).
    """
    valid = list(spec.languages)

    def check(lang: str, key: str) -> None:
        if lang not in spec.languages:
            raise DataError(
                f"{key}: unknown language {lang!r} for task {spec.name}; valid: {' '.join(valid)}"
            )

    check(train_language, "task.train_language")
    langs = list(spec.languages) if requested is None else list(requested)
    if not langs:
        raise DataError("task.languages: empty list (use null for every language of the task)")
    for lang in langs:
        check(lang, "task.languages")
    dup = sorted({x for x in langs if langs.count(x) > 1})
    if dup:
        raise DataError(f"task.languages: {dup} listed twice")
    return [train_language] + [x for x in langs if x != train_language]
