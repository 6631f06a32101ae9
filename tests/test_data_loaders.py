"""Loaders on every format (local XTREME TSV, JSONL, hub-layout folder) and their error messages."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fastrobust.config import TaskConfig
from fastrobust.data import TaskData, load_synonyms, load_task
from fastrobust.data.tasks import PAWSX, XNLI, parse_label, resolve_languages
from fastrobust.data.xtreme import column, read_jsonl, read_tsv
from fastrobust.errors import DataError

FIX = Path(__file__).parent / "fixtures"


def raw_rows(path: Path) -> list[list[str]]:
    """The fixture file parsed independently of the loader (csv module, no quoting)."""
    with path.open(encoding="utf-8", newline="") as f:
        return [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]


def as_rows(ds) -> list[tuple[str, str, int]]:
    return list(zip(column(ds, "sentence1"), column(ds, "sentence2"), column(ds, "label")))


# ---- local XTREME TSV -----------------------------------------------------------------------------
def test_pawsx_local_tsv_matches_files():
    task = load_task(TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["de", "en", "fr", "ja"]))
    assert isinstance(task, TaskData)
    assert task.name == "pawsx" and task.label_names == ["not_paraphrase", "paraphrase"]
    assert task.languages == ["en", "de", "fr", "ja"]  # train language moved first
    assert task.train.column_names == ["sentence1", "sentence2", "label"]
    assert as_rows(task.train) == [(a, b, int(y)) for a, b, y in raw_rows(FIX / "pawsx" / "train-en.tsv")]
    for lang in task.languages:
        assert as_rows(task.test[lang]) == [
            (a, b, int(y)) for a, b, y in raw_rows(FIX / "pawsx" / f"test-{lang}.tsv")
        ]
        assert len(task.dev[lang]) == 3
    # a sentence with double quotes is read verbatim (XTREME writes TSVs without quoting)
    assert task.train[2]["sentence1"] == 'She said "hello" to him .'
    assert len(task.gxlt) == 16 and task.synonyms is None


def test_xnli_local_tsv_word_labels_and_contradictory():
    task = load_task(TaskConfig(name="xnli", path=str(FIX / "xnli"), languages=["en", "de", "zh"]))
    assert task.label_names == ["entailment", "neutral", "contradiction"]
    raw = raw_rows(FIX / "xnli" / "train-en.tsv")
    assert [r[2] for r in raw] == ["entailment", "contradictory", "neutral"] * 2
    assert column(task.train, "label") == [0, 2, 1, 0, 2, 1]  # contradictory -> contradiction = 2
    assert column(task.test["zh"], "label") == [0, 2, 1, 0, 2, 1]
    assert task.test["zh"][0]["sentence1"] == "一个男人弹吉他 。"


def test_all_languages_default_needs_every_file():
    with pytest.raises(DataError, match=r"test-es\.tsv: file not found .*task\.languages"):
        load_task(TaskConfig(name="pawsx", path=str(FIX / "pawsx")))


def test_header_rows_pick_columns_by_name():
    raw = read_tsv(FIX / "headers" / "pawsx_raw.tsv", PAWSX)  # id sentence1 sentence2 label
    assert as_rows(raw) == [(a, b, int(y)) for a, b, y in raw_rows(FIX / "pawsx" / "test-en.tsv")[:3]]
    mnli = read_tsv(FIX / "headers" / "multinli.tsv", XNLI)  # premise hypo label
    assert as_rows(mnli)[1] == ("The dog sleeps on the sofa .", "The dog is running .", 2)
    with pytest.raises(DataError, match=r"bad_header\.tsv:1: header .* has no sentence2 column"):
        read_tsv(FIX / "broken" / "bad_header.tsv", PAWSX)


def test_truncation_is_deterministic_and_keeps_parallel():
    cfg = TaskConfig(
        name="pawsx",
        path=str(FIX / "pawsx"),
        languages=["en", "de"],
        max_train_examples=3,
        max_eval_examples=4,
    )
    a, b = load_task(cfg), load_task(cfg)
    assert (
        as_rows(a.train)
        == as_rows(b.train)
        == as_rows(load_task(cfg.model_copy(update={"max_train_examples": None})).train)[:3]
    )
    assert len(a.test["de"]) == 4 and len(a.dev["en"]) == 3
    assert len(a.gxlt[("en", "de")]) == 4


def test_gxlt_off_gives_no_pairs():
    task = load_task(TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "de"], gxlt=False))
    assert task.gxlt == {}


# ---- JSONL ----------------------------------------------------------------------------------------
def test_jsonl_equals_tsv_and_uses_ready_made_gxlt():
    j = load_task(
        TaskConfig(name="pawsx", path=str(FIX / "pawsx_jsonl"), format="jsonl", languages=["en", "de"])
    )
    t = load_task(TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "de"]))
    assert as_rows(j.train) == as_rows(t.train)
    assert as_rows(j.test["de"]) == as_rows(t.test["de"])
    # (de, en) comes from test-de-en.jsonl (4 rows), (en, de) is joined from the parallel test sets
    assert len(j.gxlt[("de", "en")]) == 4
    assert j.gxlt[("de", "en")][1] == {
        "sentence1": "Er gewann das Rennen .",
        "sentence2": "He lost the race .",
        "label": 0,
    }
    assert as_rows(j.gxlt[("en", "de")]) == as_rows(t.gxlt[("en", "de")])


# ---- hub layout -----------------------------------------------------------------------------------
def test_hub_xnli_layout_folder():
    task = load_task(
        TaskConfig(name="xnli", source="hub", path=str(FIX / "hub_xnli"), languages=["en", "de"])
    )
    local = load_task(TaskConfig(name="xnli", path=str(FIX / "xnli"), languages=["en", "de"]))
    assert task.train.column_names == ["sentence1", "sentence2", "label"]  # premise/hypothesis renamed
    assert as_rows(task.train) == as_rows(local.train)
    assert as_rows(task.test["de"]) == as_rows(local.test["de"])
    assert len(task.dev["de"]) == 3 and len(task.gxlt) == 4


def test_hub_pawsx_drops_unlabelled_rows():
    task = load_task(
        TaskConfig(name="pawsx", source="hub", path=str(FIX / "hub_pawsx"), languages=["en", "fr"])
    )
    local = load_task(TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "fr"]))
    assert as_rows(task.train) == as_rows(local.train)  # the -1 row is gone
    assert as_rows(task.test["fr"]) == as_rows(local.test["fr"])


def test_hub_unknown_config_names_it():
    with pytest.raises(DataError, match=r"config 'fr'.*BuilderConfig 'fr' not found"):
        load_task(TaskConfig(name="xnli", source="hub", path=str(FIX / "hub_xnli"), languages=["en", "fr"]))


# ---- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "reader", "pattern"),
    [
        ("fields.tsv", read_tsv, r"fields\.tsv:3: expected 3 tab-separated fields .* found 4"),
        ("no_label.tsv", read_tsv, r"no_label\.tsv:2: .*found 2 \(a test file without labels"),
        ("bad_label.tsv", read_tsv, r"bad_label\.tsv:2: unknown label '2' for task pawsx"),
        ("empty.tsv", read_tsv, r"empty\.tsv: no examples \(empty split\)"),
        ("missing.tsv", read_tsv, r"missing\.tsv: file not found"),
        ("bad.jsonl", read_jsonl, r"bad\.jsonl:2: invalid JSON"),
        (
            "fields.jsonl",
            read_jsonl,
            r"fields\.jsonl:2: expected string fields 'sentence1'.*\['label', 'text'\]",
        ),
    ],
)
def test_bad_file_errors_name_file_and_line(name, reader, pattern):
    with pytest.raises(DataError, match=pattern):
        reader(FIX / "broken" / name, PAWSX)


def test_unknown_xnli_label_names_value():
    with pytest.raises(DataError, match=r"xnli_bad_label\.tsv:2: unknown label 'maybe' for task xnli"):
        read_tsv(FIX / "broken" / "xnli_bad_label.tsv", XNLI)


def test_label_parsing():
    assert parse_label(XNLI, "Contradictory", "x") == 2
    assert parse_label(XNLI, 1, "x") == 1
    assert parse_label(PAWSX, "paraphrase", "x") == 1
    for bad in (2, -1, True, "yes", None):
        with pytest.raises(DataError, match="unknown label"):
            parse_label(PAWSX, bad, "x")


def test_unknown_language_lists_valid_ones():
    with pytest.raises(DataError, match=r"unknown language 'xx' for task pawsx; valid: en de es fr ja ko zh"):
        load_task(TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "xx"]))
    with pytest.raises(DataError, match=r"task\.train_language: unknown language 'it'"):
        resolve_languages(XNLI, None, "it")
    assert resolve_languages(XNLI, None, "en")[:3] == ["en", "ar", "bg"]


def test_empty_split_and_non_parallel_sets():
    broken = str(FIX / "broken_layout")
    with pytest.raises(DataError, match=r"test-ja\.tsv: no examples \(empty split\)"):
        load_task(TaskConfig(name="pawsx", path=broken, languages=["en", "ja"]))
    with pytest.raises(DataError, match=r"'en' \(6 examples\) and 'de' \(5 examples\) are not parallel"):
        load_task(TaskConfig(name="pawsx", path=broken, languages=["en", "de"]))
    with pytest.raises(DataError, match=r"'en' and 'fr' are not parallel: labels differ first at index 3"):
        load_task(TaskConfig(name="pawsx", path=broken, languages=["en", "fr"]))
    # without G-XLT the same sets load (XLT does not need parallel sets)
    task = load_task(TaskConfig(name="pawsx", path=broken, languages=["en", "de"], gxlt=False))
    assert len(task.test["de"]) == 5


def test_missing_folder_and_local_without_path():
    with pytest.raises(DataError, match=r"task\.path: .*nowhere is not a folder"):
        load_task(TaskConfig(name="pawsx", path=str(FIX / "nowhere")))
    with pytest.raises(DataError, match=r"task\.path: required"):
        load_task(TaskConfig(name="pawsx", source="local"))


def test_synonym_table(tmp_path):
    (tmp_path / "syn.json").write_text('{"Hund": ["Köter"]}', encoding="utf-8")
    task = load_task(
        TaskConfig(
            name="pawsx", path=str(FIX / "pawsx"), languages=["en"], synonyms=str(tmp_path / "syn.json")
        )
    )
    assert task.synonyms == {"Hund": ["Köter"]}
    with pytest.raises(DataError, match=r"bad_synonyms\.json: entry 'bad' must be a list of strings"):
        load_synonyms(FIX / "broken" / "bad_synonyms.json")


# ---- synthetic dispatch -----------------------------------------------------------------------------
def test_synthetic_task_reads_the_generated_folder(tmp_path):
    from fastrobust.config import SyntheticConfig

    syn = SyntheticConfig(
        languages=["en", "xa", "xb"],
        concepts=48,
        topics=2,
        train_size=16,
        dev_size=8,
        test_size=8,
        pretrain_steps=0,
        cache_dir=str(tmp_path),
    )
    task = load_task(TaskConfig(name="synthetic", synthetic=syn, max_train_examples=10))
    assert task.name == "synthetic" and task.languages == ["en", "xa", "xb"]
    assert task.label_names == ["not_paraphrase", "paraphrase"]
    assert len(task.train) == 10 and set(task.dev) == {"en", "xa", "xb"}
    assert len(task.gxlt) == 9 and all(len(d) == 8 for d in task.gxlt.values())
    # the synonym table shipped in the benchmark folder: word -> list of words
    assert task.synonyms and all(isinstance(v, list) for v in task.synonyms.values())
    with pytest.raises(
        DataError, match=r"task\.languages: unknown language 'zz' for task synthetic; valid: en xa xb"
    ):
        load_task(TaskConfig(name="synthetic", synthetic=syn, languages=["zz"]))
