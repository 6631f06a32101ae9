"""RS-DA: synonym substitution rule, statistics, determinism and synonym-table errors."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import numpy as np
import pytest
from scipy.stats import binomtest, chisquare

from fastrobust.config import SynonymConfig
from fastrobust.errors import ConfigError, DataError
from fastrobust.methods import build_method
from fastrobust.methods.synonyms import (
    SynonymTable,
    augment_dataset,
    load_synonym_table,
    substitute_sentence,
)

TABLE = {"big": ["large", "huge", "great"], "car": ["auto"], "Paris": ["Lyon", "Rome"]}


def _dataset(n, s1="the big car", s2="a big car"):
    return datasets.Dataset.from_dict(
        {"sentence1": [s1] * n, "sentence2": [s2] * n, "label": [i % 2 for i in range(n)]}
    )


def test_replacement_frequencies_are_uniform_over_word_and_synonyms():
    """Each of the k+1 options has probability 1/(k+1): chi-square goodness of fit over 3000
    independent draws (the draws are fixed by the seed, so this is not flaky; a wrong rule —
    e.g. never keeping the word, or favouring the first synonym — gives p ~ 0)."""
    n = 3000
    out = augment_dataset(_dataset(n), SynonymTable(TABLE), seed=3, epoch=0)
    words1 = [s.split() for s in out["sentence1"]]
    big = Counter(w[1] for w in words1)
    car = Counter(w[2] for w in words1)
    assert set(big) == {"big", "large", "huge", "great"} and set(car) == {"car", "auto"}
    assert chisquare([big[w] for w in ("big", "large", "huge", "great")]).pvalue > 1e-3
    assert chisquare([car["car"], car["auto"]]).pvalue > 1e-3
    assert all(w[0] == "the" for w in words1)  # words without synonyms never change
    # sentence1 and sentence2 draw independently: P(same choice for 'big') = 1/4
    same = sum(a.split()[1] == b.split()[1] for a, b in zip(out["sentence1"], out["sentence2"]))
    assert binomtest(same, n, 0.25).pvalue > 1e-3
    # labels and row order are untouched
    assert out["label"] == [i % 2 for i in range(n)]


def test_case_punctuation_and_whitespace_are_preserved():
    table = SynonymTable(TABLE)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        out = substitute_sentence("\"Big,  BIG!\t(big) paris. Car's", table, rng)
        parts = out.split(" ")
        seen.add(out)
        first, caps_rest = out.split(",", 1)
        assert first[0] == '"' and first[1].isupper() and first[2:].islower()  # "Big -> "Large
        assert caps_rest.startswith("  ") and "!\t(" in caps_rest  # spacing and punctuation kept
        shout = caps_rest.strip().split("!")[0]
        assert shout.isupper() and shout in {"BIG", "LARGE", "HUGE", "GREAT"}
        inner = out.split("(")[1].split(")")[0]
        assert inner in {"big", "large", "huge", "great"}
        assert parts[-2][-1] == "." and parts[-2][:-1] in {"paris", "Lyon", "Rome"}
        assert out.endswith("Car's")  # "car's" is not a table word
    assert len(seen) > 20


def test_capitalisation_pattern_applies_to_replacements():
    table = SynonymTable({"house": ["home"]})
    outs = {substitute_sentence("House HOUSE house", table, np.random.default_rng(i)) for i in range(64)}
    for out in outs:
        a, b, c = out.split()
        assert a in {"House", "Home"} and b in {"HOUSE", "HOME"} and c in {"house", "home"}
    assert len(outs) == 8


def test_same_seed_same_output_other_epoch_or_seed_differs():
    data = _dataset(50, s1="big car big car big car", s2="Paris big car")
    table = SynonymTable(TABLE)
    a = augment_dataset(data, table, seed=1, epoch=2)
    b = augment_dataset(data, table, seed=1, epoch=2)
    assert a["sentence1"] == b["sentence1"] and a["sentence2"] == b["sentence2"]
    assert augment_dataset(data, table, seed=1, epoch=3)["sentence1"] != a["sentence1"]
    assert augment_dataset(data, table, seed=2, epoch=2)["sentence1"] != a["sentence1"]
    # the draw of a row depends on (seed, epoch, row) only, not on the map batch size
    method = build_method(SynonymConfig(), task_synonyms=TABLE)
    assert method.epoch_train_dataset(data, 2, 1)["sentence2"] == a["sentence2"]
    assert a.column_names == data.column_names and len(a) == len(data)


def test_table_merges_case_and_drops_duplicates_and_self():
    table = SynonymTable({"Big": ["large", "big", "large"], "big": ["huge"], "lone": []})
    assert table.candidates("BIG") == ["large", "huge"]
    assert table.candidates("lone") is None and len(table) == 1


def test_config_path_overrides_the_task_table(tmp_path):
    path = tmp_path / "syn.json"
    path.write_text(json.dumps({"car": ["auto"]}))
    method = build_method(SynonymConfig(synonyms=str(path)), task_synonyms=TABLE)
    assert method.table.candidates("car") == ["auto"] and method.table.candidates("big") is None
    assert build_method(SynonymConfig(), task_synonyms=TABLE).table.candidates("big") is not None
    with pytest.raises(ConfigError, match="synonym table"):
        build_method(SynonymConfig())


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ["missing.json", "not found"]),
        ('{"big": ["large"],\n "car": [auto]}', ["bad.json", "not valid JSON", "line 2"]),
        ('["big", "large"]', ["bad.json", "JSON object"]),
        ('{"big": "large"}', ["bad.json", "'big'", "list of strings"]),
        ('{"big": ["large", 3]}', ["bad.json", "'big'", "non-string"]),
        ('{"": ["x"]}', ["bad.json", "non-empty string"]),
    ],
)
def test_bad_synonym_files_name_the_file_and_key(tmp_path, content, needles):
    path = tmp_path / ("missing.json" if content is None else "bad.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as info:
        load_synonym_table(path)
    for needle in needles:
        assert needle in str(info.value)
    with pytest.raises(DataError):
        build_method(SynonymConfig(synonyms=str(path)))


def test_bad_task_table_and_dataset_errors():
    with pytest.raises(DataError, match="'car'"):
        build_method(SynonymConfig(), task_synonyms={"car": "auto"})
    table = SynonymTable(TABLE)
    with pytest.raises(DataError, match="sentence1"):
        augment_dataset(datasets.Dataset.from_dict({"text": ["a"]}), table, seed=0, epoch=0)
    with pytest.raises(DataError, match="epoch"):
        augment_dataset(_dataset(2), table, seed=0, epoch=-1)
