"""The real benchmark's pack for the GPU machine, on the tiny E5S1 model: ``unpack`` gives back the
trimmed model folder bit for bit, and refuses a pack whose weights or files were changed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from benchmarks.real import pack
from benchmarks.real.encoder.convert import convert
from benchmarks.real.encoder.e5format import read_e5
from tests.fixtures.real_fixtures import engine_tokenize, write_tiny_e5


@pytest.fixture()
def built(tmp_path):
    """A built real benchmark in miniature: trimmed model folder, task folder, real.yaml."""
    src = tmp_path / "tiny-q4.bin"
    write_tiny_e5(src)
    f = read_e5(src)
    used = {i for t in ("the cat sat", "cats on the mat") for i in engine_tokenize(f.tokenizer, t)}
    model = convert(src, tmp_path / "model-x", keep_ids=used)
    task = tmp_path / "task-x"
    task.mkdir()
    (task / "train-en.tsv").write_text("the cat\tthe cat sat\t1\n", encoding="utf-8")
    (task / "test-de.tsv").write_text("die katze\tder hund\t0\n", encoding="utf-8")
    cfg = {
        "name": "real",
        "model": {"name_or_path": str(model)},
        "task": {"name": "pawsx", "path": str(task)},
    }
    config = tmp_path / "real.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return config, model, task


def test_unpack_gives_back_the_built_model_bit_for_bit(built, tmp_path):
    config, model, task = built
    packed = pack.pack(config, tmp_path / "packed")
    assert not (packed / "model" / pack.WEIGHTS).exists()  # the weights travel only as Q4_0
    real = pack.unpack(packed, tmp_path / "there")
    cfg = yaml.safe_load(real.read_text(encoding="utf-8"))
    got_model, got_task = tmp_path / "there" / "model", tmp_path / "there" / "task"
    assert cfg["model"]["name_or_path"] == str(got_model.resolve())
    assert cfg["task"]["path"] == str(got_task.resolve())
    a, b = load_file(str(model / pack.WEIGHTS)), load_file(str(got_model / pack.WEIGHTS))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for name in ("tokenizer.json", "config.json", "e5_conversion.json"):
        assert (got_model / name).read_bytes() == (model / name).read_bytes()
    assert (got_task / "test-de.tsv").read_bytes() == (task / "test-de.tsv").read_bytes()


def test_unpack_refuses_changed_weights_or_files(built, tmp_path):
    config, _, _ = built
    packed = pack.pack(config, tmp_path / "packed")
    manifest = json.loads((packed / pack.MANIFEST).read_text())
    manifest["tensors"]["encoder.layer.0.output.dense.weight"]["sha256"] = "0" * 64
    (packed / pack.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(pack.PackError, match=r"tensors: 1 differ .*encoder\.layer\.0\.output\.dense\.weight"):
        pack.unpack(packed, tmp_path / "there")
    assert not (tmp_path / "there" / "model").exists()

    packed = pack.pack(config, tmp_path / "packed2")
    (packed / "task" / "test-de.tsv").write_text("changed\tchanged\t1\n", encoding="utf-8")
    with pytest.raises(pack.PackError, match=r"task: files: 1 differ .*test-de\.tsv"):
        pack.unpack(packed, tmp_path / "there2")


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert pack.main(["pack", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "p")]) == 2
    assert "nope.yaml: config not found" in capsys.readouterr().err
    assert pack.main(["unpack", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "manifest.json: not found" in capsys.readouterr().err


def test_cli_names_a_truncated_or_missing_encoder_file_with_exit_code_2(built, tmp_path, capsys):
    config, _, _ = built
    packed = pack.pack(config, tmp_path / "packed")
    encoder = packed / "encoder-q4.e5"
    encoder.write_bytes(encoder.read_bytes()[:1000])
    assert pack.main(["unpack", str(packed), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "encoder-q4.e5: tensor emb.word runs past the end of the file" in err
    encoder.unlink()
    assert pack.main(["unpack", str(packed), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "encoder-q4.e5: model file not found" in err
