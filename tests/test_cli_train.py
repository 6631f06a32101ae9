"""``fastrobust train`` argument handling and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastrobust.cli import build_parser, main


def test_train_arguments_parse() -> None:
    args = build_parser().parse_args(
        [
            "--local_rank=1",
            "train",
            "--config",
            "x.yaml",
            "--set",
            "a=1",
            "--set",
            "b=2",
            "--method",
            "pgd",
            "--method",
            "rs-rp",
            "--deepspeed",
            "ds.json",
            "--resume",
        ]
    )
    assert args.config == "x.yaml" and args.overrides == ["a=1", "b=2"]
    assert args.methods == ["pgd", "rs-rp"] and args.deepspeed == "ds.json" and args.resume
    # torchrun-style --local-rank after the subcommand is accepted too
    assert build_parser().parse_args(["train", "--local-rank", "0"]).config is None


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--config", "/nonexistent/cfg.yaml"], "config file not found"),
        (["train", "--set", "optim.learnin_rate=1"], "optim.learnin_rate: unknown key"),
        (["train", "--set", "optim.batch_size=-1"], "optim.batch_size"),
        (["train", "--set", "nonsense"], "expected key=value"),
        (["train", "--method", "nope"], "--method nope: no such method section"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastrobust train: error:") and needle in err
    assert len(err.splitlines()) == 1


def test_exit_code_in_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochs: -3\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fastrobust", "train", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.epochs" in lines[0] and str(bad) in lines[0]


def test_fastrobust_train_is_the_function_after_a_submodule_import() -> None:
    import fastrobust
    import fastrobust.training.run  # noqa: F401  (binds the package to fastrobust.training only)
    from fastrobust.errors import ConfigError
    from fastrobust.training import train

    assert fastrobust.train is train
    with pytest.raises(ConfigError, match="optim.batch_size"):
        fastrobust.train(None, ["optim.batch_size=-1"])
