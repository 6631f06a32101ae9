"""A disk that fills up: one line naming the path, exit 1, and the results rescued as JSON where
they fit — whichever library was writing (safetensors and torch report a failed write with their
own exception types, numpy's zip writer with an OSError that names no file)."""

from __future__ import annotations

import errno
import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import cli_env
from test_train_guards import overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def _small_files() -> None:
    # A real failed write, in the child only: files may not grow past 60 kB (the 100 kB model does
    # not fit, the summary does). The kernel then fails the write with EFBIG, as a full disk does
    # with ENOSPC, once SIGXFSZ (which would kill the process instead) is ignored.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, resource.RLIM_INFINITY))


def test_a_failed_model_write_is_one_line_and_the_summary_is_rescued(tiny_pawsx, tmp_path: Path) -> None:
    data, model = tiny_pawsx
    out = tmp_path / "run"
    sets = overrides(data, model, out, "output.checkpoint_every=1", "output.tensorboard=false")
    proc = subprocess.run(
        [sys.executable, "-m", "fastrobust", "train", *(x for s in sets for x in ("--set", s))],
        capture_output=True,
        text=True,
        env=cli_env(),
        preexec_fn=_small_files,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]  # after the progress bars
    model_dir = out / "baseline" / "model"
    assert line == (
        f"fastrobust train: error: method baseline: cannot write {model_dir}: File too large [errno 27]; "
        f"the results were saved to {out / 'baseline' / 'summary.json'}"
    )
    rescued = json.loads((out / "baseline" / "summary.json").read_text())
    assert rescued["status"].startswith("incomplete: cannot write") and "de" in rescued["report"]["xlt"]
    # the checkpoints could not be written either: a warning each, naming the file, and training went on
    step_file = out / "baseline" / "checkpoints" / "step-000001.tmp" / "model.safetensors"
    assert (
        f"not written (cannot write {step_file}: File too large [errno 27]); training goes on" in proc.stdout
    )
    assert "Traceback" not in proc.stderr


def test_a_write_error_without_a_file_name_names_the_file(tiny_pawsx, tmp_path: Path, monkeypatch) -> None:
    from fastrobust.errors import OutputError
    from fastrobust.evaluate.predictions import TaskPredictions
    from fastrobust.training import train

    def full(self, path):  # what numpy's zip writer raises on a full disk: no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TaskPredictions, "save", full)
    data, model = tiny_pawsx
    out = tmp_path / "run"
    with pytest.raises(OutputError) as info:
        train(None, overrides(data, model, out, "output.save_model=false", "output.tensorboard=false"))
    where = out / "baseline" / "report" / "predictions.npz"
    assert f"cannot write {where}: No space left on device [errno 28]" in str(info.value)
    assert json.loads((out / "baseline" / "summary.json").read_text())["status"].startswith("incomplete")


def test_library_write_errors_become_os_errors_naming_the_path(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    from fastrobust.fileio import as_os_error

    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    err = as_os_error(full, tmp_path / "model.safetensors")
    assert (err.errno, err.strerror, err.filename) == (
        28,
        "No space left on device",
        str(tmp_path / "model.safetensors"),
    )
    torn = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert as_os_error(torn, tmp_path).errno == errno.EIO
    assert as_os_error(RuntimeError("shapes do not match"), tmp_path) is None
    assert as_os_error(ValueError("no"), tmp_path) is None
