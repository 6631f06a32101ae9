"""``fastrobust certify`` and ``fastrobust augment`` end to end (tiny model, fixture data)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from fastrobust.cli import main
from fastrobust.methods.synonyms import SynonymTable, augment_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "pawsx"
SYNONYMS = {"cat": ["kitten", "feline"], "big": ["large"], "red": ["crimson", "scarlet"], "moved": ["went"]}


# --------------------------------------------------------------------------- augment


@pytest.fixture
def synonyms_file(tmp_path):
    path = tmp_path / "syn.json"
    path.write_text(json.dumps(SYNONYMS))
    return path


def test_augment_tsv_copies_match_training_epochs(tmp_path, synonyms_file):
    src = tmp_path / "train.tsv"
    rows = [
        ("The cat sat on a red mat .", "A red cat sat .", "1"),
        ("He moved the big box .", "Boxes .", "0"),
    ] * 20
    src.write_text("".join("\t".join(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert (
        main(
            [
                "augment",
                str(src),
                "--synonyms",
                str(synonyms_file),
                "--copies",
                "3",
                "--seed",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["train.aug0.tsv", "train.aug1.tsv", "train.aug2.tsv"]
    data = datasets.Dataset.from_dict(
        {k: [r[i] for r in rows] for i, k in enumerate(("sentence1", "sentence2", "label"))}
    )
    contents = []
    for epoch, f in enumerate(files):
        lines = f.read_text().splitlines()
        assert len(lines) == len(rows)
        fields = [line.split("\t") for line in lines]
        assert [x[2] for x in fields] == [r[2] for r in rows]  # labels untouched
        # copy i is exactly what rs-da trains on in epoch i with the same seed
        expected = augment_dataset(data, SynonymTable(SYNONYMS), seed=4, epoch=epoch)
        assert [x[0] for x in fields] == expected["sentence1"]
        assert [x[1] for x in fields] == expected["sentence2"]
        contents.append(f.read_text())
    assert len(set(contents)) == 3 and contents[0] != src.read_text()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_augment_tsv_with_header_and_extra_columns(tmp_path, synonyms_file):
    src = tmp_path / "train.tsv"
    src.write_text(
        "id\tsentence1\tsentence2\tlabel\n7\tThe big cat .\tA red cat .\t1\n8\tNo match here\tNone\t0\n"
    )
    assert main(["augment", str(src), "--synonyms", str(synonyms_file), "--seed", "1"]) == 0
    lines = (tmp_path / "train.aug0.tsv").read_text().splitlines()
    assert lines[0] == "id\tsentence1\tsentence2\tlabel"
    first = lines[1].split("\t")
    assert first[0] == "7" and first[3] == "1" and first[1].split()[1] in {"big", "large"}
    assert lines[2] == "8\tNo match here\tNone\t0"


def test_augment_jsonl(tmp_path, synonyms_file):
    src = tmp_path / "train.jsonl"
    recs = [
        {"sentence1": "The Cat is big.", "sentence2": "A red cat.", "label": 1, "id": i} for i in range(30)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["augment", str(src), "--synonyms", str(synonyms_file), "--copies", "2"]) == 0
    out = [json.loads(line) for line in (tmp_path / "train.aug1.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == list(range(30)) and all(r["label"] == 1 for r in out)
    firsts = {r["sentence1"].split()[1] for r in out}
    assert firsts == {"Cat", "Kitten", "Feline"}  # capitalisation kept
    assert all(r["sentence1"].endswith(".") for r in out)


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("missing_input", "input file not found"),
        ("missing_synonyms", "synonym file not found"),
        ("bad_synonyms", "not valid JSON"),
        ("short_row", "train.tsv:2: expected 3 tab-separated fields"),
        ("bad_jsonl", "train.jsonl:2: not valid JSON"),
        ("copies", "--copies"),
        ("suffix", "--format"),
    ],
)
def test_augment_bad_input_exits_2_with_one_line(tmp_path, synonyms_file, capsys, setup, needle):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("a\tb\t1\nonly two\tfields\n")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"sentence1": "a"}\n{oops\n')
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    other = tmp_path / "train.csv"
    other.write_text("a,b,1\n")
    argv = {
        "missing_input": [str(tmp_path / "nope.tsv"), "--synonyms", str(synonyms_file)],
        "missing_synonyms": [str(tsv), "--synonyms", str(tmp_path / "nope.json")],
        "bad_synonyms": [str(tsv), "--synonyms", str(bad)],
        "short_row": [str(tsv), "--synonyms", str(synonyms_file)],
        "bad_jsonl": [str(jsonl), "--synonyms", str(synonyms_file)],
        "copies": [str(tsv), "--synonyms", str(synonyms_file), "--copies", "0"],
        "suffix": [str(other), "--synonyms", str(synonyms_file)],
    }[setup]
    assert main(["augment", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastrobust augment: error:") and needle in err[0], err


# --------------------------------------------------------------------------- certify


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny BERT classifier with a word-level tokenizer, saved as the trainer saves models."""
    from fixtures.tiny_models import tiny_classifier, word_tokenizer

    tok = word_tokenizer("bert")
    model = tiny_classifier(tok, "bert", seed=0)
    folder = tmp_path_factory.mktemp("run") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    task = {
        "name": "pawsx",
        "source": "local",
        "path": str(FIXTURES),
        "languages": ["en", "de", "fr"],
        "gxlt": False,
    }
    (folder / "fastrobust.json").write_text(json.dumps({"task": task, "max_length": 32}))
    return folder


def test_certify_writes_per_language_certified_accuracy(model_dir, tmp_path, capsys):
    out = tmp_path / "cert"
    argv = ["certify", str(model_dir), "--n0", "8", "-n", "64", "--sigma", "0.25", "--radii", "0,0.1,0.3"]
    assert main([*argv, "--languages", "en,fr", "--out", str(out), "--batch-size", "128"]) == 0
    printed = capsys.readouterr().out
    assert "| en |" in printed and "| fr |" in printed and "r=0.3" in printed
    payload = json.loads((out / "certify.json").read_text())
    assert (out / "certify.md").is_file()
    assert set(payload["languages"]) == {"en", "fr"}
    assert payload["radii"] == [0.0, 0.1, 0.3] and payload["sigma_mode"] == "relative"
    assert payload["sigma_absolute"] == pytest.approx(0.25 * payload["embedding_rms"])
    for res in payload["languages"].values():
        acc = [res["certified_accuracy"][k] for k in ("0", "0.1", "0.3")]
        assert all(0 <= a <= 1 for a in acc) and acc == sorted(acc, reverse=True)
        assert res["examples"] == len((FIXTURES / "test-en.tsv").read_text().splitlines())
        assert 0 <= res["abstain_rate"] <= 1
    # default output folder: next to the model folder
    assert main([*argv, "--languages", "de", "--max-examples", "2"]) == 0
    assert (
        json.loads((model_dir.parent / "certify" / "certify.json").read_text())["languages"]["de"]["examples"]
        == 2
    )


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--sigma", "-1"], "--sigma"),
        (["--radii", "a,b"], "--radii"),
        (["--alpha", "2"], "--alpha"),
        (["-n", "0"], "--n"),
        (["--languages", "xx"], "--languages"),
        (["--set", "task.path=/nonexistent/folder"], "/nonexistent/folder"),
    ],
)
def test_certify_bad_input_exits_2_with_one_line(model_dir, capsys, extra, needle):
    assert main(["certify", str(model_dir), "--n0", "4", "-n", "8", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastrobust certify: error:") and needle in err[0], err


def test_certify_missing_model_dir_exits_2(tmp_path, capsys):
    assert main(["certify", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
