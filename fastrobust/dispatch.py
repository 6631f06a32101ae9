"""Which implementation an op call runs: the Triton kernels or the pure-torch reference.

``FASTROBUST_BACKEND`` is read at every call — inside the registered custom ops, so also at
every call of a ``torch.compile``'d graph (the choice is never baked into a graph):

* ``auto`` (default): the Triton kernels for CUDA tensors, and for CPU tensors when
  ``TRITON_INTERPRET=1`` was set before triton was imported (that is how kernel tests run
  without a GPU); the pure-torch twin :mod:`fastrobust.reference` otherwise (and when triton
  is not installed, and for float64, which the fp32 kernels would silently narrow).
* ``triton``: always the kernels; CPU tensors without the interpreter (or float64) raise a
  ``FastrobustError`` instead of a launch that would fail with "0 active drivers".
* ``torch``: always the reference.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from functools import lru_cache

import torch
from torch import Tensor

from fastrobust.errors import FastrobustError

__all__ = ["BACKENDS", "backend_for", "use_backend", "env_true"]

BACKENDS = ("auto", "triton", "torch")
ENV = "FASTROBUST_BACKEND"


def env_true(name: str) -> bool:
    """Whether environment variable ``name`` is set to a true value (unset: false)."""
    # Same truthy spellings as triton.knobs.env_bool, so TRITON_INTERPRET reads as triton reads it.
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on", "y")


@lru_cache(maxsize=1)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _kernels_interpreted() -> bool:
    """Whether our kernels were decorated in interpreter mode (TRITON_INTERPRET is read by
    @triton.jit at import time, so the environment alone is not enough)."""
    from fastrobust.kernels import common  # Triton: only asked once a CUDA tensor is dispatched

    return common.INTERPRETED


def backend_for(tensor: Tensor, *others: Tensor | None) -> str:
    """The backend ("triton" or "torch") an op on ``tensor`` (and ``others``) uses now.

    See the module docstring. float64 inputs always take the reference under ``auto`` and
    are an error when ``triton`` is forced.
    """
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise FastrobustError(f"{ENV} must be one of {BACKENDS}, got {os.environ.get(ENV)!r}")
    if choice == "torch":
        return "torch"
    wide = any(t is not None and t.dtype == torch.float64 for t in (tensor, *others))
    device = tensor.device.type
    if choice == "triton":
        if wide:
            raise FastrobustError(f"{ENV}=triton: the kernels support fp32/fp16/bf16, not float64")
        if not _triton_installed():
            raise FastrobustError(f"{ENV}=triton but triton is not installed (pip install triton)")
        if device == "cuda":
            return "triton"
        if device == "cpu" and env_true("TRITON_INTERPRET"):
            if not _kernels_interpreted():
                raise FastrobustError(
                    f"{ENV}=triton with CPU tensors: TRITON_INTERPRET=1 was set after triton kernels were "
                    "compiled for a GPU; set it in the environment before the process starts"
                )
            return "triton"
        raise FastrobustError(
            f"{ENV}=triton needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before the "
            f"process starts; got a tensor on {tensor.device}"
        )
    # auto
    if wide or not _triton_installed():
        return "torch"
    if device == "cuda":
        return "triton"
    if device == "cpu" and env_true("TRITON_INTERPRET") and _kernels_interpreted():
        return "triton"
    return "torch"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Set ``FASTROBUST_BACKEND`` to ``name`` inside the block (restored afterwards)."""
    if name not in BACKENDS:
        raise FastrobustError(f"backend must be one of {BACKENDS}, got {name!r}")
    old = os.environ.get(ENV)
    os.environ[ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
