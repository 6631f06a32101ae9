"""RS-DA: randomized smoothing by synonym substitution (the paper's data augmentation).

Rule, applied to each sentence of a pair independently and afresh at every epoch:
every word w that has synonyms S(w) = {s_1..s_k} is replaced by a uniform draw from
{w, s_1, ..., s_k}, so it stays itself with probability 1/(k+1) and becomes each s_i
with probability 1/(k+1). Words are whitespace-separated tokens; leading and trailing
punctuation is split off and put back (``"Paris,"`` -> ``"Lyon,"``), lookup is on the
lowercased core and the replacement gets the core's capitalisation pattern
(``HOUSE`` -> ``HOME``, ``House`` -> ``Home``). The paper's perturb.py skipped
capitalised and punctuated words silently; here they are substituted like the others.

Synonym tables are JSON objects ``{"word": ["synonym", ...], ...}`` — the format of
the counter-fitted neighbour table the paper used, and of the table the synthetic
benchmark writes.

Randomness: example i of epoch e under seed s uses ``numpy.random.default_rng([s, e, i])``,
so an epoch's augmentation depends only on (seed, epoch, index): identical across
restarts, batch sizes and worker counts, different between epochs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import datasets
import numpy as np
from torch import Tensor, nn

from fastrobust.config.methods import SynonymConfig
from fastrobust.data.textio import read_text
from fastrobust.errors import ConfigError, DataError
from fastrobust.methods.base import Backward, RobustMethod
from fastrobust.methods.baseline import Baseline
from fastrobust.timing import NULL_TIMER, SectionTimer

# whitespace runs are kept as they are (re.split with a capture group returns them too)
_WHITESPACE = re.compile(r"(\s+)")
# leading punctuation, the word core, trailing punctuation: "(Hello," -> "(", "Hello", ","
_AFFIXES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)

TEXT_COLUMNS = ("sentence1", "sentence2")


class SynonymTable:
    """A validated synonym table: lowercased word -> distinct candidates other than the word.

    Keys are matched case-insensitively (``"Paris"`` and ``"paris"`` in the JSON are merged);
    candidate lists drop duplicates and the word itself, so the draw over {word} + candidates
    is uniform over distinct strings. ``digest`` identifies the table's content.
    """

    def __init__(self, table: Mapping[str, list[str]], source: str = "<synonym table>") -> None:
        if not isinstance(table, Mapping):
            raise DataError(
                f"{source}: expected a JSON object word -> list of synonyms, got {type(table).__name__}"
            )
        merged: dict[str, list[str]] = {}
        for word, syns in table.items():
            if not isinstance(word, str) or not word.strip():
                raise DataError(f"{source}: key {word!r} must be a non-empty string")
            if not isinstance(syns, list) or not all(isinstance(s, str) for s in syns):
                raise DataError(
                    f"{source}: entry {word!r} must be a list of strings, got {type(syns).__name__}"
                    + ("" if not isinstance(syns, list) else " with non-string items")
                )
            key = word.lower()
            bucket = merged.setdefault(key, [])
            for s in syns:
                if s and s.lower() != key and s not in bucket:
                    bucket.append(s)
        self.source = source
        self.table = {k: v for k, v in merged.items() if v}
        payload = json.dumps(self.table, sort_keys=True, ensure_ascii=False).encode("utf-8")
        self.digest = hashlib.sha256(payload).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.table)

    def candidates(self, word: str) -> list[str] | None:
        """The synonyms of ``word`` (case-insensitive), or None when it has none."""
        return self.table.get(word.lower())


def load_synonym_table(path: str | Path) -> SynonymTable:
    """Reads and validates a JSON synonym table; DataError naming the file (and line/key)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: synonym file not found")
    if not path.is_file():
        raise DataError(f"{path}: synonym table must be a JSON file, got a directory")
    text = read_text(path)  # a byte that is not UTF-8: DataError naming the line and byte offset
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    return SynonymTable(data, source=str(path))


def _match_case(template: str, word: str) -> str:
    """``word`` with ``template``'s capitalisation: ALL CAPS, Capitalised, or as given."""
    if template.islower():  # the common case, and the cheap test
        return word
    letters = [c for c in template if c.isalpha()]
    if not letters:
        return word
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return word.upper()
    if letters[0].isupper():
        return word[:1].upper() + word[1:]
    return word


def substitute_sentence(sentence: str, table: SynonymTable, rng: np.random.Generator) -> str:
    """One RS-DA draw for a sentence: each word with synonyms -> uniform over itself + synonyms.

    Whitespace is preserved exactly; punctuation attached before/after a word is kept;
    the replacement takes the word's capitalisation pattern.
    """
    if not isinstance(sentence, str):
        raise DataError(f"sentence: expected a string, got {type(sentence).__name__}")
    parts = _WHITESPACE.split(sentence)
    slots = []
    for i in range(0, len(parts), 2):  # even slots are tokens, odd ones whitespace
        token = parts[i]
        if not token:
            continue
        lead, core, trail = _AFFIXES.match(token).groups()
        if not core:
            continue
        syns = table.candidates(core)
        if syns is not None:
            slots.append((i, lead, core, trail, syns))
    if not slots:
        return sentence
    # one vectorised draw per sentence: option floor(u * (k + 1)) of {word, s_1..s_k}, uniform
    draws = rng.random(len(slots))
    for (i, lead, core, trail, syns), u in zip(slots, draws):
        choice = min(int(u * (len(syns) + 1)), len(syns))
        if choice == 0:
            continue  # the word itself, exactly as written
        parts[i] = lead + _match_case(core, syns[choice - 1]) + trail
    return "".join(parts)


def augment_examples(
    examples: Mapping[str, list], indices: list[int], table: SynonymTable, seed: int, epoch: int
) -> dict[str, list]:
    """Batched ``datasets.map`` function: substitutes sentence1 and sentence2 of each example.

    Example ``indices[j]`` draws from ``default_rng([seed, epoch, indices[j]])``; sentence1
    and sentence2 use that one generator in turn (independent draws per sentence).
    """
    out = {col: list(examples[col]) for col in TEXT_COLUMNS if col in examples}
    for j, idx in enumerate(indices):
        rng = np.random.default_rng([seed, epoch, idx])
        for col in TEXT_COLUMNS:
            if col in out and out[col][j] is not None:
                out[col][j] = substitute_sentence(out[col][j], table, rng)
    return out


def augment_dataset(
    dataset: datasets.Dataset, table: SynonymTable, *, seed: int, epoch: int
) -> datasets.Dataset:
    """The RS-DA version of ``dataset`` for (seed, epoch): same columns and rows, words substituted.

    Deterministic in (seed, epoch, table). Kept in memory (no cache files per epoch).
    """
    missing = [c for c in TEXT_COLUMNS if c not in dataset.column_names]
    if "sentence1" in missing:
        raise DataError(
            f"rs-da: the training set has no 'sentence1' column (columns: {dataset.column_names})"
        )
    for name, value in (("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"rs-da: {name} must be an integer >= 0, got {value!r}")
    fingerprint = hashlib.sha256(
        f"{dataset._fingerprint}|rs-da|{table.digest}|{seed}|{epoch}".encode()
    ).hexdigest()[:32]
    return dataset.map(
        augment_examples,
        fn_kwargs={"table": table, "seed": seed, "epoch": epoch},
        with_indices=True,
        batched=True,
        keep_in_memory=True,
        new_fingerprint=fingerprint,
        desc=f"RS-DA substitution (epoch {epoch})",
    )


class SynonymSubstitution(RobustMethod):
    """RS-DA (config kind ``rs-da``): the training set is re-drawn at every epoch; the
    training step itself is the baseline's."""

    cfg: SynonymConfig
    kind = "rs-da"
    config_class = SynonymConfig
    summary = "synonym substitution: needs task.synonyms or <task.path>/synonyms.json"

    @classmethod
    def build(
        cls, cfg: SynonymConfig, *, task_synonyms: Mapping[str, list[str]] | None = None
    ) -> SynonymSubstitution:
        return cls(cfg, task_synonyms=task_synonyms)

    def __init__(self, cfg: SynonymConfig, task_synonyms: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(cfg)
        if cfg.synonyms:
            self.table = load_synonym_table(cfg.synonyms)
        elif task_synonyms is not None:
            self.table = SynonymTable(task_synonyms, source="the task's synonym table")
        else:
            raise ConfigError(
                f"methods ({self.label}): rs-da needs a synonym table: set 'synonyms' to a JSON file "
                "word -> [synonyms], or use a task that ships one (task.synonyms / synonyms.json)"
            )
        self._step = Baseline()

    def epoch_train_dataset(self, dataset: datasets.Dataset, epoch: int, seed: int) -> datasets.Dataset:
        return augment_dataset(dataset, self.table, seed=seed, epoch=epoch)

    def training_step(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        backward: Backward,
        timer: SectionTimer = NULL_TIMER,
    ) -> Tensor:
        """The baseline step: the substitution already happened in ``epoch_train_dataset``."""
        return self._step.training_step(model, batch, backward, timer)
