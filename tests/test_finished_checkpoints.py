"""A finished run keeps no checkpoints (they are for work that can still be resumed), unless asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_guards import overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_finished_run_removes_its_checkpoints(tiny_pawsx, tmp_path: Path) -> None:
    from fastrobust.training import train

    data, model = tiny_pawsx
    out = tmp_path / "run"
    sets = ["output.checkpoint_every=1", "output.save_model=false", "output.tensorboard=false"]
    sets.append("average={start: 0.0, every_steps: 1}")  # its +avg folder has no checkpoints
    train(None, overrides(data, model, out, *sets))
    for label in ("baseline", "baseline+avg"):
        assert sorted(p.name for p in (out / label).iterdir()) == ["report", "summary.json"], label
    assert json.loads((out / "baseline" / "summary.json").read_text())["files"]["checkpoints"] is None


def test_a_resumed_run_removes_its_checkpoints_and_kept_ones_stay_when_asked(
    tiny_pawsx, tmp_path: Path
) -> None:
    from fastrobust.training import checkpoint as ckpt
    from fastrobust.training import train

    data, model = tiny_pawsx
    out = tmp_path / "run"
    sets = ["output.checkpoint_every=1", "output.save_model=false", "output.tensorboard=false"]
    train(None, overrides(data, model, out, *sets, "output.keep_finished_checkpoints=true"))
    root = out / "baseline" / "checkpoints"
    assert [s for s, _ in ckpt.complete_checkpoints(root)] == [1, 2]
    summary = json.loads((out / "baseline" / "summary.json").read_text())
    assert summary["files"]["checkpoints"] == str(root)
    (out / "baseline" / "summary.json").unlink()  # as if it had been killed before its results
    ckpt.step_dir(root, 2).rename(root / "gone")  # ... at step 1
    train(None, overrides(data, model, out, *sets), resume=True)
    assert json.loads((out / "baseline" / "summary.json").read_text())["resumed_from_step"] == 1
    assert not root.exists()
