"""Generalized cross-lingual transfer (G-XLT) pair sets.

G-XLT tests a model on pairs whose two sentences are in different languages: for an ordered pair
of languages (A, B), example i is ``(sentence1 of test[A][i], sentence2 of test[B][i], label i)``.
This is valid because the XNLI and PAWS-X test sets are translations of the same examples in the
same order, so example i has the same label in every language. :func:`build_gxlt_pairs` checks
that (same size, same label sequence) and refuses non-parallel sets, naming both languages and the
first index where they differ. For A == B the pair set is test[A] itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import datasets

from fastrobust.data.xtreme import column, pairs_dataset
from fastrobust.errors import DataError


def _first_difference(a: str, la: list[int], b: str, lb: list[int]) -> str | None:
    """None when the label sequences are equal, else a message naming both languages and the index."""
    if len(la) != len(lb):
        return (
            f"G-XLT: test sets of {a!r} ({len(la)} examples) and {b!r} ({len(lb)} examples) "
            "are not parallel: sizes differ"
        )
    if la == lb:
        return None
    i = next(i for i, (x, y) in enumerate(zip(la, lb)) if x != y)
    return (
        f"G-XLT: test sets of {a!r} and {b!r} are not parallel: labels differ first at index {i} "
        f"({a}: {la[i]}, {b}: {lb[i]})"
    )


def check_parallel(a: str, first: datasets.Dataset, b: str, second: datasets.Dataset) -> None:
    """Raise DataError unless the test sets of languages ``a`` and ``b`` are parallel.

    Parallel means len(first) == len(second) and first["label"][i] == second["label"][i] for all i.
    """
    problem = _first_difference(a, column(first, "label"), b, column(second, "label"))
    if problem:
        raise DataError(problem)


def join_pair(a: str, first: datasets.Dataset, b: str, second: datasets.Dataset) -> datasets.Dataset:
    """The (a, b) G-XLT set: sentence1 from ``first`` (language a), sentence2 from ``second`` (language b).

    Shapes: both inputs have N rows; the result has N rows with the shared labels.
    """
    check_parallel(a, first, b, second)
    if a == b:
        return first
    return pairs_dataset(column(first, "sentence1"), column(second, "sentence2"), column(first, "label"))


def select_pairs(
    choice: str | Sequence[str], languages: Sequence[str], train_language: str, key: str = "task.gxlt_pairs"
) -> list[tuple[str, str]]:
    """The ordered G-XLT pairs to test, in row-major order of ``languages``.

    ``choice``: ``"all"`` (n*n pairs), ``"with_train_language"`` (the 2n-1 pairs with the train
    language on either side), or a list of ``"A-B"`` strings (sentence1 in A, sentence2 in B).
    """
    if choice == "all":
        return [(a, b) for a in languages for b in languages]
    if choice == "with_train_language":
        return [(a, b) for a in languages for b in languages if train_language in (a, b)]
    if isinstance(choice, str):
        raise DataError(
            f"{key}: expected 'all', 'with_train_language' or a list of 'A-B' pairs, got {choice!r}"
        )
    wanted = []
    for item in choice:
        a, sep, b = str(item).partition("-")
        if not sep or a not in languages or b not in languages:
            raise DataError(
                f"{key}: {item!r} is not a pair 'A-B' of evaluation languages ({' '.join(languages)})"
            )
        if (a, b) not in wanted:
            wanted.append((a, b))
    return [(a, b) for a in languages for b in languages if (a, b) in wanted]


def build_gxlt_pairs(
    test: Mapping[str, datasets.Dataset],
    languages: Sequence[str],
    ready_made: Mapping[tuple[str, str], datasets.Dataset] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> dict[tuple[str, str], datasets.Dataset]:
    """Every ordered pair (A, B) of ``languages`` (or only ``pairs``) -> its G-XLT test set.

    A ready-made set (from a ``test-A-B`` file) is used as is when given for a pair; the other pairs
    are joined from the parallel per-language ``test`` sets, which must contain every language
    that needs joining.
    """
    ready_made = dict(ready_made or {})
    cols: dict[str, dict[str, list]] = {}  # lang -> column lists, read once (225 pairs for XNLI)

    def columns(lang: str) -> dict[str, list]:
        if lang not in cols:
            if lang not in test:
                raise DataError(f"G-XLT: no test set for language(s) [{lang!r}] to build the pairs")
            cols[lang] = {c: column(test[lang], c) for c in ("sentence1", "sentence2", "label")}
        return cols[lang]

    wanted = list(pairs) if pairs is not None else [(a, b) for a in languages for b in languages]
    out: dict[tuple[str, str], datasets.Dataset] = {}
    for a, b in wanted:
        if (a, b) in ready_made:
            out[(a, b)] = ready_made[(a, b)]
            continue
        ca, cb = columns(a), columns(b)
        problem = _first_difference(a, ca["label"], b, cb["label"])
        if problem:
            raise DataError(problem)
        out[(a, b)] = test[a] if a == b else pairs_dataset(ca["sentence1"], cb["sentence2"], ca["label"])
    return out
