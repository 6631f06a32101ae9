"""Output files: figures carry their units; atomic writes keep the user's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from test_evaluate_reports import make_report

from fastrobust.evaluate import write_report
from fastrobust.fileio import atomic_write_text, file_mode


def test_heatmap_colorbar_says_accuracy_percent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    close = plt.close

    def keep(fig=None):
        figures.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    write_report(make_report(), tmp_path)
    (fig,) = figures
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["language of sentence 1", "accuracy (%)"]  # the image axes, then the colorbar


def test_atomic_write_gives_the_mode_open_would(tmp_path: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    path = atomic_write_text(tmp_path / "a" / "x.txt", "hello\n")
    assert stat.S_IMODE(path.stat().st_mode) == file_mode() == 0o666 & ~mask
    assert path.read_text() == "hello\n" and [p.name for p in path.parent.iterdir()] == ["x.txt"]


def test_files_other_libraries_write_follow_the_umask_too(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from fastrobust.fileio import atomic_dir
    from fastrobust.training import checkpoint as ckpt

    with atomic_dir(tmp_path / "model") as tmp:  # as save_pretrained writes a model folder
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors: mode 0600
    step = ckpt.begin(tmp_path / "checkpoints", 1)
    save_file({"w": torch.zeros(2)}, str(step / ckpt.MODEL_FILE))
    (step / ckpt.STATE_FILE).write_bytes(b"")
    done = ckpt.commit(step, keep=1)
    for path in (tmp_path / "model" / "model.safetensors", done / ckpt.MODEL_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode(), path
