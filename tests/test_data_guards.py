"""Data files that are not UTF-8, and inputs far longer than the model reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures.tiny_models import word_tokenizer

from fastrobust.config import TaskConfig
from fastrobust.data import encode_dataset, load_task
from fastrobust.data.encode import char_budget
from fastrobust.data.xtreme import column, pairs_dataset
from fastrobust.errors import DataError

FIX = Path(__file__).parent / "fixtures"


def _copy_with_bad_byte(tmp_path: Path, name: str, line: int) -> tuple[Path, int]:
    """A copy of the PAWS-X fixture whose file ``name`` has byte 0xe9 (Latin-1 é) in line ``line``."""
    folder = tmp_path / "pawsx"
    shutil.copytree(FIX / "pawsx", folder)
    path = folder / name
    lines = path.read_bytes().split(b"\n")
    offset = sum(len(x) + 1 for x in lines[: line - 1]) + 3
    lines[line - 1] = lines[line - 1][:3] + b"\xe9" + lines[line - 1][3:]
    path.write_bytes(b"\n".join(lines))
    return folder, offset


@pytest.mark.parametrize("name", ["train-en.tsv", "test-de.tsv"])
def test_a_byte_that_is_not_utf8_names_file_line_and_offset(tmp_path: Path, name: str) -> None:
    folder, offset = _copy_with_bad_byte(tmp_path, name, line=3)
    with pytest.raises(DataError) as info:
        load_task(TaskConfig(name="pawsx", path=str(folder), languages=["en", "de"]))
    assert str(info.value) == (
        f"{folder / name}:3: not valid UTF-8: byte 0xe9 at byte offset {offset} of the file "
        "(column 4 of the line); save the file as UTF-8"
    )


def test_jsonl_and_synonym_tables_too(tmp_path: Path) -> None:
    from fastrobust.data import load_synonyms

    syn = tmp_path / "synonyms.json"
    syn.write_bytes(b'{"a": ["b"],\n "caf\xe9": ["c"]}')
    with pytest.raises(DataError, match=r"synonyms.json:2: not valid UTF-8: byte 0xe9 at byte offset 18 "):
        load_synonyms(syn)
    folder = tmp_path / "j"
    shutil.copytree(FIX / "pawsx_jsonl", folder)
    path = next(iter(sorted(folder.glob("dev-en.jsonl"))))
    path.write_bytes(path.read_bytes() + b'{"sentence1": "\xff", "sentence2": "x", "label": 0}\n')
    n = path.read_bytes().count(b"\n")
    with pytest.raises(DataError, match=rf"dev-en.jsonl:{n}: not valid UTF-8: byte 0xff"):
        load_task(TaskConfig(name="pawsx", path=str(folder), format="jsonl", languages=["en"]))


def test_a_byte_order_mark_is_not_part_of_the_first_sentence(tmp_path: Path) -> None:
    folder = tmp_path / "pawsx"
    shutil.copytree(FIX / "pawsx", folder)
    path = folder / "train-en.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    task = load_task(TaskConfig(name="pawsx", path=str(folder), languages=["en"]))
    assert not task.train[0]["sentence1"].startswith("\ufeff")


def test_cli_reports_the_bad_byte_in_one_line(tiny_pawsx: tuple[Path, Path], tmp_path: Path) -> None:
    from cli_run import run_cli

    data, model = tiny_pawsx
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    (folder / "train-en.tsv").write_bytes(b"w1 w2\tw2 w1\t1\nw3 \xc3\x28\tw3\t0\n")
    sets = [
        "task.name=pawsx",
        f"task.path={folder}",
        "task.languages=[en]",
        f"model.name_or_path={model}",
        f"output.dir={tmp_path / 'out'}",
    ]
    res = run_cli("train", *(x for s in sets for x in ("--set", s)))
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line == (
        f"fastrobust train: error: {folder / 'train-en.tsv'}:2: not valid UTF-8: byte 0xc3 at byte offset "
        "17 of the file (column 4 of the line); save the file as UTF-8"
    )


class RecordingTokenizer:
    """Wraps a tokenizer and records the longest text it was given."""

    def __init__(self, inner) -> None:
        self.inner, self.longest = inner, 0

    def __call__(self, first, second=None, **kw):
        self.longest = max([self.longest, *map(len, first), *map(len, second or [])])
        return self.inner(first, second, **kw)


def test_huge_inputs_are_cut_before_tokenizing_without_changing_what_the_model_sees() -> None:
    tok = word_tokenizer("bert")
    huge = " ".join(("the cat sat on the mat and the dog ran " * 1000).split())  # 10k words
    long = " ".join(("the cat sat on the mat and the dog ran " * 15).split())  # 150 words, > budget
    odd = " ".join(["x" * 40] * 60)  # 60 unknown 40-character words: 60 tokens, the cut binds
    data = pairs_dataset([huge, "a cat", long, odd, "a"], [huge, "a dog", "the mat", "a dog", odd], [0] * 5)
    rec = RecordingTokenizer(tok)
    stats: dict[str, int] = {}
    enc = encode_dataset(data, rec, max_length=32, stats=stats)
    # the tokenizer never saw 10k words: at most 4x the budget (the re-encoded pairs)
    assert rec.longest <= 4 * char_budget(32) < len(huge)
    assert stats == {"examples": 5, "truncated": 4}  # every pair but ("a cat", "a dog")
    assert [len(x) for x in enc["input_ids"]] == [32, 7, 32, 32, 32]
    # the same tokens as tokenizing the full texts (the 10k-word pair only by length: it takes 20 s)
    rest = data.select([1, 2, 3, 4])
    direct = tok(
        column(rest, "sentence1"), column(rest, "sentence2"), truncation="longest_first", max_length=32
    )
    assert enc["input_ids"][1:] == direct["input_ids"]
    assert (
        enc["input_ids"][0]
        == tok(huge[:5000], huge[:5000], truncation="longest_first", max_length=32)["input_ids"]
    )


@pytest.mark.usefixtures("one_thread")
def test_training_reports_truncated_pairs(tiny_pawsx: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from fastrobust.training import train

    data, model = tiny_pawsx
    result = train(
        None,
        [
            "seeds=null",  # one run per method (the demo config underneath lists seeds)
            "parallel=1",
            "task.name=pawsx",
            f"task.path={data}",
            "task.languages=[en]",
            "task.gxlt=false",
            f"model.name_or_path={model}",
            "model.max_length=12",  # the fixture's pairs have 4-8 words each: most do not fit
            "methods=[{kind: baseline}]",
            "optim.batch_size=8",
            "optim.max_steps=1",
            f"output.dir={tmp_path}",
        ],
    )
    n = result["methods"]["baseline"]["truncated_train_examples"]
    assert 0 < n <= 64
    assert f"[baseline] {n} of 64 training pairs" in capsys.readouterr().out
    assert json.loads((tmp_path / "baseline" / "summary.json").read_text())["truncated_train_examples"] == n


@pytest.mark.parametrize(
    ("choice", "pairs"),
    [
        ("all", 9),
        ("with_train_language", 5),
        (["de-fr", "fr-de", "de-fr"], 2),
    ],
)
def test_a_choice_of_gxlt_pairs_and_their_own_cap(choice, pairs: int) -> None:
    cfg = TaskConfig(
        name="pawsx",
        path=str(FIX / "pawsx"),
        languages=["en", "de", "fr"],
        gxlt_pairs=choice,
        max_gxlt_examples=4,
    )
    task = load_task(cfg)
    assert len(task.gxlt) == pairs
    if choice == "with_train_language":
        assert all("en" in pair for pair in task.gxlt)
    assert all(len(ds) == 4 for ds in task.gxlt.values())
    assert all(len(ds) == 6 for ds in task.test.values())  # XLT keeps its own size


def test_a_pair_outside_the_languages_names_the_key() -> None:
    cfg = TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "de"], gxlt_pairs=["en-ja"])
    with pytest.raises(
        DataError, match=r"task.gxlt_pairs: 'en-ja' is not a pair 'A-B' of evaluation languages"
    ):
        load_task(cfg)
