"""``fastrobust synonyms --wordnet DIR -o synonyms.json``: an English synonym table for RS-DA.

Reads a WordNet 3.x database folder (Debian/Ubuntu: ``apt-get install wordnet-base`` puts it in
``/usr/share/wordnet``) and writes ``{word: [synonym, ...]}`` with the filters of
:mod:`fastrobust.data.wordnet` (single lowercase words, the word's dominant part of speech, its
most frequent senses only, no function words). Use it with ``rs-da`` (``synonyms:`` in the method
section or ``task.synonyms``) or ``fastrobust augment --synonyms``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastrobust.data.wordnet import POS_FILES, SynonymFilters, build_synonym_table, write_synonym_table
from fastrobust.errors import ConfigError

DEFAULT_WORDNET = "/usr/share/wordnet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynonymFilters()
    parser.add_argument(
        "--wordnet", default=DEFAULT_WORDNET, help=f"WordNet dict folder (default {DEFAULT_WORDNET})"
    )
    parser.add_argument("-o", "--out", required=True, help="output JSON file")
    parser.add_argument("--pos", default=",".join(d.pos), help="parts of speech n,v,a,r (default all)")
    parser.add_argument(
        "--max-senses", type=int, default=d.max_senses, help="a word's most frequent senses used"
    )
    parser.add_argument(
        "--min-count", type=int, default=d.min_count, help="tagged occurrences a sense needs (cntlist.rev)"
    )
    parser.add_argument(
        "--synonym-max-senses",
        type=int,
        default=d.synonym_max_senses,
        help="the shared synset must be among the synonym's own first N senses",
    )
    parser.add_argument("--min-length", type=int, default=d.min_length, help="letters a word needs")
    parser.add_argument("--max-synonyms", type=int, default=d.max_synonyms, help="synonyms kept per word")


def run(args: argparse.Namespace) -> int:
    pos = tuple(p.strip() for p in args.pos.split(",") if p.strip())
    bad = [p for p in pos if p not in POS_FILES]
    if bad or not pos:
        raise ConfigError(f"--pos: unknown part of speech {bad or args.pos!r} (use n, v, a, r)")
    for name in ("max_senses", "synonym_max_senses", "min_length", "max_synonyms"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.min_count < 0:
        raise ConfigError(f"--min-count: must be >= 0, got {args.min_count}")
    filters = SynonymFilters(
        pos=pos,
        max_senses=args.max_senses,
        min_count=args.min_count,
        synonym_max_senses=args.synonym_max_senses,
        min_length=args.min_length,
        max_synonyms=args.max_synonyms,
    )
    folder = Path(args.wordnet)
    if not folder.is_dir():
        raise ConfigError(
            f"--wordnet: {folder} is not a folder (apt-get install wordnet-base installs /usr/share/wordnet)"
        )
    table = build_synonym_table(folder, filters)
    out = write_synonym_table(table, args.out)
    n = sum(len(v) for v in table.values())
    print(f"fastrobust synonyms: {len(table)} words, {n} synonyms -> {out}")
    return 0
