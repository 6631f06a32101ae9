"""An English synonym table for RS-DA, built from the WordNet database files.

Reads the documented WordNet 3.x database format (wndb(5); Debian's ``wordnet-base`` installs it
in ``/usr/share/wordnet``) directly — no NLTK needed:

* ``index.<pos>`` (noun, verb, adj, adv): ``lemma pos synset_cnt p_cnt [ptr...] sense_cnt
  tagsense_cnt offset...``; the offsets are the lemma's senses, most frequent first;
* ``data.<pos>``: ``offset lex_filenum ss_type w_cnt(hex) [word lex_id(hex)]... p_cnt ... | gloss``,
  one synset per line (adjectives may carry a marker such as ``big(a)``);
* ``cntlist.rev`` (optional): ``sense_key sense_number tag_cnt`` — how often each sense was tagged
  in the semantic concordance; ``sense_key = lemma%ss_type:lex_filenum:lex_id:head:head_id``.

Table: for every word w, the words sharing one of w's *frequent senses* with w, under filters
(:class:`SynonymFilters`):

* **single words**: lemmas of lowercase letters only (no multi-word ``ice_cream``, no hyphens or
  digits, no proper nouns), at least ``min_length`` letters; function words (modals, pronouns,
  determiners...; ``STOPWORDS``) are never keys — "can" must not become "tin";
* **same part of speech**: only w's *dominant* part of speech (the one with the most tagged
  occurrences in ``cntlist.rev``; ties and untagged words: noun > verb > adjective > adverb) —
  RS-DA substitutes without a tagger, so a word's other POS would give wrong-POS synonyms;
* **frequent senses**: w's first ``max_senses`` senses of that POS, each tagged at least
  ``min_count`` times; a synonym s is kept only if that synset is also among s's own first
  ``synonym_max_senses`` senses (so "car" does not get "machine", whose car sense is rare);
* at most ``max_synonyms`` per word, in WordNet's order.

The output is ``{word: [synonym, ...]}`` (the format RS-DA reads), keys sorted. Only base forms
are listed: an inflected word ("files") is not substituted.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from fastrobust.errors import DataError
from fastrobust.fileio import atomic_write_json

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}  # 5 = adjective satellite
_WORD = re.compile(r"^[a-z]+$")
_MARKER = re.compile(r"\([a-z]+\)$")

# English function words that WordNet also lists as content words ("can" = tin, "will" = testament)
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be been before being
    below between both but by can cannot could did do does doing down during each either else
    ever every few for from further had has have having he her here hers herself him himself his
    how however i if in into is it its itself just least less let like may me might mine more most
    much must my myself neither no nor not now of off on once one only or other ought our ours
    ourselves out over own per rather same shall she should since so some such than that the their
    theirs them themselves then there these they this those though through thus to too under until
    up upon us very via was we were what when where whether which while who whom whose why will
    with within without would yet you your yours yourself yourselves""".split()  # noqa: SIM905
)


@dataclass(frozen=True)
class SynonymFilters:
    pos: tuple[str, ...] = ("n", "v", "a", "r")
    max_senses: int = 1
    min_count: int = 1
    synonym_max_senses: int = 3
    min_length: int = 3
    max_synonyms: int = 8


@dataclass
class _Synset:
    pos: str
    lex_filenum: str
    words: list[tuple[str, str]]  # (lemma as written, lex_id hex)


def _open(folder: Path, name: str) -> list[str]:
    path = folder / name
    if not path.is_file():
        raise DataError(f"{path}: WordNet file not found (is {folder} a WordNet 'dict' folder?)")
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def read_data(folder: Path, pos: str) -> dict[str, _Synset]:
    """offset -> synset of ``data.<pos>`` (license header lines start with spaces)."""
    out = {}
    name = f"data.{POS_FILES[pos]}"
    for n, line in enumerate(_open(folder, name), 1):
        if not line or line[0] == " ":
            continue
        f = line.split(" ")
        try:
            offset, lex_filenum, count = f[0], f[1], int(f[3], 16)
            words = [(f[4 + 2 * k], f[5 + 2 * k]) for k in range(count)]
        except (IndexError, ValueError):
            raise DataError(f"{folder / name}: line {n}: not a WordNet data line") from None
        out[offset] = _Synset(pos, lex_filenum, words)
    return out


def read_index(folder: Path, pos: str) -> dict[str, list[str]]:
    """lemma -> synset offsets, most frequent sense first (``index.<pos>``)."""
    out = {}
    name = f"index.{POS_FILES[pos]}"
    for n, line in enumerate(_open(folder, name), 1):
        if not line or line[0] == " ":
            continue
        f = line.split()
        try:
            n_synsets, n_ptrs = int(f[2]), int(f[3])
            offsets = f[4 + n_ptrs + 2 : 4 + n_ptrs + 2 + n_synsets]
        except (IndexError, ValueError):
            raise DataError(f"{folder / name}: line {n}: not a WordNet index line") from None
        if len(offsets) != n_synsets:
            raise DataError(f"{folder / name}: line {n}: expected {n_synsets} synset offsets")
        out[f[0]] = offsets
    return out


def read_counts(folder: Path) -> dict[tuple[str, str, str, str], int]:
    """(lemma, pos, lex_filenum, lex_id) -> tagged occurrences, from ``cntlist.rev`` (empty if absent)."""
    path = folder / "cntlist.rev"
    out: dict[tuple[str, str, str, str], int] = defaultdict(int)
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        f = line.split()
        if len(f) != 3 or "%" not in f[0]:
            continue
        lemma, _, rest = f[0].partition("%")
        parts = rest.split(":")
        if len(parts) < 3 or parts[0] not in _SS_TYPE:
            continue
        out[(lemma.lower(), _SS_TYPE[parts[0]], parts[1], f"{int(parts[2]):x}")] += int(f[2])
    return out


def _clean(word: str) -> str:
    return _MARKER.sub("", word)


def build_synonym_table(
    folder: str | Path, filters: SynonymFilters = SynonymFilters()
) -> dict[str, list[str]]:
    """``{word: [synonyms]}`` from the WordNet database in ``folder`` (see the module doc)."""
    folder = Path(folder)
    counts = read_counts(folder)
    data = {pos: read_data(folder, pos) for pos in filters.pos}
    index = {pos: read_index(folder, pos) for pos in filters.pos}

    def sense_count(lemma: str, pos: str, syn: _Synset) -> int:
        for w, lex_id in syn.words:
            if _clean(w).lower() == lemma:
                return counts.get((lemma, pos, syn.lex_filenum, lex_id.lower().lstrip("0") or "0"), 0)
        return 0

    def ok(word: str) -> bool:
        return bool(_WORD.match(word)) and len(word) >= filters.min_length and word not in STOPWORDS

    # dominant POS: most tagged occurrences; ties (and untagged words) by the order n, v, a, r
    pos_total: dict[str, dict[str, int]] = defaultdict(dict)
    for pos in filters.pos:
        for lemma, offsets in index[pos].items():
            if ok(lemma):
                pos_total[lemma][pos] = sum(
                    sense_count(lemma, pos, data[pos][o]) for o in offsets if o in data[pos]
                )
    order = {p: i for i, p in enumerate("nvar")}
    table: dict[str, list[str]] = {}
    for lemma, totals in pos_total.items():
        pos = min(totals, key=lambda p: (-totals[p], order[p]))
        syns: list[str] = []
        for offset in index[pos][lemma][: filters.max_senses]:
            synset = data[pos].get(offset)
            if synset is None or sense_count(lemma, pos, synset) < filters.min_count:
                continue
            for w, _ in synset.words:
                cand = _clean(w)
                if cand == lemma or not ok(cand) or cand in syns:
                    continue
                if offset not in index[pos].get(cand, [])[: filters.synonym_max_senses]:
                    continue
                syns.append(cand)
        if syns:
            table[lemma] = syns[: filters.max_synonyms]
    return dict(sorted(table.items()))


def write_synonym_table(table: dict[str, list[str]], path: str | Path) -> Path:
    """Write the table as JSON, atomically."""
    return atomic_write_json(path, table, ensure_ascii=False, indent=0, sort_keys=True)
