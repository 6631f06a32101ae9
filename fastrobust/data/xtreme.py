"""Local classification files: the XTREME layout (TSV), the same layout as JSONL or CSV.

Layout of a task folder (what XTREME's ``utils_preprocess.py`` writes for PAWS-X and XNLI, what
the synthetic benchmark writes, and what a ``custom`` task uses)::

    train-en.tsv            training set (train language; other train-<lang>.tsv files are allowed)
    dev-<lang>.tsv          development set per language
    test-<lang>.tsv         test set per language (parallel across languages for G-XLT)
    test-<A>-<B>.tsv        optional ready-made G-XLT pairs: sentence1 in A, sentence2 in B
    synonyms.json           optional RS-DA synonym table {word: [synonyms]}

Which columns hold the text(s) and the label comes from the task's spec
(:class:`fastrobust.data.tasks.TaskSpec`): one text column (single-sentence task) or two (pair).

TSV: each line is ``text<TAB>label`` or ``sentence1<TAB>sentence2<TAB>label``, no quoting (XTREME
writes with ``csv.QUOTE_NONE``, so a ``"`` is an ordinary character) and no header. A first line
that names the label column (presets: ``label`` / ``gold_label``) is a header: columns are then
taken by name, so raw PAWS-X files (``id sentence1 sentence2 label``) and MultiNLI-style files
(``premise hypo label``) load too. Blank lines are ignored.

JSONL: one object per line with the text and label keys (presets: ``sentence1``/``sentence2`` or
the hub's ``premise``/``hypothesis``). CSV: RFC-4180 quoting, a header row naming the columns.

Labels are mapped with :func:`fastrobust.data.tasks.parse_label` (PAWS-X ``0``/``1``; XNLI words,
``contradictory`` -> ``contradiction``; custom: the configured names or ids, or the values found
in the training set). Every dataset has the columns ``sentence1`` [, ``sentence2``], ``label``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from fastrobust.data.tasks import TaskSpec, parse_label
from fastrobust.data.textio import iter_lines, read_text
from fastrobust.errors import DataError

PAIR_FEATURES = datasets.Features(
    {
        "sentence1": datasets.Value("string"),
        "sentence2": datasets.Value("string"),
        "label": datasets.Value("int64"),
    }
)
SINGLE_FEATURES = datasets.Features({"sentence1": datasets.Value("string"), "label": datasets.Value("int64")})
EXTENSIONS = {"tsv": "tsv", "jsonl": "jsonl", "csv": "csv"}


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


def texts_dataset(texts: dict[str, list[str]], labels: list[int]) -> datasets.Dataset:
    """A single-sentence (``sentence1``) or pair (``sentence1``, ``sentence2``) dataset with labels."""
    if "sentence2" in texts:
        return pairs_dataset(texts["sentence1"], texts["sentence2"], labels)
    return datasets.Dataset.from_dict(
        {"sentence1": texts["sentence1"], "label": labels}, features=SINGLE_FEATURES
    )


@dataclass
class RawSplit:
    """One split as read from a file, labels not yet mapped: texts per role, raw label values, and
    where each row came from (``file:line``) for error messages."""

    path: Path
    texts: dict[str, list[str]]
    labels: list[Any]
    where: list[str]

    def to_dataset(self, spec: TaskSpec) -> datasets.Dataset:
        """The split with labels mapped to ids of ``spec`` (DataError naming the row of a bad one)."""
        if not self.labels:
            raise DataError(f"{self.path}: no examples (empty split)")
        ids = [parse_label(spec, raw, where) for raw, where in zip(self.labels, self.where)]
        return texts_dataset(self.texts, ids)


def _names(spec: TaskSpec, role: str) -> tuple[str, ...]:
    return spec.column_names[role]


def _header_columns(spec: TaskSpec, fields: list[str], where: str) -> list[int] | None:
    """Column indices of the text roles then the label, if ``fields`` is a header row, else None."""
    names = [f.strip().lower() for f in fields]
    if not any(n.lower() in names for n in _names(spec, "label")):
        return None
    found = []
    for role in (*spec.text_columns, "label"):
        aliases = {a.lower() for a in _names(spec, role)}
        idx = next((i for i, n in enumerate(names) if n in aliases), None)
        if idx is None:
            raise DataError(f"{where}: header {fields} has no {role} column (accepted: {sorted(aliases)})")
        found.append(idx)
    return found


def read_tsv_raw(path: str | Path, spec: TaskSpec) -> RawSplit:
    """Rows of one TSV (see the module docstring), labels as spelt in the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    k = len(spec.text_columns)
    texts: dict[str, list[str]] = {role: [] for role in spec.text_columns}
    labels: list[str] = []
    where: list[str] = []
    cols, width, first = list(range(k + 1)), k + 1, True
    # lines split on "\n" only (a stray "\r" inside a sentence must not start a new row); a CRLF
    # line end is stripped; a byte that is not UTF-8 is an error naming the line and byte offset
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if first:
            first = False
            header = _header_columns(spec, fields, f"{path}:{lineno}")
            if header is not None:
                cols, width = header, len(fields)
                continue
        if len(fields) != width:
            hint = " (a test file without labels cannot be evaluated)" if len(fields) == width - 1 else ""
            roles = ", ".join(_names(spec, r)[0] for r in (*spec.text_columns, "label"))
            expected = roles if width == k + 1 else "as many as the header"
            raise DataError(
                f"{path}:{lineno}: expected {width} tab-separated fields ({expected}), "
                f"found {len(fields)}{hint}"
            )
        for role, c in zip(spec.text_columns, cols):
            texts[role].append(fields[c].strip())
        labels.append(fields[cols[k]])
        where.append(f"{path}:{lineno}")
    return RawSplit(path, texts, labels, where)


def _first_key(row: dict, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in row), None)


def read_jsonl_raw(path: str | Path, spec: TaskSpec) -> RawSplit:
    """Rows of one JSONL file (one object per line with the text and label keys)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    texts: dict[str, list[str]] = {role: [] for role in spec.text_columns}
    labels: list[Any] = []
    where: list[str] = []
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        here = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{here}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{here}: expected a JSON object, found {type(row).__name__}")
        keys = [_first_key(row, _names(spec, role)) for role in spec.text_columns]
        label_key = _first_key(row, _names(spec, "label"))
        if any(key is None or not isinstance(row[key], str) for key in keys) or label_key is None:
            wanted = " and ".join(repr(_names(spec, r)[0]) for r in spec.text_columns)
            alts = [_names(spec, r)[1] for r in spec.text_columns if len(_names(spec, r)) > 1]
            alt = f" (or {' and '.join(repr(a) for a in alts)})" if alts else ""
            noun = "fields" if spec.pair else "field"
            raise DataError(
                f"{here}: expected string {noun} {wanted}{alt} and a {_names(spec, 'label')[0]!r}; "
                f"found keys {sorted(row)}"
            )
        for role, key in zip(spec.text_columns, keys):
            texts[role].append(row[key])
        labels.append(row[label_key])
        where.append(here)
    return RawSplit(path, texts, labels, where)


def read_csv_raw(path: str | Path, spec: TaskSpec) -> RawSplit:
    """Rows of one CSV file with a header row (RFC-4180 quoting; columns by name)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    texts: dict[str, list[str]] = {role: [] for role in spec.text_columns}
    labels: list[str] = []
    where: list[str] = []
    # read whole (and checked to be UTF-8, naming line and byte offset otherwise), then parsed
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: no examples (empty split)")
        cols = _header_columns(spec, header, f"{path}:1")
        if cols is None:
            raise DataError(
                f"{path}:1: a CSV file needs a header row naming the label column "
                f"{_names(spec, 'label')[0]!r}; found {header}"
            )
        k = len(spec.text_columns)
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            here = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise DataError(
                    f"{here}: expected {len(header)} comma-separated fields (as the header), found {len(row)}"
                )
            for role, c in zip(spec.text_columns, cols):
                texts[role].append(row[c].strip())
            labels.append(row[cols[k]])
            where.append(here)
    return RawSplit(path, texts, labels, where)


_RAW_READERS = {"tsv": read_tsv_raw, "jsonl": read_jsonl_raw, "csv": read_csv_raw}


def read_tsv(path: str | Path, spec: TaskSpec) -> datasets.Dataset:
    """Read one TSV split of ``spec``'s task; every row and label is validated.

    Without a header, each row is the text column(s) then the label. With a header row (first
    line, naming the label column), columns are picked by name. Returns a Dataset of N rows
    (sentence1 [, sentence2], label). Errors name the file and line: a row with the wrong number of
    fields, an unknown label, a missing or empty file.
    """
    return read_tsv_raw(path, spec).to_dataset(spec)


def read_jsonl(path: str | Path, spec: TaskSpec) -> datasets.Dataset:
    """Read one JSONL split of ``spec``'s task (text and label keys per line); errors name file and line."""
    return read_jsonl_raw(path, spec).to_dataset(spec)


def read_csv(path: str | Path, spec: TaskSpec) -> datasets.Dataset:
    """Read one CSV split (header row) of ``spec``'s task; errors name file and line."""
    return read_csv_raw(path, spec).to_dataset(spec)


def split_file(folder: str | Path, split: str, lang: str, fmt: str = "tsv") -> Path:
    """Path of ``<split>-<lang>.<ext>`` in ``folder`` (split in train/dev/test, or ``test`` + ``A-B``)."""
    if fmt not in EXTENSIONS:
        raise DataError(f"task.format: unknown format {fmt!r}; valid: {sorted(EXTENSIONS)}")
    return Path(folder) / f"{split}-{lang}.{EXTENSIONS[fmt]}"


def read_split_raw(path: Path, spec: TaskSpec, fmt: str) -> RawSplit:
    """Read one split file in ``fmt`` ('tsv', 'jsonl' or 'csv'), labels unmapped."""
    if fmt not in _RAW_READERS:
        raise DataError(f"task.format: unknown format {fmt!r}; valid: {sorted(EXTENSIONS)}")
    return _RAW_READERS[fmt](path, spec)


def read_split(path: Path, spec: TaskSpec, fmt: str) -> datasets.Dataset:
    """Read one split file in ``fmt`` ('tsv', 'jsonl' or 'csv')."""
    return read_split_raw(path, spec, fmt).to_dataset(spec)


def split_languages(folder: str | Path, split: str, fmt: str = "tsv") -> list[str]:
    """Language codes ``X`` of the ``<split>-X.<ext>`` files in ``folder``, sorted.

    For ``test``, a name ``A-B`` whose A and B are both languages with their own test file is a
    ready-made G-XLT file, not a language.
    """
    ext = "." + EXTENSIONS[fmt]
    prefix = split + "-"
    found = sorted(
        p.name[len(prefix) : -len(ext)]
        for p in Path(folder).iterdir()
        if p.is_file()
        and p.name.startswith(prefix)
        and p.name.endswith(ext)
        and len(p.name) > len(prefix + ext)
    )
    plain = set(found)
    return [x for x in found if not (x.count("-") == 1 and set(x.split("-")) <= plain - {x})]


def gxlt_files(folder: str | Path, languages: list[str], fmt: str = "tsv") -> dict[tuple[str, str], Path]:
    """Ready-made G-XLT files ``test-<A>-<B>.<ext>`` in ``folder``, for ordered pairs of ``languages``."""
    found = {}
    for a in languages:
        for b in languages:
            path = split_file(folder, "test", f"{a}-{b}", fmt)
            if path.is_file():
                found[(a, b)] = path
    return found
