"""The synthetic cross-lingual benchmark: determinism, cache, file formats, shortcuts, HF loading."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastrobust.config import SyntheticConfig
from fastrobust.data import synthetic
from fastrobust.data.synthetic import cache_key, prepare_synthetic
from fastrobust.errors import ConfigError

# Small enough to build in about a second: 2 topics of 12 concepts, 5 masked-LM steps.
SMALL = dict(
    concepts=24,
    topics=2,
    min_words=3,
    max_words=6,
    train_size=64,
    dev_size=16,
    test_size=24,
    hidden_size=16,
    layers=1,
    heads=2,
    pretrain_steps=5,
    pretrain_batch_size=8,
)


def small(tmp_path: Path, **kw) -> SyntheticConfig:
    return SyntheticConfig(**{**SMALL, "cache_dir": str(tmp_path), **kw})


def read_tsv(path: Path) -> list[tuple[str, str, int]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s1, s2, label = line.split("\t")
        rows.append((s1, s2, int(label)))
    return rows


def data_files(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    cfg = small(tmp_path_factory.mktemp("syn"))
    return cfg, prepare_synthetic(cfg)


def test_layout(built) -> None:
    cfg, art = built
    names = {p.name for p in art.data_dir.iterdir()}
    expected = {"train-en.tsv", "synonyms.json", "lexicon.json"}
    expected |= {f"{split}-{lang}.tsv" for split in ("dev", "test") for lang in cfg.languages}
    assert names == expected
    rows = read_tsv(art.data_dir / "train-en.tsv")
    assert len(rows) == cfg.train_size
    assert Counter(y for _, _, y in rows) == {0: cfg.train_size // 2, 1: cfg.train_size // 2}
    assert (art.model_dir / "model.safetensors").is_file()
    assert (art.model_dir / "tokenizer.json").is_file()


def test_same_config_same_files_other_seed_other_files(tmp_path: Path, built) -> None:
    cfg, art = built
    again = prepare_synthetic(small(tmp_path / "a"))  # same fields, fresh cache: rebuilt
    assert again.data_dir != art.data_dir
    assert data_files(again.data_dir) == data_files(art.data_dir)
    w1 = load_file(art.model_dir / "model.safetensors")
    w2 = load_file(again.model_dir / "model.safetensors")
    assert w1.keys() == w2.keys()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)

    other = prepare_synthetic(small(tmp_path / "b", seed=1))
    assert (other.data_dir / "train-en.tsv").read_bytes() != (art.data_dir / "train-en.tsv").read_bytes()
    w3 = load_file(other.model_dir / "model.safetensors")
    assert not torch.equal(
        w1["bert.embeddings.word_embeddings.weight"], w3["bert.embeddings.word_embeddings.weight"]
    )


def test_cache_is_reused(built, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, art = built

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although the cache holds this config")

    monkeypatch.setattr(synthetic, "_build", no_build)
    assert prepare_synthetic(cfg) == art
    assert art.data_dir.parent.name == cache_key(cfg)
    # cache_dir is not part of the key; every other field is.
    assert cache_key(cfg) == cache_key(cfg.model_copy(update={"cache_dir": "/elsewhere"}))
    assert cache_key(cfg) != cache_key(cfg.model_copy(update={"misalignment": 0.5}))


def test_interrupted_build_leaves_nothing_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small(tmp_path)
    real_build = synthetic._build

    def crash_midway(c, out):
        real_build(c, out)  # every file written ...
        raise KeyboardInterrupt  # ... but killed before the move into place

    monkeypatch.setattr(synthetic, "_build", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(cfg)
    assert not (tmp_path / cache_key(cfg)).exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is removed too


def test_half_built_cache_dir_is_never_used(tmp_path: Path) -> None:
    cfg = small(tmp_path)
    final = tmp_path / cache_key(cfg)
    (final / "data").mkdir(parents=True)
    (final / "model").mkdir()
    (final / "data" / "train-en.tsv").write_text("partial\n")  # no manifest: not complete
    art = prepare_synthetic(cfg)
    assert art.data_dir == final / "data"
    assert len(read_tsv(art.data_dir / "train-en.tsv")) == cfg.train_size
    assert json.loads((final / "manifest.json").read_text())["key"] == cache_key(cfg)
    # A stray temporary folder of a killed builder is ignored as well.
    (tmp_path / f".tmp-{cache_key(cfg)}-dead").mkdir()
    assert prepare_synthetic(cfg) == art


def test_test_sets_are_parallel(built) -> None:
    cfg, art = built
    lexicon = json.loads((art.data_dir / "lexicon.json").read_text())
    concept_of = {
        lang: {w: c for c, group in enumerate(groups) for w in group} for lang, groups in lexicon.items()
    }
    for split in ("dev", "test"):
        per_lang = {lang: read_tsv(art.data_dir / f"{split}-{lang}.tsv") for lang in cfg.languages}
        anchor = per_lang["en"]
        for lang, rows in per_lang.items():
            assert len(rows) == len(anchor), (split, lang)
            for (a1, a2, ay), (s1, s2, y) in zip(anchor, rows):
                assert y == ay
                # the same concepts in the same order, written with this language's words
                assert [concept_of[lang][w] for w in s1.split()] == [concept_of["en"][w] for w in a1.split()]
                assert [concept_of[lang][w] for w in s2.split()] == [concept_of["en"][w] for w in a2.split()]
        # the languages do differ in their words
        assert per_lang["en"][0][0] != per_lang["xa"][0][0]


def test_pairs_follow_the_construction(built) -> None:
    cfg, art = built
    lexicon = json.loads((art.data_dir / "lexicon.json").read_text())
    concept_of = {w: c for c, group in enumerate(lexicon["en"]) for w in group}
    per_topic = cfg.concepts // cfg.topics
    for s1, s2, y in read_tsv(art.data_dir / "train-en.tsv"):
        c1 = [concept_of[w] for w in s1.split()]
        c2 = [concept_of[w] for w in s2.split()]
        assert cfg.min_words <= len(c1) == len(c2) <= cfg.max_words
        assert len({c // per_topic for c in c1 + c2}) == 1  # one topic per pair
        assert not set(s1.split()) & set(s2.split())  # no lexical-overlap cue, whatever the label
        if y == 1:
            assert sorted(c1) == sorted(c2)
        else:  # replace_fraction 1.0: no concept in common
            assert not set(c1) & set(c2)


def test_synonyms_json(built) -> None:
    cfg, art = built
    synonyms = json.loads((art.data_dir / "synonyms.json").read_text())
    lexicon = json.loads((art.data_dir / "lexicon.json").read_text())
    group_of = {w: (lang, c) for lang, groups in lexicon.items() for c, g in enumerate(groups) for w in g}
    assert set(synonyms) == set(group_of)
    for word, syns in synonyms.items():
        assert isinstance(syns, list) and len(syns) == cfg.synonyms_per_concept
        assert word not in syns
        for s in syns:
            assert group_of[s] == group_of[word]  # same language, same concept
            assert word in synonyms[s]  # symmetric
    # every word of every file has an entry (RS-DA can substitute anything)
    for path in art.data_dir.glob("*.tsv"):
        for s1, s2, _ in read_tsv(path):
            assert all(w in synonyms for w in (s1 + " " + s2).split())


def test_no_length_shortcut(tmp_path: Path) -> None:
    # The text alone, at the default sizes (fast: no model is built).
    cfg = SyntheticConfig()
    synthetic._write_data(cfg, synthetic._make_lexicon(cfg), tmp_path / "data")
    rows = read_tsv(tmp_path / "data" / "train-en.tsv")
    assert all(len(s1.split()) == len(s2.split()) for s1, s2, _ in rows)
    lengths = {y: np.array([len(s1.split()) for s1, _, yy in rows if yy == y]) for y in (0, 1)}
    assert abs(lengths[0].mean() - lengths[1].mean()) < 0.15
    # the best length-threshold rule (either direction) is at chance
    n = len(rows)
    best = max(
        max(
            ((lengths[1] >= t).sum() + (lengths[0] < t).sum()) / n,
            ((lengths[1] < t).sum() + (lengths[0] >= t).sum()) / n,
        )
        for t in range(cfg.min_words, cfg.max_words + 2)
    )
    assert best < 0.54
    # characters do not help either: word lengths are drawn independently of the label
    chars = {y: np.mean([len(s1) + len(s2) for s1, s2, yy in rows if yy == y]) for y in (0, 1)}
    assert abs(chars[0] - chars[1]) < 1.0


def test_tokenizer_and_model_load_with_auto_classes(built) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg, art = built
    tok = AutoTokenizer.from_pretrained(art.model_dir)
    s1, s2, _ = read_tsv(art.data_dir / "test-xa.tsv")[0]
    enc = tok(s1, s2)
    n1, n2 = len(s1.split()), len(s2.split())
    assert len(enc["input_ids"]) == n1 + n2 + 3
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][n1 + 1] == tok.sep_token_id
    assert enc["token_type_ids"] == [0] * (n1 + 2) + [1] * (n2 + 1)
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert token in tok.get_vocab()
    for path in art.data_dir.glob("*.tsv"):  # every word is in the vocabulary
        for a, b, _ in read_tsv(path):
            assert tok.unk_token_id not in tok(a, b)["input_ids"]
    model = AutoModelForSequenceClassification.from_pretrained(art.model_dir, num_labels=2)
    batch = tok([s1, s2], [s2, s1], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("misalignment", [0.0, 0.7])
def test_embedding_table_misalignment(tmp_path: Path, misalignment: float) -> None:
    cfg = small(tmp_path, misalignment=misalignment, pretrain_steps=0)
    art = prepare_synthetic(cfg)
    table = load_file(art.model_dir / "model.safetensors")["bert.embeddings.word_embeddings.weight"]
    vocab = json.loads((art.model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    lexicon = json.loads((art.data_dir / "lexicon.json").read_text())
    en = torch.stack([table[vocab[w]] for g in lexicon["en"] for w in g])
    for lang in cfg.languages[1:]:
        other = torch.stack([table[vocab[w]] for g in lexicon[lang] for w in g])
        if misalignment == 0:
            assert torch.equal(other, en)
        else:  # offset RMS / concept RMS == misalignment (up to sampling error)
            concept_rms = torch.stack([table[vocab[g[0]]] for g in lexicon["en"]]).pow(2).mean().sqrt()
            ratio = ((other - en).pow(2).mean().sqrt() / concept_rms).item()
            assert ratio == pytest.approx(misalignment, rel=0.15)
    # the text does not depend on the knob
    base = prepare_synthetic(small(tmp_path, misalignment=0.3, pretrain_steps=0))
    assert data_files(base.data_dir) == data_files(art.data_dir)


def test_rotation_misalignment_keeps_similarities_within_a_language(tmp_path: Path) -> None:
    """misalignment_kind rotation: each language is the anchor table turned by one rotation; dot
    products within a language are those of English, rows move by ~misalignment x their norm, and
    the word-kind table (the default) is unchanged by the option's existence."""
    word = prepare_synthetic(small(tmp_path, misalignment=0.3, pretrain_steps=0))
    cfg = small(tmp_path, misalignment=0.3, misalignment_kind="rotation", pretrain_steps=0)
    art = prepare_synthetic(cfg)
    table = load_file(art.model_dir / "model.safetensors")["bert.embeddings.word_embeddings.weight"].double()
    vocab = json.loads((art.model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    lexicon = json.loads((art.data_dir / "lexicon.json").read_text())
    en = torch.stack([table[vocab[w]] for g in lexicon["en"] for w in g])
    rotations = []
    for lang in cfg.languages[1:]:
        other = torch.stack([table[vocab[w]] for g in lexicon[lang] for w in g])
        torch.testing.assert_close(other @ other.T, en @ en.T, rtol=0, atol=1e-3)
        ratio = ((other - en).pow(2).mean() / en.pow(2).mean()).sqrt().item()
        assert ratio == pytest.approx(0.3, rel=0.15)
        rotations.append(torch.linalg.lstsq(en, other).solution)
    assert not torch.allclose(rotations[0], rotations[1], atol=1e-2)  # one rotation per language
    assert data_files(word.data_dir) == data_files(art.data_dir)  # the text does not change
    word_table = load_file(word.model_dir / "model.safetensors")["bert.embeddings.word_embeddings.weight"]
    assert not torch.equal(word_table, table.float())


def test_pretraining_keeps_the_table_and_learns(tmp_path: Path) -> None:
    cfg0 = small(tmp_path, pretrain_steps=0)
    cfg1 = small(tmp_path, pretrain_steps=5)
    w0 = load_file(prepare_synthetic(cfg0).model_dir / "model.safetensors")
    w1 = load_file(prepare_synthetic(cfg1).model_dir / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(w0[key], w1[key])  # frozen during masked-LM pretraining
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(w0[layer], w1[layer])  # the encoder did train


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="SyntheticConfig"):
        prepare_synthetic({"languages": ["en"]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="languages"):
        SyntheticConfig(languages=["en", "en"])
    with pytest.raises(ValueError, match="max_words"):
        SyntheticConfig(min_words=8, max_words=5)
    with pytest.raises(ValueError, match="topics"):
        SyntheticConfig(concepts=40, topics=4)
    with pytest.raises(ValueError, match="heads"):
        SyntheticConfig(hidden_size=30, heads=4)
