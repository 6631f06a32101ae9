"""``fastrobust evaluate MODEL_DIR`` on a tiny BERT saved like the trainer saves it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from fixtures.tiny_models import tiny_classifier, word_tokenizer

from fastrobust.config import TaskConfig
from fastrobust.data import load_task
from fastrobust.errors import ConfigError, DataError
from fastrobust.evaluate import EvalReport, evaluate_task
from fastrobust.evaluate import cli as evaluate_cli

FIX = Path(__file__).parent / "fixtures"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastrobust evaluate")
    evaluate_cli.add_arguments(parser)
    return evaluate_cli.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A trained-model folder: save_pretrained model + tokenizer and fastrobust.json."""
    root = tmp_path_factory.mktemp("run") / "baseline" / "model"
    tok = word_tokenizer("bert")
    model = tiny_classifier(tok, "bert", seed=7)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    task = TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "de", "fr"])
    meta = {"task": task.model_dump(), "max_length": 24}
    (root / "fastrobust.json").write_text(json.dumps(meta))
    return root


def test_evaluate_cli_writes_report(model_dir, tmp_path, capsys):
    assert run_cli([str(model_dir), "--out", str(tmp_path / "rep"), "--batch-size", "4"]) == 0
    files = {p.name for p in (tmp_path / "rep").iterdir()}
    assert files == {
        "report.json", "xlt.csv", "gxlt.csv", "report.md", "gxlt_heatmap.png", "sets.csv", "predictions.npz",
    }  # fmt: skip
    report = EvalReport.from_dict(json.loads((tmp_path / "rep" / "report.json").read_text()))
    assert report.languages == ["en", "de", "fr"] and len(report.gxlt) == 9
    # the same numbers as evaluating in-process with the saved model and the saved max_length
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    task = load_task(TaskConfig(name="pawsx", path=str(FIX / "pawsx"), languages=["en", "de", "fr"]))
    assert evaluate_task(model, tok, task, max_length=24, batch_size=8, device="cpu") == report
    out = capsys.readouterr().out
    assert "XLT accuracy (%)" in out and "| sentence1 \\ sentence2 | en | de | fr | row avg |" in out


def test_evaluate_cli_set_overrides_task(model_dir, tmp_path):
    code = run_cli(
        [
            str(model_dir),
            "--set",
            "task.languages=[en,ja]",
            "--set",
            "task.gxlt=false",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["languages"] == ["en", "ja"] and data["gxlt"] == {}
    assert not (tmp_path / "gxlt.csv").exists()


def test_evaluate_cli_default_out_and_config_file(model_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model:\n  name_or_path: x\nmethods:\n  - kind: baseline\n"
        f"task:\n  name: pawsx\n  path: {FIX / 'pawsx'}\n  languages: [en]\n"
    )
    assert run_cli([str(model_dir), "--config", str(cfg)]) == 0
    default_out = model_dir.parent / "evaluation"
    assert json.loads((default_out / "report.json").read_text())["languages"] == ["en"]


def test_evaluate_cli_errors(model_dir, tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        run_cli([str(tmp_path / "missing")])
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ConfigError, match=r"fastrobust\.json: not found; give --config"):
        run_cli([str(bare)])
    with pytest.raises(DataError, match="the model has 2 labels but task xnli has 3"):
        run_cli(
            [
                str(model_dir),
                "--set",
                "task.name=xnli",
                "--set",
                f"task.path={FIX / 'xnli'}",
                "--set",
                "task.languages=[en,de]",
                "--out",
                str(tmp_path),
            ]
        )
    with pytest.raises(ConfigError, match="task.format"):
        run_cli([str(model_dir), "--set", "task.format=xml"])


def test_fastrobust_command_reports_one_line_and_exit_2(tmp_path, capsys):
    from fastrobust.cli import main

    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastrobust evaluate: error: ") and "fastrobust.json: not found" in err
    assert len(err.splitlines()) == 1
