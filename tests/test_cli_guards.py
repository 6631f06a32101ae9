"""The real ``fastrobust`` entry point: fast help, a help that suffices, errors before work starts."""

from __future__ import annotations

import subprocess
import sys

import yaml
from cli_run import cli_env, run_cli


def test_top_level_help_is_fast_and_imports_nothing_heavy() -> None:
    res = run_cli("--help")
    assert res.returncode == 0 and "train" in res.stdout and "evaluate" in res.stdout
    # CPU time of the child, not wall time: other processes on the machine do not inflate it
    assert res.cpu_seconds < 0.5, res.cpu_seconds
    code = (
        "import sys; from fastrobust.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'datasets', 'transformers', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_train_help_is_enough_to_run_one_method_on_your_data() -> None:
    res = run_cli("train", "--help")
    assert res.returncode == 0
    text = res.stdout
    for needle in (
        "task.path",
        "model.name_or_path",
        "train-en.tsv",
        "--method pgd",
        "baseline, pgd",
        "rs-rp",
        "rs-da",
        "freelb",
        "pawsx_xlmr_base",
        "xnli_mbert",
        "docs/data.md",
        "--print-config",
        "--overwrite",
    ):
        assert needle in text, needle
    assert res.cpu_seconds < 0.5, res.cpu_seconds


def test_print_config_shows_every_key_of_a_recipe_with_overrides() -> None:
    res = run_cli("train", "--config", "pawsx_mbert", "--set", "task.path=/data/x", "--print-config")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["name"] == "pawsx_mbert" and cfg["task"]["path"] == "/data/x"
    assert "keep_checkpoints" in cfg["output"] and "warmup_ratio" in cfg["optim"]
