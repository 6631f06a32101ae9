"""``fastrobust synonyms``: the WordNet reader and the synonym filters, on a tiny WordNet-format
fixture (tests/fixtures/wordnet, the wndb(5) layout with invented offsets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastrobust.cli import main
from fastrobust.data.wordnet import SynonymFilters, build_synonym_table, read_counts, read_index
from fastrobust.errors import DataError
from fastrobust.methods.synonyms import SynonymTable

WN = Path(__file__).parent / "fixtures" / "wordnet"


def test_reader_parses_index_order_and_counts():
    assert read_index(WN, "n")["machine"] == ["00000300", "00000400", "00000500", "00000100"]
    counts = read_counts(WN)
    assert counts[("car", "n", "06", "0")] == 71 and counts[("big", "a", "00", "1")] == 4  # satellite -> a


def test_default_filters():
    table = build_synonym_table(WN)
    # the frequent sense only; "machine" dropped: the car sense is its 4th (> synonym_max_senses=3)
    assert table["car"] == ["auto", "automobile", "motorcar"]
    assert "railcar" not in table["car"]
    # same POS: "run" is mostly a verb (50 tagged vs 5), so its noun synonym "tally" is not used
    assert table["run"] == ["sprint"]
    # adjective markers are stripped
    assert table["big"] == ["large"]
    assert table["quickly"] == ["rapidly", "speedily"]
    # function words are never keys or synonyms ("can" must not become "tin"), nor multi-word
    # lemmas or proper nouns; untagged senses (min_count 1) give no entry
    assert "can" not in table and "tin" not in table
    assert "icecream" not in table and "paris" not in table
    assert "automobile" not in table and "motorcar" not in table
    assert all(" " not in s and "_" not in s and s.islower() for v in table.values() for s in v)
    assert list(table) == sorted(table)


def test_filters_are_options():
    loose = build_synonym_table(WN, SynonymFilters(max_senses=2, min_count=0, synonym_max_senses=4))
    assert loose["car"] == ["auto", "automobile", "machine", "motorcar", "railcar"]
    assert "automobile" in loose  # untagged senses allowed with min_count 0
    nouns = build_synonym_table(WN, SynonymFilters(pos=("n",)))
    assert nouns["run"] == ["tally"] and "quickly" not in nouns
    assert build_synonym_table(WN, SynonymFilters(max_synonyms=1))["car"] == ["auto"]


def test_table_is_a_valid_rs_da_table_and_cli(tmp_path, capsys):
    out = tmp_path / "syn.json"
    assert main(["synonyms", "--wordnet", str(WN), "-o", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table == build_synonym_table(WN)
    assert len(SynonymTable(table)) == len(table)
    assert "words" in capsys.readouterr().out


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["synonyms", "--wordnet", str(tmp_path / "none"), "-o", str(tmp_path / "x.json")]) == 2
    assert "--wordnet" in capsys.readouterr().err
    assert main(["synonyms", "--wordnet", str(WN), "--pos", "n,x", "-o", str(tmp_path / "x.json")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="data.noun"):
        build_synonym_table(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in WN.iterdir():
        (broken / f.name).write_text(f.read_text())
    (broken / "index.adv").write_text("quickly r 3 0 1 1 00003000\n")
    with pytest.raises(DataError, match="index.adv: line 1"):
        build_synonym_table(broken)
