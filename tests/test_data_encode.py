"""encode_dataset + make_collator for BERT-style (token_type_ids) and XLM-R-style tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures.tiny_models import word_tokenizer

from fastrobust.config import TaskConfig
from fastrobust.data import encode_dataset, load_task, make_collator
from fastrobust.data.xtreme import pairs_dataset
from fastrobust.errors import DataError

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def task():
    return load_task(TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "de"]))


@pytest.mark.parametrize("style", ["bert", "xlmr"])
def test_encode_and_collate_right_padded(task, style):
    tok = word_tokenizer(style)
    tok.padding_side = "left"  # the collator must pad on the right whatever the tokenizer says
    enc = encode_dataset(task.train, tok, max_length=64)
    expected_cols = {"input_ids", "attention_mask", "labels"} | (
        {"token_type_ids"} if style == "bert" else set()
    )
    assert set(enc.column_names) == expected_cols
    row = enc[0]
    assert row["input_ids"] == tok(task.train[0]["sentence1"], task.train[0]["sentence2"])["input_ids"]
    batch = make_collator(tok)([enc[i] for i in range(4)])
    assert set(batch) == expected_cols
    lengths = [len(enc[i]["input_ids"]) for i in range(4)]
    L = max(lengths)
    assert batch["input_ids"].shape == (4, L)
    assert batch["labels"].tolist() == [int(x) for x in task.train.select(range(4))["label"]]
    assert batch["labels"].dtype == torch.long
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (L - n)  # real tokens first
        assert batch["input_ids"][i, :n].tolist() == enc[i]["input_ids"]
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
    if style == "bert":
        sep = tok.sep_token_id
        ids = enc[0]["input_ids"]
        first_sep = ids.index(sep)
        assert enc[0]["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


def test_truncation_longest_first():
    tok = word_tokenizer("bert")
    # pair 0: 21 + 3 tokens, pair 1: 2 + 31 tokens; 12 = 3 special tokens + 9 kept
    ds = pairs_dataset(["a " * 20 + ".", "short ."], ["b b .", "x " * 30 + "."], [0, 1])
    enc = encode_dataset(ds, tok, max_length=12)
    assert [len(r) for r in enc["input_ids"]] == [12, 12]
    # the longer sentence loses tokens first: pair 0 keeps all 3 of sentence2, pair 1 all 2 of sentence1
    assert sum(enc[0]["token_type_ids"]) == 3 + 1
    assert enc[1]["token_type_ids"].count(0) == 1 + 2 + 1
    assert [r["labels"] for r in enc] == [0, 1]


def test_encode_rejects_missing_columns():
    tok = word_tokenizer("bert")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['label'\]"):
        encode_dataset(pairs_dataset(["a"], ["b"], [0]).remove_columns(["label"]), tok, 16)
