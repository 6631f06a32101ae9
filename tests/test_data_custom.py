"""``task.name: custom``: any sentence or sentence-pair classification task, any language codes.

Fixtures are written here: a 3-label single-sentence task in languages xx/yy (TSV), a pair task in
sw/qu/en (JSONL and CSV; languages outside PAWS-X's list) and a hub-layout folder read through
``datasets``. PAWS-X and XNLI (tests/test_data_loaders.py) are presets of the same loader.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from fastrobust.config import TaskConfig
from fastrobust.data import load_task
from fastrobust.data.xtreme import column
from fastrobust.errors import ConfigError, DataError

LABELS3 = ["negative", "neutral", "positive"]


def _sentiment_rows(n: int, lang: str, seed: int) -> list[tuple[str, str]]:
    """(text, label) rows: the label is carried by one marker word, translated per language."""
    rng = random.Random(seed)
    marker = {"negative": "bad", "neutral": "plain", "positive": "good"}
    rows = []
    for _ in range(n):
        label = rng.choice(LABELS3)
        words = [f"w{rng.randrange(12)}" for _ in range(rng.randint(3, 6))]
        words.insert(rng.randrange(len(words) + 1), marker[label])
        rows.append((" ".join(f"{lang}{w}" for w in words), label))
    return rows


def write_single_task(root: Path) -> Path:
    """train-xx (header row), dev-xx/yy, test-xx/yy; labels spelt as words."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 48, 0), ("dev", 12, 1), ("test", 12, 2)):
        for lang in ("xx", "yy"):
            if split == "train" and lang == "yy":
                continue
            lines = ["text\tlabel"] if split == "train" else []
            lines += [f"{t}\t{y}" for t, y in _sentiment_rows(n, lang, seed)]
            (root / f"{split}-{lang}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _pair_rows(n: int, seed: int) -> list[tuple[list[str], list[str], int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = [f"w{rng.randrange(20)}" for _ in range(rng.randint(3, 6))]
        y = rng.randint(0, 1)
        b = list(a) if y else [f"w{rng.randrange(20)}" for _ in a]
        rows.append((a, b, y))
    return rows


def write_pair_task(root: Path, fmt: str) -> Path:
    """A pair task in sw, qu and en with parallel test sets; columns premise/claim/verdict."""
    root.mkdir(parents=True, exist_ok=True)
    names = ["different", "same"]
    for split, n, seed, langs in (
        ("train", 24, 0, ["en"]),
        ("dev", 8, 1, ["en", "sw"]),
        ("test", 8, 2, ["en", "sw", "qu"]),
    ):
        rows = _pair_rows(n, seed)
        for lang in langs:
            tr = lambda ws, lang=lang: " ".join(f"{lang}{w}" for w in ws)  # noqa: E731
            records = [
                {"premise": tr(a), "claim": tr(b), "verdict": names[y], "id": i}
                for i, (a, b, y) in enumerate(rows)
            ]
            path = root / f"{split}-{lang}.{fmt}"
            if fmt == "jsonl":
                path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            else:
                with path.open("w", encoding="utf-8", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=["id", "premise", "claim", "verdict"])
                    w.writeheader()
                    w.writerows(records)
    return root


def write_hub_folder(root: Path) -> Path:
    """A folder laid out like a hub dataset: configs xx and yy, JSONL files, string labels."""
    root.mkdir(parents=True, exist_ok=True)
    configs = []
    for lang in ("xx", "yy"):
        files = []
        for _split, hub_split, n, seed in (
            ("train", "train", 30, 0),
            ("dev", "validation", 9, 1),
            ("test", "test", 9, 2),
        ):
            rel = f"{lang}/{hub_split}.jsonl"
            (root / lang).mkdir(exist_ok=True)
            rows = _sentiment_rows(n, lang, seed)
            (root / rel).write_text("".join(json.dumps({"review": t, "stars": y}) + "\n" for t, y in rows))
            files.append(f"  - split: {hub_split}\n    path: {rel}")
        configs.append(f"- config_name: {lang}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n# hub-layout fixture\n")
    return root


# ---- single-sentence, 3 labels, languages xx/yy ---------------------------------------------------
def test_single_sentence_task_languages_from_file_names(tmp_path: Path) -> None:
    root = write_single_task(tmp_path / "sent")
    task = load_task(TaskConfig(name="custom", path=str(root), text_columns=["text"], train_language="xx"))
    assert task.languages == ["xx", "yy"] and not task.pair and task.gxlt == {}
    # labels read from the data: sorted distinct values
    assert task.label_names == LABELS3
    assert task.train.column_names == ["sentence1", "label"]
    rows = (root / "train-xx.tsv").read_text().splitlines()[1:]
    assert column(task.train, "sentence1") == [r.split("\t")[0] for r in rows]
    assert column(task.train, "label") == [LABELS3.index(r.split("\t")[1]) for r in rows]
    assert set(task.dev) == {"xx", "yy"} and len(task.test["yy"]) == 12


def test_labels_from_config_set_the_order_and_reject_others(tmp_path: Path) -> None:
    root = write_single_task(tmp_path / "sent")
    order = ["positive", "neutral", "negative"]
    task = load_task(
        TaskConfig(name="custom", path=str(root), text_columns=["text"], train_language="xx", labels=order)
    )
    assert task.label_names == order
    raw = [r.split("\t")[1] for r in (root / "test-yy.tsv").read_text().splitlines()]
    assert column(task.test["yy"], "label") == [order.index(y) for y in raw]
    with pytest.raises(DataError, match=r"train-xx\.tsv:\d+: unknown label 'neutral' for task custom"):
        load_task(
            TaskConfig(
                name="custom",
                path=str(root),
                text_columns=["text"],
                train_language="xx",
                labels=["negative", "positive"],
            )
        )
    # a dev/test label the training set does not have: named with file, line and the remedy
    (root / "test-yy.tsv").write_text("yyw1 great\tgreat\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"test-yy\.tsv:1: unknown label 'great' .* list them all in task\.labels"
    ):
        load_task(TaskConfig(name="custom", path=str(root), text_columns=["text"], train_language="xx"))


def test_custom_task_errors_are_precise(tmp_path: Path) -> None:
    root = write_single_task(tmp_path / "sent")
    with pytest.raises(ValueError, match=r"text_columns: required for task 'custom'"):
        TaskConfig(name="custom", path=str(root))
    with pytest.raises(
        DataError, match=r"train-en\.tsv: file not found \(training set of task\.train_language"
    ):
        load_task(TaskConfig(name="custom", path=str(root), text_columns=["text"]))
    with pytest.raises(DataError, match=r"test-zz\.tsv: file not found"):
        load_task(
            TaskConfig(
                name="custom", path=str(root), text_columns=["text"], train_language="xx", languages=["zz"]
            )
        )
    (root / "test-yy.tsv").write_text("only text\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"test-yy\.tsv:1: expected 2 tab-separated fields \(text, label\), found 1"
    ):
        load_task(TaskConfig(name="custom", path=str(root), text_columns=["text"], train_language="xx"))
    one = tmp_path / "one"
    one.mkdir()
    (one / "train-en.tsv").write_text("a\tpos\nb\tpos\n")
    with pytest.raises(DataError, match=r"no test-<lang>\.tsv files in .*one to take the languages from"):
        load_task(TaskConfig(name="custom", path=str(one), text_columns=["text"]))
    with pytest.raises(DataError, match=r"found 1 distinct label\(s\) \['pos'\]"):
        load_task(TaskConfig(name="custom", path=str(one), text_columns=["text"], languages=["en"]))
    # presets keep their language list, and say where other languages go
    with pytest.raises(DataError, match=r"unknown language 'sw' for task pawsx.*task\.name: custom"):
        load_task(TaskConfig(name="pawsx", path=str(root), languages=["sw"]))


# ---- pair task outside PAWS-X's languages (JSONL and CSV) -----------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_pair_task_other_languages_with_gxlt(tmp_path: Path, fmt: str) -> None:
    root = write_pair_task(tmp_path / "pair", fmt)
    cfg = TaskConfig(
        name="custom",
        path=str(root),
        format=fmt,
        text_columns=["premise", "claim"],
        label_column="verdict",
        labels=["different", "same"],
    )
    task = load_task(cfg)
    assert task.pair and task.languages == ["en", "qu", "sw"]
    assert task.train.column_names == ["sentence1", "sentence2", "label"]
    assert set(task.dev) == {"en", "sw"}  # qu has no dev file: fine, only the train language's is required
    assert len(task.gxlt) == 9
    qu, sw = task.test["qu"], task.test["sw"]
    mixed = task.gxlt[("qu", "sw")]
    assert column(mixed, "sentence1") == column(qu, "sentence1")
    assert column(mixed, "sentence2") == column(sw, "sentence2")
    assert column(mixed, "label") == column(qu, "label")
    # non-parallel test sets: the G-XLT error says how to go on without G-XLT
    lines = (root / f"test-qu.{fmt}").read_text().splitlines()
    (root / f"test-qu.{fmt}").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"not parallel.*set task\.gxlt: false"):
        load_task(cfg)
    assert len(load_task(cfg.model_copy(update={"gxlt": False})).test["qu"]) == 7


# ---- a hub-layout folder through datasets ---------------------------------------------------------
def test_hub_layout_folder_through_datasets(tmp_path: Path) -> None:
    root = write_hub_folder(tmp_path / "hub")
    task = load_task(
        TaskConfig(
            name="custom",
            source="hub",
            path=str(root),
            text_columns=["review"],
            label_column="stars",
            train_language="xx",
        )
    )
    assert task.languages == ["xx", "yy"]  # the dataset's configs
    assert task.label_names == LABELS3 and not task.pair
    raw = [json.loads(line) for line in (root / "yy" / "test.jsonl").read_text().splitlines()]
    assert column(task.test["yy"], "sentence1") == [r["review"] for r in raw]
    assert column(task.test["yy"], "label") == [LABELS3.index(r["stars"]) for r in raw]
    with pytest.raises(
        DataError,
        match=r"config 'xx' split 'train'.*missing column\(s\) \['text', 'label'\]; "
        r"has \['review', 'stars'\]",
    ):
        load_task(
            TaskConfig(
                name="custom", source="hub", path=str(root), text_columns=["text"], train_language="xx"
            )
        )


# ---- end to end: fastrobust train on the single-sentence task -------------------------------------
def test_train_on_custom_single_sentence_task(tmp_path: Path) -> None:
    """The model gets the task's labels in id2label; XLT on xx/yy; no G-XLT for a single-sentence task."""
    from conftest import _build_tiny_bert, one_torch_thread
    from transformers import AutoConfig

    from fastrobust.training import train

    root = write_single_task(tmp_path / "sent")
    words = {
        w
        for f in root.glob("*.tsv")
        for line in f.read_text().splitlines()
        for w in line.split("\t")[0].split()
    }
    model = _build_tiny_bert(tmp_path / "model", sorted(words))
    with one_torch_thread():
        result = train(
            None,
            [
                "seeds=null",  # one run per method (the demo config underneath lists seeds)
                "parallel=1",
                "task.name=custom",
                f"task.path={root}",
                "task.text_columns=[text]",
                "task.train_language=xx",
                f"model.name_or_path={model}",
                "model.max_length=16",
                "methods=[{kind: rs-rp, sigma: 0.3}]",
                "optim.batch_size=8",
                "optim.max_steps=3",
                "optim.learning_rate=1e-3",
                "output.tensorboard=false",
                f"output.dir={tmp_path / 'run'}",
            ],
        )
    s = result["methods"]["rs-rp"]
    assert set(s["xlt"]) == {"xx", "yy"} and s["averages"]["gxlt_avg"] is None
    saved = AutoConfig.from_pretrained(tmp_path / "run" / "rs-rp" / "model")
    assert saved.id2label == dict(enumerate(LABELS3)) and saved.num_labels == 3
    meta = json.loads((tmp_path / "run" / "rs-rp" / "model" / "fastrobust.json").read_text())
    assert meta["task"]["name"] == "custom" and meta["task"]["text_columns"] == ["text"]


def test_config_rejects_bad_custom_sections() -> None:
    from fastrobust.training.run import resolve_config

    with pytest.raises(ConfigError, match="text_columns"):
        resolve_config(None, ["task.name=custom", "model.name_or_path=x", "task.text_columns=[a, b, c]"])
    with pytest.raises(ConfigError, match=r"labels: \['a'\] listed twice"):
        resolve_config(
            None, ["task.name=custom", "model.name_or_path=x", "task.text_columns=[t]", "task.labels=[a, a]"]
        )
