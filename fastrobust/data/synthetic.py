"""The synthetic cross-lingual benchmark: the embedded default that runs without network or GPU.

Construction (every random draw comes from ``numpy``/``torch`` generators seeded by
``cfg.seed``, so the same config gives the same files):

* **Concepts and words.** ``concepts`` concepts are split into ``topics`` equal groups.
  Every language has its own random word for every concept plus ``synonyms_per_concept``
  within-language synonyms (``synonyms.json``: word -> the other words of its group).
* **Task** (paraphrase identification, PAWS-X layout and labels): a sentence is
  ``min_words..max_words`` distinct concepts of one topic, each written with a uniformly
  drawn word of its group. A positive pair (label 1) re-expresses the same concepts in a
  shuffled order, every word replaced by a synonym (so no pair shares a token); a negative
  (label 0) does the same after replacing ``round(replace_fraction * n)`` concepts with
  other concepts of the same topic (default 1.0: no concept in common).
  Both sentences of a pair have the same number of words, positives and negatives alike, so
  length carries no signal. Training data is in the anchor language (the first of
  ``languages``); dev and test sets are parallel: example i has the same concepts, order and
  label in every language (only the word choices differ), so G-XLT pairs are joins.
* **"Pretrained" encoder.** Concept vectors c ~ N(0, I_H). The anchor language's word
  embedding is c (its synonyms: c + synonym_spread * N(0, I_H)); every other language's word
  is the anchor word's embedding + misalignment * N(0, I_H), the offsets drawn once per
  word and only scaled by the knob (misalignment 0: every language's word has exactly the
  anchor word's row). With ``misalignment_kind: rotation`` the shift is shared by a whole
  language instead: its words are the anchor words' vectors turned by one rotation
  R_l = exp(misalignment * A_l) (A_l a random skew-symmetric matrix with entries of variance 1/H),
  so every similarity within a language is kept and only cross-language pairs are misaligned,
  as between the languages of a real multilingual encoder.
  A tiny ``BertForMaskedLM`` then gets ``pretrain_steps`` of multilingual masked-LM training
  on same-topic sentence pairs with the word-embedding table (and the output layer, a copy
  scaled to rows of norm ~1) frozen, so fine-tuning starts from a contextual encoder whose
  cross-lingual alignment is exactly the knob.

The result is cached in ``<cache_dir>/<hash of config + SYNTHETIC_VERSION>/``, built in a
temporary sibling folder and moved in place with ``os.replace``, so an interrupted build is
never picked up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastrobust.config.schema import SyntheticConfig
from fastrobust.errors import ConfigError, DataError
from fastrobust.fileio import atomic_write_json

__all__ = ["SYNTHETIC_VERSION", "SyntheticArtifacts", "cache_key", "default_cache_dir", "prepare_synthetic"]

#: Bumped whenever the construction changes, so stale caches are never reused.
SYNTHETIC_VERSION = "4"

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_MANIFEST = "manifest.json"
# One layout for the cache's JSON files (synonyms.json, lexicon.json, the manifest).
_JSON_LAYOUT = {"indent": 1, "sort_keys": True, "ensure_ascii": False}

# Independent random streams (numpy SeedSequence entropy [seed, stream]), so that e.g. changing
# the misalignment changes neither the text nor the concept vectors, only the offsets' scale.
_STREAM_LEXICON, _STREAM_TRAIN, _STREAM_DEV, _STREAM_TEST, _STREAM_EMBED, _STREAM_PRETRAIN = range(6)
_STREAM_ROTATION = 6

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class SyntheticArtifacts:
    """A built benchmark.

    ``data_dir``: PAWS-X local layout (``train-<anchor>.tsv``, ``dev-<lang>.tsv``,
    ``test-<lang>.tsv``; rows ``sentence1<TAB>sentence2<TAB>label``, no header) plus
    ``synonyms.json`` and ``lexicon.json`` (lang -> per concept, its [word, synonyms...]).
    ``model_dir``: HF folder (config, safetensors, tokenizer) for ``AutoTokenizer`` and
    ``AutoModelForSequenceClassification``.
    """

    data_dir: Path
    model_dir: Path


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fastrobust/synthetic`` (``~/.cache/...`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastrobust" / "synthetic"


def cache_key(cfg: SyntheticConfig) -> str:
    """Hex digest (16 chars) of every field of ``cfg`` except ``cache_dir``, + SYNTHETIC_VERSION."""
    payload = {"version": SYNTHETIC_VERSION, "config": cfg.model_dump(mode="json", exclude={"cache_dir"})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def prepare_synthetic(cfg: SyntheticConfig) -> SyntheticArtifacts:
    """Build (or reuse from the cache) the benchmark described by ``cfg``.

    Returns the data folder and the model folder (see :class:`SyntheticArtifacts`). A cached
    folder is used only if its ``manifest.json`` (written last) names the same key; a folder
    without it (a build interrupted by hand copying, a crash of an older version) is moved
    aside and rebuilt. Concurrent builders each build in their own temporary folder; the first
    ``os.replace`` wins and the others discard their copy.
    """
    if not isinstance(cfg, SyntheticConfig):
        raise ConfigError(f"task.synthetic: expected a SyntheticConfig, got {type(cfg).__name__}")
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    key = cache_key(cfg)
    final = root / key
    if _is_complete(final, key):
        return _artifacts(final)
    root.mkdir(parents=True, exist_ok=True)
    if final.exists():
        # Incomplete or foreign content under our key: never use it, keep it for inspection.
        aside = Path(tempfile.mkdtemp(dir=root, prefix=f".broken-{key}-"))
        os.replace(final, aside / "content")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{key}-"))
    try:
        _build(cfg, tmp)
        manifest = {"key": key, "version": SYNTHETIC_VERSION, "config": cfg.model_dump()}
        atomic_write_json(tmp / _MANIFEST, manifest, **_JSON_LAYOUT)
        try:
            os.replace(tmp, final)
        except OSError:
            # Someone else finished first (target exists and is not empty): use theirs.
            if not _is_complete(final, key):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _artifacts(final)


def _artifacts(folder: Path) -> SyntheticArtifacts:
    return SyntheticArtifacts(data_dir=folder / "data", model_dir=folder / "model")


def _is_complete(folder: Path, key: str) -> bool:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("key") == key and (folder / "data").is_dir() and (folder / "model").is_dir()


# --------------------------------------------------------------------------------------------
# Text


def _rng(cfg: SyntheticConfig, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stream])


def _make_lexicon(cfg: SyntheticConfig) -> list[list[list[str]]]:
    """lexicon[l][c] = [word, synonym_1, ..., synonym_S] of concept c in language l.

    Words are 2-4 random consonant-vowel syllables, unique across all languages (so the
    word-level vocabulary shares no token between languages, as with different scripts).
    """
    rng = _rng(cfg, _STREAM_LEXICON)
    seen: set[str] = set()
    forms = 1 + cfg.synonyms_per_concept
    lexicon = []
    for _ in cfg.languages:
        groups = []
        for _ in range(cfg.concepts):
            group = []
            while len(group) < forms:
                n_syl = int(rng.integers(2, 5))
                word = "".join(
                    _CONSONANTS[int(rng.integers(len(_CONSONANTS)))]
                    + _VOWELS[int(rng.integers(len(_VOWELS)))]
                    for _ in range(n_syl)
                )
                if word not in seen:
                    seen.add(word)
                    group.append(word)
            groups.append(group)
        lexicon.append(groups)
    return lexicon


def _topic_members(cfg: SyntheticConfig) -> list[np.ndarray]:
    # Concept ids are already random labels, so topic t is simply the t-th contiguous block.
    per = cfg.concepts // cfg.topics
    return [np.arange(t * per, (t + 1) * per) for t in range(cfg.topics)]


def _concept_pairs(cfg: SyntheticConfig, n: int, rng: np.random.Generator) -> list[tuple[list, list, int]]:
    """``n`` (concepts of sentence 1, concepts of sentence 2, label) with exactly balanced labels."""
    members = _topic_members(cfg)
    labels = rng.permutation(np.arange(n) % 2)
    pairs = []
    for label in labels:
        topic = members[int(rng.integers(len(members)))]
        length = int(rng.integers(cfg.min_words, cfg.max_words + 1))
        first = rng.choice(topic, size=length, replace=False)
        second = first.copy()
        if label == 0:
            k = min(length, max(1, round(cfg.replace_fraction * length)))
            where = rng.choice(length, size=k, replace=False)
            others = np.setdiff1d(topic, first)
            second[where] = rng.choice(others, size=k, replace=False)
        second = rng.permutation(second)
        pairs.append((first.tolist(), second.tolist(), int(label)))
    return pairs


def _realize_pair(
    first: list[int], second: list[int], groups: list[list[str]], rng: np.random.Generator
) -> tuple[str, str]:
    """Write a concept pair in one language.

    Sentence 1: each concept's word drawn uniformly from its group. Sentence 2: a concept that
    sentence 1 also has is written with a uniform draw from the *other* words of its group, any
    other concept with a uniform draw from the whole group. So the two sentences of a pair never
    share a token (no lexical-overlap cue, in the same language as across languages), while
    each sentence's words stay uniform over their groups (no unigram cue).
    """
    words1 = {c: groups[c][int(rng.integers(len(groups[c])))] for c in first}
    out2 = []
    for c in second:
        options = [w for w in groups[c] if w != words1.get(c)]
        out2.append(options[int(rng.integers(len(options)))])
    return " ".join(words1[c] for c in first), " ".join(out2)


def _write_tsv(path: Path, rows: list[tuple[str, str, int]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for s1, s2, label in rows:
            f.write(f"{s1}\t{s2}\t{label}\n")


def _write_data(cfg: SyntheticConfig, lexicon: list, data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    anchor = cfg.languages[0]
    rng = _rng(cfg, _STREAM_TRAIN)
    train = _concept_pairs(cfg, cfg.train_size, rng)
    _write_tsv(
        data_dir / f"train-{anchor}.tsv",
        [(*_realize_pair(a, b, lexicon[0], rng), y) for a, b, y in train],
    )
    for split, size, stream in (("dev", cfg.dev_size, _STREAM_DEV), ("test", cfg.test_size, _STREAM_TEST)):
        rng = _rng(cfg, stream)
        pairs = _concept_pairs(cfg, size, rng)  # shared by every language: parallel sets
        for li, lang in enumerate(cfg.languages):
            lang_rng = np.random.default_rng([cfg.seed, stream, 1000 + li])
            rows = [(*_realize_pair(a, b, lexicon[li], lang_rng), y) for a, b, y in pairs]
            _write_tsv(data_dir / f"{split}-{lang}.tsv", rows)
    synonyms = {}
    for groups in lexicon:
        for group in groups:
            for w in group:
                synonyms[w] = [v for v in group if v != w]
    atomic_write_json(data_dir / "synonyms.json", synonyms, **_JSON_LAYOUT)
    lexicon_by_lang = {lang: lexicon[li] for li, lang in enumerate(cfg.languages)}
    atomic_write_json(data_dir / "lexicon.json", lexicon_by_lang, **_JSON_LAYOUT)


# --------------------------------------------------------------------------------------------
# Tokenizer and model


def _vocabulary(lexicon: list) -> dict[str, int]:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for groups in lexicon:
        for group in groups:
            for w in group:
                vocab[w] = len(vocab)
    return vocab


def word_tokenizer(vocab: dict[str, int], max_length: int | None = None, *, style: str = "bert"):
    """A word-level ``tokenizers`` tokenizer over ``vocab`` (whitespace split), wrapped as
    ``PreTrainedTokenizerFast``: the synthetic benchmark's, and the tiny models' of the tests and
    benchmarks. ``style`` "bert": [PAD]/[UNK]/[CLS]/[SEP]/[MASK], ``[CLS] a [SEP] b [SEP]`` with
    segment ids; "xlmr": <s>/<pad>/</s>/<unk>/<mask>, ``<s> a </s></s> b </s>`` without them.
    ``vocab`` holds the style's special tokens; ``max_length``: the tokenizer's model_max_length."""
    # tokenizers and transformers (~1.3 s) load only when the benchmark is built, not when it is read
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style == "bert":
        cls, sep, pad, unk, mask = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"
        single, pair = f"{cls} $A {sep}", f"{cls} $A {sep} $B:1 {sep}:1"
        # BERT segment ids: the encoder is pretrained with them, so they must reach the model.
        names = ["input_ids", "token_type_ids", "attention_mask"]
        extra: dict[str, str] = {}
    elif style == "xlmr":
        cls, sep, pad, unk, mask = "<s>", "</s>", "<pad>", "<unk>", "<mask>"
        single, pair = f"{cls} $A {sep}", f"{cls} $A {sep} {sep} $B {sep}"
        names = ["input_ids", "attention_mask"]
        extra = {"bos_token": cls, "eos_token": sep}
    else:
        raise ValueError(f"style: 'bert' or 'xlmr', got {style!r}")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])]
    )
    limit = {} if max_length is None else {"model_max_length": max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **extra,
        unk_token=unk,
        pad_token=pad,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        **limit,
        padding_side="right",
        model_input_names=names,
    )


def _embedding_table(cfg: SyntheticConfig, lexicon: list, vocab: dict[str, int]) -> torch.Tensor:
    """The frozen "pretrained" table E (V, H), float32.

    E[anchor word of concept c] = z_c, E[anchor synonym s of c] = z_c + synonym_spread * u_{c,s},
    E[word (c, s) of language l] = E[anchor word (c, s)] + misalignment * n_{l,c,s}   (kind "word"),
    E[word (c, s) of language l] = R_l E[anchor word (c, s)]                          (kind "rotation"),
    with z, u, n i.i.d. N(0, I_H) (rows of norm ~sqrt(H)), R_l = matrix_exp(misalignment * A_l),
    A_l = (G_l - G_l^T) / sqrt(2H), G_l i.i.d. N(0, 1) (H x H); special tokens N(0, I_H) except
    [PAD] = 0. For a small angle the rotation moves a row by ~misalignment x its norm, like the
    word offsets; misalignment >~ 3 is a random rotation.
    """
    rng = _rng(cfg, _STREAM_EMBED)
    h, forms = cfg.hidden_size, 1 + cfg.synonyms_per_concept
    # Draw every array at its full size whatever the knobs, so the draws never shift.
    concept = rng.standard_normal((cfg.concepts, h))
    synonym = rng.standard_normal((cfg.concepts, forms, h))
    synonym[:, 0] = 0.0  # the group's first word sits exactly on the concept
    offsets = rng.standard_normal((len(cfg.languages), cfg.concepts, forms, h))
    special = rng.standard_normal((len(SPECIAL_TOKENS), h))
    # Drawn after everything else (own stream), so the word-offset draws above never shift.
    rot_rng = _rng(cfg, _STREAM_ROTATION)
    gens = rot_rng.standard_normal((len(cfg.languages), h, h))
    anchor = concept[:, None, :] + cfg.synonym_spread * synonym  # (C, forms, H)
    table = np.zeros((len(vocab), h))
    table[: len(SPECIAL_TOKENS)] = special
    table[vocab["[PAD]"]] = 0.0
    for li, groups in enumerate(lexicon):
        if li == 0 or cfg.misalignment == 0:
            rows = anchor
        elif cfg.misalignment_kind == "rotation":
            skew = torch.from_numpy((gens[li] - gens[li].T) / math.sqrt(2 * h))
            rot = torch.linalg.matrix_exp(cfg.misalignment * skew).numpy()  # orthogonal (H, H)
            rows = anchor @ rot.T
        else:
            rows = anchor + cfg.misalignment * offsets[li]
        for c, group in enumerate(groups):
            for s, w in enumerate(group):
                table[vocab[w]] = rows[c, s]
    return torch.tensor(table, dtype=torch.float32)


def _pretrain_batches(cfg: SyntheticConfig, lexicon: list, vocab: dict[str, int], steps: int):
    """Yield (input_ids, token_type_ids, attention_mask, labels) masked-LM batches.

    Each example: [CLS] s1 [SEP] s2 [SEP], two sentences of one random language and one topic
    sharing a uniform number (0..min length) of concepts, written with independently drawn
    words: the context predicts a masked word's topic, and a shared concept in the other
    sentence (possibly as a synonym) its identity, so the encoder learns to match words
    across the two segments, the skill a pair task builds on.
    15% of the word positions are predicted: 80% [MASK], 10% a random word, 10% unchanged.
    """
    rng = _rng(cfg, _STREAM_PRETRAIN)
    members = _topic_members(cfg)
    n_special = len(SPECIAL_TOKENS)
    ids_of = [[[vocab[w] for w in group] for group in groups] for groups in lexicon]
    for _ in range(steps):
        seqs, types = [], []
        for _ in range(cfg.pretrain_batch_size):
            li = int(rng.integers(len(lexicon)))
            topic = members[int(rng.integers(len(members)))]
            n1, n2 = (int(x) for x in rng.integers(cfg.min_words, cfg.max_words + 1, size=2))
            first = rng.choice(topic, size=n1, replace=False)
            shared = int(rng.integers(0, min(n1, n2) + 1))
            fresh = rng.choice(np.setdiff1d(topic, first), size=n2 - shared, replace=False)
            second = rng.permutation(np.concatenate([rng.choice(first, size=shared, replace=False), fresh]))
            parts = [
                [ids_of[li][c][int(rng.integers(len(ids_of[li][c])))] for c in cs] for cs in (first, second)
            ]
            seq = [vocab["[CLS]"], *parts[0], vocab["[SEP]"], *parts[1], vocab["[SEP]"]]
            seqs.append(seq)
            types.append([0] * (len(parts[0]) + 2) + [1] * (len(parts[1]) + 1))
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), vocab["[PAD]"])
        tt = np.zeros_like(ids)
        for i, (s, t) in enumerate(zip(seqs, types)):
            ids[i, : len(s)] = s
            tt[i, : len(t)] = t
        attention = (ids != vocab["[PAD]"]).astype(np.int64)
        is_word = ids >= n_special
        chosen = is_word & (rng.random(ids.shape) < 0.15)
        labels = np.where(chosen, ids, -100)
        action = rng.random(ids.shape)
        inputs = ids.copy()
        inputs[chosen & (action < 0.8)] = vocab["[MASK]"]
        swap = chosen & (action >= 0.8) & (action < 0.9)
        inputs[swap] = rng.integers(n_special, len(vocab), size=int(swap.sum()))
        yield (torch.from_numpy(x).long() for x in (inputs, tt, attention, labels))


def _build_model(
    cfg: SyntheticConfig, table: torch.Tensor, vocab: dict[str, int], lexicon: list, max_len: int
):
    from transformers import BertConfig, BertForMaskedLM  # only when the benchmark is built

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=max_len,
        type_vocab_size=2,
        pad_token_id=vocab["[PAD]"],
        tie_word_embeddings=False,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
    )
    torch.manual_seed(cfg.seed)
    model = BertForMaskedLM(config)
    emb = model.get_input_embeddings()
    decoder = model.get_output_embeddings()
    with torch.no_grad():
        emb.weight.copy_(cfg.embedding_scale * table)
        # The output layer is the same table scaled to rows of norm ~1, so that the logits
        # h . E_w start at a trainable scale instead of saturating. The input rows have
        # per-coordinate RMS embedding_scale: Adam moves a row by ~lr per step whatever its
        # size, and only the anchor language's rows get gradients in fine-tuning, so the scale
        # sets how far English drifts away from the other languages relative to the rows' norm.
        decoder.weight.copy_(table / math.sqrt(cfg.hidden_size))
    # Frozen: the cross-lingual geometry must stay exactly what the knob says (biases train).
    emb.weight.requires_grad_(False)
    decoder.weight.requires_grad_(False)
    if cfg.pretrain_steps > 0:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.pretrain_learning_rate, weight_decay=0.01)
        warm = max(1, cfg.pretrain_steps // 10)

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (cfg.pretrain_steps - step) / max(1, cfg.pretrain_steps - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        model.train()
        for inputs, tt, attention, labels in _pretrain_batches(cfg, lexicon, vocab, cfg.pretrain_steps):
            # BertForMaskedLM's loss, with the vocabulary projection computed at the ~15% masked
            # positions only (the others have label -100 and add nothing): the same mean
            # cross-entropy, several times cheaper than projecting every position.
            where = labels != -100
            if not where.any():  # nothing drawn for prediction in this (tiny) batch
                continue
            hidden = model.bert(input_ids=inputs, token_type_ids=tt, attention_mask=attention)[0]
            logits = model.cls(hidden[where])  # (masked tokens, V)
            loss = torch.nn.functional.cross_entropy(logits, labels[where])
            if not torch.isfinite(loss):
                raise DataError(f"task.synthetic: masked-LM pretraining diverged (loss {loss.item()})")
            loss.backward()
            if os.environ.get("FASTROBUST_SYNTHETIC_DEBUG"):
                print(f"pretrain loss {loss.item():.3f}", flush=True)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    emb.weight.requires_grad_(True)
    decoder.weight.requires_grad_(True)
    model.eval()
    return model


def _build(cfg: SyntheticConfig, out: Path) -> None:
    lexicon = _make_lexicon(cfg)
    _write_data(cfg, lexicon, out / "data")
    vocab = _vocabulary(lexicon)
    # [CLS] s1 [SEP] s2 [SEP], rounded up to a multiple of 8.
    max_len = int(math.ceil((2 * cfg.max_words + 3) / 8) * 8)
    table = _embedding_table(cfg, lexicon, vocab)
    model = _build_model(cfg, table, vocab, lexicon, max_len)
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    word_tokenizer(vocab, max_len).save_pretrained(model_dir)
