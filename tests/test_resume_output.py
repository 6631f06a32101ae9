"""What ``--resume`` prints (``make demo`` runs with it): nothing about checkpoints on a fresh
folder, and on a second call every table of the first, throughput included."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train_guards import overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_second_resume_prints_every_table_and_a_fresh_one_no_checkpoint_noise(
    tiny_pawsx, tmp_path: Path, capsys
) -> None:
    from fastrobust.training import train

    data, model = tiny_pawsx
    sets = overrides(data, model, tmp_path / "run", "methods=[{kind: baseline}, {kind: rs-rp, sigma: 0.1}]")
    train(None, sets, resume=True)
    first = capsys.readouterr().out
    assert "starting anew" not in first and "no complete checkpoint" not in first
    train(None, sets, resume=True)
    second = capsys.readouterr().out
    assert second.count("skipped (--resume)") == 2
    for table in ("XLT accuracy (%)", "difference to baseline (points)", "Files: "):
        assert table in first and table in second, table
    assert "Throughput (relative to baseline; mean over runs):" in first
    assert "Throughput (relative to baseline; mean over runs, 2 of 2 trained by an earlier call):" in second
    assert second.split("Throughput")[1].count("\nrs-rp ") == 1
