"""The real ``fastrobust`` entry point: fast help, a help that suffices, errors before work starts."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
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
        "--method rs-da",
        "task.synonyms=synonyms.json",
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


FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-model folder as the trainer saves it (tiny BERT, tokenizer, fastrobust.json)."""
    from fixtures.tiny_models import tiny_classifier, word_tokenizer

    from fastrobust.config import TaskConfig

    root = tmp_path_factory.mktemp("run") / "baseline" / "model"
    tok = word_tokenizer("bert")
    tiny_classifier(tok, "bert", seed=7).save_pretrained(root)
    tok.save_pretrained(root)
    task = TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "de"])
    (root / "fastrobust.json").write_text(json.dumps({"task": task.model_dump(), "max_length": 24}))
    return root


def _one_line_error(res, command: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastrobust {command}: error: "), lines
    return lines[0]


@pytest.mark.parametrize("command", ["evaluate", "certify"])
def test_unusable_device_is_one_line(model_dir: Path, tmp_path: Path, command: str) -> None:
    import torch

    # "cuda" itself on a machine without CUDA; an index no machine has otherwise
    device = "cuda" if not torch.cuda.is_available() else "cuda:64"
    line = _one_line_error(run_cli(command, model_dir, "--device", device, "--out", tmp_path), command)
    assert f"--device: '{device}' requested but" in line


@pytest.mark.parametrize("command", ["evaluate", "certify"])
def test_malformed_device_is_one_line(
    model_dir: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    from fastrobust.cli import main

    assert main([command, str(model_dir), "--device", "gpu0", "--out", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        line
        == f"fastrobust {command}: error: --device: 'gpu0' is not a torch device (e.g. cpu, cuda, cuda:1)"
    )


def test_evaluate_batch_size_zero_is_refused(model_dir: Path, tmp_path: Path) -> None:
    line = _one_line_error(run_cli("evaluate", model_dir, "--batch-size", "0", "--out", tmp_path), "evaluate")
    assert "--batch-size: must be >= 1, got 0" in line


def test_certify_prints_no_library_progress_bars(model_dir: Path, tmp_path: Path) -> None:
    res = run_cli(
        "certify",
        model_dir,
        "--n0",
        "4",
        "-n",
        "8",
        "--max-examples",
        "3",
        "--out",
        tmp_path,
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Certified accuracy" in res.stdout
    for bar in ("tokenize", "Map", "examples/s", "%|"):
        assert bar not in res.stderr, res.stderr


def test_evaluate_follows_umask_shows_progress_and_sizes_gxlt(model_dir: Path, tmp_path: Path) -> None:
    umask = 0o002  # a team folder: group-writable (mkstemp alone gives 0600 whatever the umask)
    out = tmp_path / "rep"
    res = run_cli(
        "evaluate",
        model_dir,
        "--out",
        out,
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--set",
        "task.gxlt_pairs=with_train_language",
        "--set",
        "task.max_gxlt_examples=5",
        preexec_fn=lambda: os.umask(umask),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    files = sorted(out.iterdir())
    assert {p.name for p in files} >= {"report.json", "report.md", "xlt.csv", "gxlt_heatmap.png"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    report = json.loads((out / "report.json").read_text())
    n = report["xlt_sizes"]["en"]
    assert n > 5 and report["xlt_sizes"]["de"] == n
    # only the pairs with English, each capped at 5 examples
    assert report["gxlt_sizes"] == {"en": {"en": 5, "de": 5}, "de": {"en": 5}}
    # one bar over every example predicted: 2 test sets + 3 capped pair sets
    assert "test: 100%" in res.stderr and f"{2 * n + 15}/{2 * n + 15}" in res.stderr, res.stderr[-1000:]


# ---- pre-flight checks of `fastrobust train` (each a one-line error naming the field) ----------


def _train_args(data: Path, model: Path | str, out: Path, *extra: str) -> list[str]:
    sets = [
        "task.name=pawsx",
        f"task.path={data}",
        "task.languages=[en]",
        "task.gxlt=false",
        f"model.name_or_path={model}",
        "model.max_length=32",
        "methods=[{kind: baseline}]",
        "optim.batch_size=8",
        "optim.max_steps=1",
        "output.tensorboard=false",
        f"output.dir={out}",
        *extra,
    ]
    return ["train", *(x for s in sets for x in ("--set", s))]


def _model_without_tokenizer(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


def _decoder_without_pad(src: Path, dst: Path) -> Path:
    """A tiny GPT-2 whose tokenizer, like GPT-2's, has no pad token."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(src)
    tok.pad_token = None
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(cfg).save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no_tokenizer", "model.name_or_path: {model} has no tokenizer files"),
        ("missing_path", "model.name_or_path: {model}: no such folder"),
        ("too_long", "model.max_length: 128 is above the 64 positions {model} supports"),
        ("no_pad", "model.name_or_path: the tokenizer of {model} has no pad token"),
        ("not_writable", "output.dir: {out} is not writable"),
    ],
)
def test_train_preflight_errors(
    tiny_pawsx: tuple[Path, Path], tmp_path: Path, case: str, needle: str
) -> None:
    data, model = tiny_pawsx
    out, extra = tmp_path / "out", []
    if case == "no_tokenizer":
        model = _model_without_tokenizer(model, tmp_path / "bare")
    elif case == "missing_path":
        model = tmp_path / "no" / "such" / "model"
    elif case == "too_long":
        extra = ["model.max_length=128"]
    elif case == "no_pad":
        model = _decoder_without_pad(model, tmp_path / "gpt2")
    elif case == "not_writable":
        (tmp_path / "file").write_text("a file, not a folder")
        out = tmp_path / "file" / "out"  # fails for root too, unlike a chmod'ed folder
    line = _one_line_error(run_cli(*_train_args(data, model, out, *extra)), "train")
    assert needle.format(model=model, out=out) in line, line


def test_print_config_is_the_config_the_run_uses(tmp_path: Path) -> None:
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    res = run_cli(
        "train", "--seeds", "3,4", "--parallel", "2", "-m", "pgd", "--deepspeed", ds, "--print-config"
    )
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["seeds"] == [3, 4] and cfg["seed"] == 3 and cfg["parallel"] == 2
    assert cfg["deepspeed"]["config"] == str(ds)
    assert [m["kind"] for m in cfg["methods"]] == ["pgd"]
