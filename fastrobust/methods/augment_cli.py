"""``fastrobust augment FILE --synonyms TABLE``: RS-DA copies of a training file, offline.

For users of other trainers (the counterpart of the paper's perturb.py): writes N copies
of a PAWS-X/XNLI-style training file in which every word with synonyms is replaced by a
uniform draw from itself + its synonyms, sentence1 and sentence2 independently (the rule
of :mod:`fastrobust.methods.synonyms`, case and punctuation kept).

Input formats:

* TSV: ``sentence1<TAB>sentence2<TAB>label`` without a header, or any columns with a header
  row naming ``sentence1`` (and optionally ``sentence2``), e.g. PAWS-X's ``id sentence1
  sentence2 label``. Other columns are copied unchanged.
* JSONL: one object per line with ``sentence1`` (and optionally ``sentence2``); other keys
  are copied unchanged.

Copy i uses the draw of training epoch i under ``--seed`` (row r from
``default_rng([seed, i, r])``), so ``fastrobust augment --copies 3 --seed 0`` writes exactly
what ``rs-da`` trains on in epochs 0, 1, 2 with seed 0. Output: ``OUT/<stem>.aug<i><suffix>``,
each written atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fastrobust.data.textio import read_text
from fastrobust.errors import ConfigError, DataError
from fastrobust.fileio import atomic_write_text

TEXT_COLUMNS = ("sentence1", "sentence2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", metavar="FILE", help="training file: TSV (sentence1, sentence2, label) or JSONL"
    )
    parser.add_argument("--synonyms", required=True, help="JSON synonym table word -> [synonyms]")
    parser.add_argument("--copies", type=int, default=1, help="number of augmented copies (default 1)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed; copy i is epoch i of rs-da under this seed"
    )
    parser.add_argument(
        "--format", choices=("auto", "tsv", "jsonl"), default="auto", help="default: by suffix"
    )
    parser.add_argument("--out", default=None, help="output folder (default: the input file's folder)")


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".tsv", ".txt", ".tab"):
        return "tsv"
    raise ConfigError(f"{path}: cannot tell the format from the suffix {suffix!r}; pass --format tsv|jsonl")


def read_tsv(path: Path) -> tuple[list[str] | None, list[list[str]], tuple[int, int | None]]:
    """(header or None, rows, (column of sentence1, column of sentence2 or None)).

    Without a header every line must have exactly 3 fields sentence1, sentence2, label.
    """
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines:
        raise DataError(f"{path}: empty file")
    first = lines[0].split("\t")
    if "sentence1" in first:
        header = first
        cols = (first.index("sentence1"), first.index("sentence2") if "sentence2" in first else None)
        body, offset = lines[1:], 2
    else:
        header, cols, body, offset = None, (0, 1), lines, 1
    width = len(header) if header else 3
    rows = []
    for i, line in enumerate(body):
        fields = line.split("\t")
        if len(fields) != width:
            expect = f"{width} tab-separated fields" + ("" if header else " (sentence1, sentence2, label)")
            raise DataError(f"{path}:{i + offset}: expected {expect}, got {len(fields)}")
        rows.append(fields)
    return header, rows, cols


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("sentence1"), str):
            raise DataError(f"{path}:{i}: expected an object with a string 'sentence1'")
        if "sentence2" in obj and obj["sentence2"] is not None and not isinstance(obj["sentence2"], str):
            raise DataError(f"{path}:{i}: 'sentence2' must be a string")
        rows.append(obj)
    if not rows:
        raise DataError(f"{path}: empty file")
    return rows


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def augment_file(
    input_path: str | Path,
    synonyms: str | Path,
    *,
    copies: int = 1,
    seed: int = 0,
    fmt: str = "auto",
    out_dir: str | Path | None = None,
) -> list[Path]:
    """Writes ``copies`` augmented copies of ``input_path``; returns their paths (see module doc)."""
    from fastrobust.methods.synonyms import load_synonym_table, substitute_sentence  # torch: not for --help

    path = Path(input_path)
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ConfigError(f"--copies: must be an integer >= 1, got {copies!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed: must be an integer >= 0, got {seed!r}")
    fmt = _detect_format(path, fmt)
    table = load_synonym_table(synonyms)
    out = Path(out_dir) if out_dir is not None else path.parent
    written = []
    if fmt == "tsv":
        header, rows, (c1, c2) = read_tsv(path)
    else:
        records = read_jsonl(path)
    for copy in range(copies):
        if fmt == "tsv":
            lines = ["\t".join(header)] if header else []
            for r, fields in enumerate(rows):
                rng = np.random.default_rng([seed, copy, r])
                new = list(fields)
                for c in (c1, c2):
                    if c is not None:
                        new[c] = substitute_sentence(fields[c], table, rng)
                lines.append("\t".join(new))
            text = "\n".join(lines) + "\n"
        else:
            out_lines = []
            for r, obj in enumerate(records):
                rng = np.random.default_rng([seed, copy, r])
                new = dict(obj)
                for col in TEXT_COLUMNS:
                    if isinstance(obj.get(col), str):
                        new[col] = substitute_sentence(obj[col], table, rng)
                out_lines.append(json.dumps(new, ensure_ascii=False))
            text = "\n".join(out_lines) + "\n"
        target = out / f"{path.stem}.aug{copy}{path.suffix}"
        _atomic_write(target, text)
        written.append(target)
    return written


def run(args: argparse.Namespace) -> int:
    written = augment_file(
        args.input, args.synonyms, copies=args.copies, seed=args.seed, fmt=args.format, out_dir=args.out
    )
    for path in written:
        print(path)
    return 0
