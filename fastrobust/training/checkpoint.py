"""Atomic training checkpoints.

Layout of ``<label>/checkpoints/``::

    step-000120/            a complete checkpoint (has the COMPLETE marker)
        COMPLETE
        trainer_state.pt    step, data position, optimizer/scheduler/scaler, RNG, histories
        model.safetensors   plain torch: the parameters
        best.safetensors    the best-on-dev parameters so far (when any)
        ds/                 DeepSpeed: engine.save_checkpoint (model + ZeRO optimizer shards)
    step-000140.tmp/        being written (or left by a crash): never loaded, removed later

A checkpoint is written into ``step-N.tmp``, every file is fsync'ed, the ``COMPLETE`` marker
is written last, and the folder is renamed to ``step-N`` (an atomic rename on POSIX). A folder
without the marker, or with the ``.tmp`` suffix, is therefore never picked up by ``--resume``.

Loading never unpickles arbitrary objects: tensors come from safetensors, and the trainer
state (tensors, numbers, strings, lists, dicts) is read with ``torch.load(weights_only=True)``.
(DeepSpeed's own ``ds/`` shards are read by ``engine.load_checkpoint``, DeepSpeed's format.)
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastrobust.fileio import apply_umask

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.pt"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
_NAME = re.compile(r"^step-(\d+)$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def fsync_tree(path: Path) -> None:
    """Flushes every file under ``path`` and the folders themselves to disk."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def begin(root: Path, step: int) -> Path:
    """A fresh ``step-N.tmp`` folder to write checkpoint ``step`` into."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"step-{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit(tmp: Path, keep: int) -> Path:
    """Marks ``tmp`` complete, renames it to its final name and prunes old checkpoints."""
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    (tmp / COMPLETE).write_text("ok\n")
    apply_umask(tmp)  # safetensors writes 0600; a shared run folder follows the umask
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    prune(final.parent, keep)
    return final


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _NAME.match(child.name)
        if m and child.is_dir() and (child / COMPLETE).is_file() and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    ckpts = complete_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def prune(root: Path, keep: int) -> None:
    """Keeps the ``keep`` newest complete checkpoints; removes older ones and stale ``.tmp`` folders."""
    ckpts = complete_checkpoints(root)
    for _step, path in ckpts[:-keep] if keep > 0 else ckpts:
        shutil.rmtree(path, ignore_errors=True)
    for child in root.iterdir():
        if child.name.endswith(".tmp") and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def save_state(path: Path, state: dict[str, Any]) -> None:
    torch.save(state, path)


def load_state(path: Path) -> dict[str, Any]:
    """Reads a trainer state; only tensors and plain containers/numbers can be in it."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """Every random generator the run uses, as tensors and plain lists (safe to load)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
