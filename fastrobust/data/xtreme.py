"""Local pair-classification files in the XTREME layout (TSV) or the same layout as JSONL.

Layout of a task folder (what XTREME's ``utils_preprocess.py`` writes for PAWS-X and XNLI, and what
the synthetic benchmark writes)::

    train-en.tsv            training set (train language; other train-<lang>.tsv files are allowed)
    dev-<lang>.tsv          development set per language
    test-<lang>.tsv         test set per language (parallel across languages)
    test-<A>-<B>.tsv        optional ready-made G-XLT pairs: sentence1 in A, sentence2 in B
    synonyms.json           optional RS-DA synonym table {word: [synonyms]}

Each TSV line is ``sentence1<TAB>sentence2<TAB>label`` with no quoting (XTREME writes with
``csv.QUOTE_NONE``, so a ``"`` is an ordinary character) and no header. A first line that names
a ``label`` / ``gold_label`` column is a header: columns are then taken by name, so raw PAWS-X
files (``id sentence1 sentence2 label``) and MultiNLI-style files (``premise hypo label``) load
too. Blank lines are ignored. Labels are mapped with :func:`fastrobust.data.tasks.parse_label`
(PAWS-X ``0``/``1``; XNLI words, ``contradictory`` -> ``contradiction``).

JSONL files use the same names with ``.jsonl``; each line is an object with ``sentence1``,
``sentence2`` (or the hub's ``premise`` / ``hypothesis``) and ``label`` (id or name).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from fastrobust.data.tasks import TaskSpec, parse_label
from fastrobust.data.textio import iter_lines
from fastrobust.errors import DataError

PAIR_FEATURES = datasets.Features(
    {
        "sentence1": datasets.Value("string"),
        "sentence2": datasets.Value("string"),
        "label": datasets.Value("int64"),
    }
)
EXTENSIONS = {"tsv": "tsv", "jsonl": "jsonl"}
_HEADER_LABELS = {"label", "gold_label"}
_S1_NAMES = {"sentence1", "premise"}
_S2_NAMES = {"sentence2", "hypothesis", "hypo"}


def column(dataset: datasets.Dataset, name: str) -> list:
    """Column ``name`` of ``dataset`` as a Python list (fast, through Arrow; honours select/shuffle).

    ``dataset[name]`` in datasets >= 4 is a lazy Column object whose iteration is slow, so Arrow is used.
    """
    return dataset.with_format("arrow")[name].to_pylist()


def pairs_dataset(sentence1: list[str], sentence2: list[str], labels: list[int]) -> datasets.Dataset:
    """A ``datasets.Dataset`` with the project's columns: sentence1, sentence2 (str), label (int64)."""
    return datasets.Dataset.from_dict(
        {"sentence1": sentence1, "sentence2": sentence2, "label": labels}, features=PAIR_FEATURES
    )


def _header_columns(fields: list[str], where: str) -> tuple[int, int, int] | None:
    """(sentence1, sentence2, label) column indices if ``fields`` is a header row, else None."""
    names = [f.strip().lower() for f in fields]
    if not any(n in _HEADER_LABELS for n in names):
        return None
    found = []
    for role, aliases in (("sentence1", _S1_NAMES), ("sentence2", _S2_NAMES), ("label", _HEADER_LABELS)):
        idx = next((i for i, n in enumerate(names) if n in aliases), None)
        if idx is None:
            raise DataError(f"{where}: header {fields} has no {role} column (accepted: {sorted(aliases)})")
        found.append(idx)
    return found[0], found[1], found[2]


def read_tsv(path: str | Path, spec: TaskSpec) -> datasets.Dataset:
    """Read one XTREME-layout TSV of sentence pairs; every row and label is validated.

    Without a header, each row is ``sentence1, sentence2, label``. With a header row (first line,
    naming a ``label``/``gold_label`` column), columns are picked by name — sentence1/premise,
    sentence2/hypothesis/hypo, label/gold_label — so raw PAWS-X files (``id sentence1 sentence2
    label``) and MultiNLI-style files (``premise hypo label``) load too; every row must then have as
    many fields as the header. Returns a Dataset of N rows (sentence1, sentence2, label). Errors name
    the file and line: a row with the wrong number of fields, an unknown label, a missing or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    s1: list[str] = []
    s2: list[str] = []
    labels: list[int] = []
    cols, width, first = (0, 1, 2), 3, True
    # lines split on "\n" only (a stray "\r" inside a sentence must not start a new row); a CRLF
    # line end is stripped; a byte that is not UTF-8 is an error naming the line and byte offset
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if first:
            first = False
            header = _header_columns(fields, f"{path}:{lineno}")
            if header is not None:
                cols, width = header, len(fields)
                continue
        if len(fields) != width:
            hint = " (a test file without labels cannot be evaluated)" if len(fields) == width - 1 else ""
            expected = "sentence1, sentence2, label" if width == 3 else "as many as the header"
            raise DataError(
                f"{path}:{lineno}: expected {width} tab-separated fields ({expected}), "
                f"found {len(fields)}{hint}"
            )
        s1.append(fields[cols[0]].strip())
        s2.append(fields[cols[1]].strip())
        labels.append(parse_label(spec, fields[cols[2]], f"{path}:{lineno}"))
    if not labels:
        raise DataError(f"{path}: no examples (empty split)")
    return pairs_dataset(s1, s2, labels)


def read_jsonl(path: str | Path, spec: TaskSpec) -> datasets.Dataset:
    """Read one JSONL file of sentence pairs (fields sentence1/sentence2 or premise/hypothesis, label).

    Returns a Dataset of N rows (sentence1, sentence2, label); errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    s1: list[str] = []
    s2: list[str] = []
    labels: list[int] = []
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, found {type(row).__name__}")
        a = row.get("sentence1", row.get("premise"))
        b = row.get("sentence2", row.get("hypothesis"))
        if not isinstance(a, str) or not isinstance(b, str) or "label" not in row:
            raise DataError(
                f"{where}: expected string fields 'sentence1' and 'sentence2' (or 'premise' and "
                f"'hypothesis') and a 'label'; found keys {sorted(row)}"
            )
        s1.append(a)
        s2.append(b)
        labels.append(parse_label(spec, row["label"], where))
    if not labels:
        raise DataError(f"{path}: no examples (empty split)")
    return pairs_dataset(s1, s2, labels)


def split_file(folder: str | Path, split: str, lang: str, fmt: str = "tsv") -> Path:
    """Path of ``<split>-<lang>.<ext>`` in ``folder`` (split in train/dev/test, or ``test`` + ``A-B``)."""
    if fmt not in EXTENSIONS:
        raise DataError(f"task.format: unknown format {fmt!r}; valid: {sorted(EXTENSIONS)}")
    return Path(folder) / f"{split}-{lang}.{EXTENSIONS[fmt]}"


def read_split(path: Path, spec: TaskSpec, fmt: str) -> datasets.Dataset:
    """Read one split file in ``fmt`` ('tsv' or 'jsonl')."""
    return read_jsonl(path, spec) if fmt == "jsonl" else read_tsv(path, spec)


def gxlt_files(folder: str | Path, languages: list[str], fmt: str = "tsv") -> dict[tuple[str, str], Path]:
    """Ready-made G-XLT files ``test-<A>-<B>.<ext>`` in ``folder``, for ordered pairs of ``languages``."""
    found = {}
    for a in languages:
        for b in languages:
            path = split_file(folder, "test", f"{a}-{b}", fmt)
            if path.is_file():
                found[(a, b)] = path
    return found
