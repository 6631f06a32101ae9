"""One ``train`` at a time per output folder: the second is refused with one line naming the first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastrobust.errors import ConfigError
from fastrobust.training.lock import LOCK_NAME, output_lock


def test_a_second_train_on_the_same_folder_is_refused_naming_the_first(tiny_pawsx, tmp_path: Path) -> None:
    from test_train_guards import overrides

    from fastrobust.training import train

    data, model = tiny_pawsx
    out = tmp_path / "run"
    with output_lock(out):  # as if another fastrobust train were writing the folder
        with pytest.raises(ConfigError) as info:
            train(None, overrides(data, model, out, "optim.max_steps=1"))
        msg = str(info.value)
        assert msg.startswith(
            f"output.dir: {out} is in use by another fastrobust train (pid {os.getpid()} on "
        )
        assert msg.endswith("; wait for it to end, or set output.dir to another folder") and "\n" not in msg
        assert not (out / "baseline").exists()  # refused before anything was written
    # the lock goes with the run: the folder then trains, and no lock file is left behind
    train(None, overrides(data, model, out, "optim.max_steps=1"))
    assert (out / "baseline" / "summary.json").is_file() and not (out / LOCK_NAME).exists()


def test_the_lock_is_released_when_its_holder_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), output_lock(tmp_path):
        raise RuntimeError("the run failed")
    with output_lock(tmp_path):
        assert "pid" in (tmp_path / LOCK_NAME).read_text()
