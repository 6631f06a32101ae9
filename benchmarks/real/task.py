"""A PAWS-X-style pair task from Debian's human-translated package descriptions.

**The task.** sentence1 is a package's synopsis (the one-line short description), sentence2 the
first paragraph of a long description; label 1 (``paraphrase`` in PAWS-X's convention: "the two
texts describe the same thing") when both come from the same description, 0 otherwise.

**Hard negatives, no single-sentence signal.** The units of a split are matched in pairs
(i, j) of *different* package families, greedily by ``tfidf(S_i)·tfidf(P_j) + tfidf(S_j)·tfidf(P_i)``
(English TF-IDF over word tokens) — the negatives are the descriptions whose wording overlaps the
synopsis most. Each matched pair gives four examples::

    (S_i, P_i, 1)  (S_i, P_j, 0)  (S_j, P_j, 1)  (S_j, P_i, 0)

so every synopsis and every paragraph occurs exactly once in a positive and once in a negative:
anything computed from one sentence alone (its length, its words, its language) predicts the
label at exactly chance. Near-duplicates are never matched (paragraph TF-IDF cosine above
``max_paragraph_cosine`` or synopsis cosine above ``max_synopsis_cosine``: both texts would fit
both synopses), and units are de-duplicated by synopsis and by paragraph first.

**No cross-script name cue.** Names and terms stay in Latin script inside Japanese or Korean
text ("GNOME", "X", "exim"), so a positive pair there often shares a Latin word and a negative
rarely does — a surface cue that survives translation (a bag-of-words model trained on English
reached ~56% on ja/ko/ru with it, chance being 50%). With ``name_free`` (default), in every test
language not written in Latin script (detected from the texts), a test unit whose synopsis and own
paragraph share a Latin-script word is left out, and no negative may share one either: there the
shared-word features of a bag-of-words model never fire.

**Splits, disjoint by family.** A unit's family is the set of source packages of the binary
packages carrying its description (``Packages``: ``Source:``); units sharing a source package are
joined (union-find) into one group, and a group lies in exactly one split. The test split is every
group holding a unit translated into all ``languages`` (same ``Description-md5``, the same number
of paragraphs, synopsis and first paragraph not left in English) — only those units are used
there; dev and train are drawn (by ``seed``) from the remaining groups, English only. Test sets are
parallel across languages (row k is the same example in every language), so a G-XLT pair (A, B)
is the join of test-A's sentence1 and test-B's sentence2.

**Determinism.** The output is a function of the list files, the spec and ``seed`` only; it is
cached under a key of those (``task-<key>/``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from benchmarks.real.debian import Description, PackageInfo, parse_packages, parse_translation
from fastrobust.fileio import atomic_write_json, atomic_write_text

TASK_VERSION = 1
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class RealTaskSpec:
    """What to build. Languages are Debian codes (``zh_CN``); files use them as they are."""

    languages: tuple[str, ...] = ("en", "de", "fr", "ja", "ko")
    seed: int = 0
    train_units: int = 4000  # -> 2x examples (each unit gives one positive and one negative)
    dev_units: int = 500
    test_units: int | None = None  # None = every eligible unit
    min_paragraph_words: int = 10
    max_paragraph_words: int = 60
    min_synopsis_words: int = 2
    max_synopsis_words: int = 16
    max_paragraph_cosine: float = 0.5
    max_synopsis_cosine: float = 0.8
    topic_weight: float = 0.5
    name_free: bool = True  # see the module doc, "No cross-script name cue"

    def key(self, inputs_digest: str) -> str:
        blob = json.dumps({"v": TASK_VERSION, "spec": asdict(self), "inputs": inputs_digest}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Unit:
    md5: str
    group: int
    text: dict[str, tuple[str, str]] = field(default_factory=dict)  # lang -> (synopsis, paragraph)


# --------------------------------------------------------------------------------------------
# selection


def english_ok(d: Description, spec: RealTaskSpec) -> bool:
    if not d.paragraphs or d.has_list[0]:
        return False
    nw, ns = len(d.paragraphs[0].split()), len(d.synopsis.split())
    return (
        spec.min_paragraph_words <= nw <= spec.max_paragraph_words
        and spec.min_synopsis_words <= ns <= spec.max_synopsis_words
    )


def translation_ok(d: Description | None, en: Description) -> bool:
    """A usable translation: same paragraph count, first paragraph and synopsis translated."""
    if d is None or not d.paragraphs or not d.synopsis or not d.paragraphs[0]:
        return False
    if len(d.paragraphs) != len(en.paragraphs) or d.has_list[0]:
        return False
    if d.paragraphs[0] == en.paragraphs[0]:
        return False
    return not (d.synopsis == en.synopsis and len(en.synopsis.split()) > 3)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def families(
    en: dict[str, Description], packages: dict[str, PackageInfo], md5s: Sequence[str]
) -> dict[str, int]:
    """md5 -> group id; units sharing a source package are in one group."""
    uf = _UnionFind()
    for m in md5s:
        uf.find("md5:" + m)
        for pkg in en[m].packages:
            src = packages[pkg].source if pkg in packages else pkg
            uf.union("md5:" + m, "src:" + src)
    roots: dict[str, int] = {}
    return {m: roots.setdefault(uf.find("md5:" + m), len(roots)) for m in md5s}


def unit_topics(d: Description, packages: dict[str, PackageInfo]) -> frozenset[str]:
    """The Debian section and debtags of the packages carrying a description."""
    out: set[str] = set()
    for pkg in d.packages:
        info = packages.get(pkg)
        if info is not None:
            out |= set(info.tags)
            if info.section:
                out.add("section::" + info.section.split("/")[-1])
    return frozenset(out)


_LATIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]*")


def _latin_set(text: str) -> set[str]:
    return {w.lower() for w in _LATIN.findall(text)}


def is_latin_script(texts: Sequence[str]) -> bool:
    """True when most letters of ``texts`` are ASCII Latin letters."""
    latin = other = 0
    for t in texts:
        for ch in t:
            if ch.isalpha():
                if ch.isascii() or "\u00c0" <= ch <= "\u024f":
                    latin += 1
                else:
                    other += 1
    return latin >= other


def _shares_latin(syn: list[list[str]], par: list[list[str]]) -> np.ndarray:
    """M[i, j]: S_i and P_j share a Latin-script word in some language (position k of the lists)."""
    n = len(syn)
    out = np.zeros((n, n), dtype=bool)
    for k in range(len(syn[0]) if syn else 0):
        a = [frozenset(_latin_set(s[k])) for s in syn]
        b = [frozenset(_latin_set(p[k])) for p in par]
        out |= _jaccard_matrix(a, b) > 0
    return out


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


# --------------------------------------------------------------------------------------------
# TF-IDF and matching


def tfidf(texts: Sequence[str], vocab: dict[str, int] | None = None, idf: np.ndarray | None = None):
    """L2-normalised TF-IDF rows (scipy CSR) over lower-cased word tokens; returns (X, vocab, idf)."""
    docs = [_WORD.findall(t.lower()) for t in texts]
    if vocab is None:
        vocab = {}
        for d in docs:
            for w in d:
                vocab.setdefault(w, len(vocab))
    rows, cols, vals = [], [], []
    for r, d in enumerate(docs):
        for w, c in Counter(d).items():
            j = vocab.get(w)
            if j is not None:
                rows.append(r)
                cols.append(j)
                vals.append(1.0 + np.log(c))
    X = sp.csr_matrix((vals, (rows, cols)), shape=(len(docs), len(vocab)), dtype=np.float64)
    if idf is None:
        df = np.bincount(X.indices, minlength=len(vocab))
        idf = np.log((1 + len(docs)) / (1 + df)) + 1.0
    X = X @ sp.diags(idf)
    norms = np.sqrt(X.multiply(X).sum(axis=1)).A.ravel()
    X = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ X
    return X.tocsr(), vocab, idf


def _jaccard_matrix(a: Sequence[frozenset[str]], b: Sequence[frozenset[str]]) -> np.ndarray:
    """J[i, j] = |a_i & b_j| / |a_i | b_j| (0 when both are empty)."""
    vocab: dict[str, int] = {}

    def indicator(sets: Sequence[frozenset[str]]) -> sp.csr_matrix:
        rows, cols = [], []
        for i, t in enumerate(sets):
            for x in t:
                rows.append(i)
                cols.append(vocab.setdefault(x, len(vocab)))
        return rows, cols

    ra, ca = indicator(a)
    rb, cb = indicator(b)
    shape = max(1, len(vocab))
    A = sp.csr_matrix((np.ones(len(ra)), (ra, ca)), shape=(len(a), shape))
    B = sp.csr_matrix((np.ones(len(rb)), (rb, cb)), shape=(len(b), shape))
    inter = (A @ B.T).toarray()
    union = np.asarray(A.sum(axis=1)).ravel()[:, None] + np.asarray(B.sum(axis=1)).ravel()[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_hard_negatives(
    synopses: Sequence[str],
    paragraphs: Sequence[str],
    groups: Sequence[int],
    spec: RealTaskSpec,
    topics: Sequence[frozenset[str]] | None = None,
    forbid: np.ndarray | None = None,
) -> list[int]:
    """sigma: unit i's negative paragraph is unit sigma[i]'s (a permutation without fixed points).

    Maximises sum_i hardness(i, sigma[i]) (``scipy.optimize.linear_sum_assignment``) with
    ``hardness(i, j) = tfidf(S_i) . tfidf(P_j) + topic_weight * jaccard(topics_i, topics_j)``
    (topics: the Debian section and debtags of the unit's packages), over j of another group and
    not a near-duplicate of i, nor ``forbid[i, j]``. Being a permutation, every paragraph is
    exactly one negative. Units that cannot be given an allowed partner are left out
    (sigma[i] = -1, and nobody's negative either).
    """
    from scipy.optimize import linear_sum_assignment  # ~0.2 s: only when matching; build imports this module

    n = len(synopses)
    X, _, _ = tfidf(list(synopses) + list(paragraphs))
    S, P = X[:n], X[n:]
    score = (S @ P.T).toarray()
    if topics is not None:
        score = score + spec.topic_weight * _jaccard_matrix(topics, topics)
    g = np.asarray(groups)
    bad = (g[:, None] == g[None, :]) | ((P @ P.T).toarray() > spec.max_paragraph_cosine)
    bad |= (S @ S.T).toarray() > spec.max_synopsis_cosine
    if forbid is not None:
        bad |= forbid
    # Units that only a forbidden partner could serve are dropped and the assignment re-solved
    # (rarely more than one round), so that sigma stays a permutation of the kept units.
    keep = np.arange(n)
    while True:
        cost = np.where(bad[np.ix_(keep, keep)], np.inf, -score[np.ix_(keep, keep)])
        finite = np.isfinite(cost)
        cost = np.where(finite, cost, 1e6)
        rows, cols = linear_sum_assignment(cost)
        ok = finite[rows, cols]
        if ok.all():
            sigma = np.full(n, -1, dtype=np.int64)
            sigma[keep[rows]] = keep[cols]
            return sigma.tolist()
        keep = keep[np.sort(rows[ok])]
        if len(keep) < 2:
            return [-1] * n


# --------------------------------------------------------------------------------------------
# building


@dataclass
class BuiltTask:
    folder: Path
    meta: dict


def _write_tsv(path: Path, rows: list[tuple[str, str, int]]) -> None:
    for s1, s2, _ in rows:
        if "\t" in s1 + s2 or "\n" in s1 + s2:
            raise ValueError(f"{path}: a sentence contains a tab or newline")
    atomic_write_text(path, "".join(f"{s1}\t{s2}\t{y}\n" for s1, s2, y in rows))


def _examples(sigma: list[int], rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(synopsis unit, paragraph unit, label): (i, i, 1) and (i, sigma[i], 0) for every kept
    unit i (sigma[i] >= 0), shuffled. sigma permutes the kept units, so every kept synopsis and
    every kept paragraph is exactly once in a positive and once in a negative."""
    ex = []
    for i, j in enumerate(sigma):
        if j >= 0:
            ex += [(i, i, 1), (i, j, 0)]
    order = rng.permutation(len(ex))
    return [ex[k] for k in order]


def _english_units(en: dict[str, Description], spec: RealTaskSpec) -> list[str]:
    """English-eligible units, de-duplicated by synopsis and by paragraph (first md5 in sorted order)."""
    seen_s, seen_p, md5s = set(), set(), []
    for m in sorted(en):
        d = en[m]
        if not english_ok(d, spec):
            continue
        ks, kp = _norm(d.synopsis), _norm(d.paragraphs[0])
        if ks in seen_s or kp in seen_p:
            continue
        seen_s.add(ks)
        seen_p.add(kp)
        md5s.append(m)
    return md5s


def _parallel_units(
    translations: dict[str, dict[str, Description]], md5s: list[str], spec: RealTaskSpec
) -> tuple[list[str], list[str], int]:
    """(units with a good translation in every language, name-free when the spec asks; the
    languages not in Latin script, whose synopsis and paragraph must share no Latin word then;
    the number of parallel units before that check)."""
    en = translations["en"]
    others = spec.languages[1:]
    parallel = [m for m in md5s if all(translation_ok(translations[lang].get(m), en[m]) for lang in others)]
    name_langs = [
        lang for lang in others if not is_latin_script([translations[lang][m].synopsis for m in parallel])
    ]
    n_parallel = len(parallel)
    if spec.name_free and name_langs:
        parallel = [
            m
            for m in parallel
            if not any(
                _latin_set(translations[lang][m].synopsis) & _latin_set(translations[lang][m].paragraphs[0])
                for lang in name_langs
            )
        ]
    return parallel, name_langs, n_parallel


def _split_units(
    md5s: list[str], parallel: list[str], group: dict[str, int], spec: RealTaskSpec, rng
) -> tuple[list[str], list[str], list[str]]:
    """(train, dev, test) units: whole groups each, test from the parallel units, in seeded order."""
    test_groups = {group[m] for m in parallel}
    test_md5 = parallel
    if spec.test_units is not None and len(test_md5) > spec.test_units:
        # whole groups, in a seeded order, until the budget is reached
        test_groups = _take_groups(sorted(test_groups), group, test_md5, spec.test_units, rng)
        test_md5 = [m for m in parallel if group[m] in test_groups]
    rest = [m for m in md5s if group[m] not in test_groups]
    rest_groups = sorted({group[m] for m in rest})
    dev_groups = _take_groups(rest_groups, group, rest, spec.dev_units, rng)
    dev_md5 = [m for m in rest if group[m] in dev_groups]
    train_pool = [m for m in rest if group[m] not in dev_groups]
    train_groups = _take_groups(
        sorted({group[m] for m in train_pool}), group, train_pool, spec.train_units, rng
    )
    train_md5 = [m for m in train_pool if group[m] in train_groups]
    return train_md5, dev_md5, test_md5


def _write_split(
    name: str,
    ms: list[str],
    langs: Sequence[str],
    translations: dict[str, dict[str, Description]],
    packages: dict[str, PackageInfo],
    group: dict[str, int],
    spec: RealTaskSpec,
    name_langs: list[str],
    rng,
    out: Path,
) -> tuple[dict, list[tuple[str, str, int]]]:
    """Match the hard negatives of one split, write its TSV file per language; returns its stats
    and its rows (md5 of the synopsis, md5 of the paragraph, label)."""
    en = translations["en"]
    # Hardness is measured on the split's texts in all its languages together, so that the
    # words left untranslated (names, X, GNOME, GTK) are shared by negatives as well.
    syn = [" ".join(translations[lang][m].synopsis for lang in langs) for m in ms]
    par = [" ".join(translations[lang][m].paragraphs[0] for lang in langs) for m in ms]
    topic = [unit_topics(en[m], packages) for m in ms]
    forbid = None
    if spec.name_free and name_langs and name in ("test",):
        forbid = _shares_latin(
            [[translations[lang][m].synopsis for lang in name_langs] for m in ms],
            [[translations[lang][m].paragraphs[0] for lang in name_langs] for m in ms],
        )
    sigma = match_hard_negatives(syn, par, [group[m] for m in ms], spec, topic, forbid)
    ex = _examples(sigma, rng)
    stats = {
        "units": len(ms),
        "matched_units": sum(1 for j in sigma if j >= 0),
        "examples": len(ex),
        "groups": len({group[m] for m in ms}),
    }
    for lang in langs:
        tr = translations[lang]
        rows = [(tr[ms[a]].synopsis, tr[ms[b]].paragraphs[0], y) for a, b, y in ex]
        _write_tsv(out / f"{name}-{lang}.tsv", rows)
    return stats, [(ms[a], ms[b], y) for a, b, y in ex]


def build_task(
    translations: dict[str, dict[str, Description]],
    packages: dict[str, PackageInfo],
    spec: RealTaskSpec,
    out: Path,
) -> BuiltTask:
    """Select, split, match and write the task into ``out`` (XTREME/PAWS-X TSV layout + meta.json)."""
    if spec.languages[0] != "en":
        raise ValueError("languages: English ('en') must come first (the training language)")
    missing = [lang for lang in spec.languages if lang not in translations]
    if missing:
        raise ValueError(f"languages: no Translation file read for {missing}")
    en = translations["en"]
    rng = np.random.default_rng(spec.seed)
    md5s = _english_units(en, spec)
    group = families(en, packages, md5s)
    parallel, name_langs, n_parallel = _parallel_units(translations, md5s, spec)
    train_md5, dev_md5, test_md5 = _split_units(md5s, parallel, group, spec, rng)

    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {
        "eligible_english_units": len(md5s),
        "parallel_units": n_parallel,
        "name_free_parallel_units": len(parallel),
        "name_check_languages": name_langs,
    }
    split_rows = {}
    for name, ms, langs in (
        ("train", train_md5, ["en"]),
        ("dev", dev_md5, ["en"]),
        ("test", test_md5, spec.languages),
    ):
        stats[name], split_rows[name] = _write_split(
            name, ms, langs, translations, packages, group, spec, name_langs, rng, out
        )
    meta = {
        "version": TASK_VERSION,
        "spec": asdict(spec),
        "languages": list(spec.languages),
        "stats": stats,
        "examples": split_rows,  # (md5 of the synopsis, md5 of the paragraph, label) per row
        "groups": {
            name: sorted({group[m] for m in ms})
            for name, ms in (("train", train_md5), ("dev", dev_md5), ("test", test_md5))
        },
    }
    atomic_write_json(out / "meta.json", meta, indent=None)
    return BuiltTask(out, meta)


def _take_groups(groups: list[int], group: dict[str, int], md5s: list[str], budget: int, rng) -> set[int]:
    """Whole groups, in a seeded random order, until their units reach ``budget``."""
    size = Counter(group[m] for m in md5s)
    taken: set[int] = set()
    total = 0
    for gi in rng.permutation(len(groups)):
        if total >= budget:
            break
        g = groups[gi]
        taken.add(g)
        total += size[g]
    return taken


def read_inputs(debian: Path, languages: Sequence[str]):
    """Parsed Translation files (lang -> md5 -> Description), Packages, and a digest of the inputs."""
    h = hashlib.sha256()
    translations = {}
    for lang in languages:
        raw = (debian / f"Translation-{lang}").read_bytes()
        h.update(lang.encode() + hashlib.sha256(raw).digest())
        translations[lang] = parse_translation(raw.decode("utf-8", errors="replace"), lang)
    raw = (debian / "Packages").read_bytes()
    h.update(hashlib.sha256(raw).digest())
    packages = parse_packages(raw.decode("utf-8", errors="replace"))
    return translations, packages, h.hexdigest()[:16]
