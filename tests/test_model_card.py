"""Every saved model folder gets a Hugging Face model card whose numbers are the run's report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import one_torch_thread
from safetensors.torch import load_file

from fastrobust.training.model_card import command_line, parse_model_card


@pytest.fixture(scope="module")
def run(tiny_pawsx, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastrobust.training import train

    data, model = tiny_pawsx
    out = tmp_path_factory.mktemp("card") / "run"
    with one_torch_thread():
        train(
            None,
            [
                "seeds=null",  # one run per method (the demo config underneath lists seeds)
                "parallel=1",
                "name=cardtest",
                "task.name=pawsx",
                "task.source=local",
                f"task.path={data}",
                "task.languages=[en, de, fr]",
                f"model.name_or_path={model}",
                "model.max_length=32",
                "methods=[{kind: baseline}, {kind: pgd, steps: 1, epsilon: 0.5, step_size: 0.2}]",
                "optim.batch_size=8",
                "optim.max_steps=3",
                "optim.learning_rate=1e-3",
                "output.tensorboard=false",
                f"output.dir={out}",
            ],
        )
    return out


def _table(body: str, heading: str) -> dict[str, list[str]]:
    """Rows of the first markdown table after ``heading``: first cell -> the other cells."""
    part = body.split(heading, 1)[1]
    rows = {}
    for line in part.splitlines():
        if line.startswith("## ") and rows:
            break
        if line.startswith("|") and not set(line) <= set("|-: "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("label", ["baseline", "pgd"])
def test_card_front_matter_and_numbers_equal_the_report(run: Path, tiny_pawsx, label: str) -> None:
    folder = run / label / "model"
    meta, body = parse_model_card((folder / "README.md").read_text(encoding="utf-8"))
    summary = json.loads((run / label / "summary.json").read_text())
    report = json.loads((run / label / "report" / "report.json").read_text())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == str(tiny_pawsx[1])
    assert meta["language"] == ["en", "de", "fr"]
    assert meta["datasets"] == ["google-research-datasets/paws-x"]  # a local copy of the preset's data
    assert meta["tags"] == ["fastrobust", label]
    # XLT: every language's accuracy (%, 2 decimals) and the average are those of the run's report
    xlt = _table(body, "(XLT)")
    for lang, acc in summary["xlt"].items():
        assert float(xlt[lang][0]) == pytest.approx(round(100 * acc, 2), abs=1e-9)
        assert int(xlt[lang][1]) == report["xlt_sizes"][lang]
    assert float(xlt["**average**"][0]) == pytest.approx(round(100 * summary["averages"]["xlt_avg"], 2))
    # G-XLT summary (9 ordered pairs of en/de/fr)
    assert "over 9 ordered language pairs" in body
    gx = _table(body, "(G-XLT)")
    a = summary["averages"]
    for row, key in (
        ("same-language pairs", "gxlt_same_lang_avg"),
        ("cross-language pairs", "gxlt_cross_lang_avg"),
        ("all pairs", "gxlt_avg"),
        ("gap (same - cross)", "gap"),
    ):
        assert float(gx[row][0]) == pytest.approx(round(100 * a[key], 2), abs=1e-9), row
    training = _table(body, "## Training")
    assert int(training["optimizer steps"][0]) == summary["steps"] == 3
    best = f"{100 * summary['best_dev_accuracy']:.2f} at step {summary['best_step']}"
    assert training["best dev accuracy (%)"][0] == best
    assert (
        "labels (id order)" in training
        and training["labels (id order)"][0] == "0 = not_paraphrase, 1 = paraphrase"
    )
    import fastrobust

    assert f"fastrobust {fastrobust.__version__}" in body and "```yaml" in body and "name: cardtest" in body


def test_card_states_the_resolved_scales(run: Path, tiny_pawsx) -> None:
    """PGD with relative scales: epsilon 0.5 x RMS of the initial embedding table, as trained."""
    _, body = parse_model_card((run / "pgd" / "model" / "README.md").read_text(encoding="utf-8"))
    init = load_file(str(tiny_pawsx[1] / "model.safetensors"))
    table = next(v for k, v in init.items() if k.endswith("word_embeddings.weight"))
    rms = float(table.float().pow(2).mean().sqrt())
    method = _table(body, "## Method")
    assert float(method["resolved embedding_rms"][0]) == pytest.approx(rms, rel=1e-5)
    assert float(method["resolved epsilon"][0]) == pytest.approx(0.5 * rms, rel=1e-5)
    assert float(method["resolved step_size"][0]) == pytest.approx(0.2 * rms, rel=1e-5)
    assert method["kind"] == ["pgd"] and method["scale_mode"] == ["relative"]


def test_card_parsing_and_command_line() -> None:
    with pytest.raises(ValueError, match="no YAML front matter"):
        parse_model_card("# title\n")
    with pytest.raises(ValueError, match="not closed"):
        parse_model_card("---\na: 1\n")
    meta, body = parse_model_card("---\na: 1\n---\n# t\n")
    assert meta == {"a": 1} and body == "# t\n"
    assert (
        command_line(["/usr/bin/fastrobust", "train", "--config", "a b.yaml"])
        == "fastrobust train --config 'a b.yaml'"
    )
    assert command_line(["/x/fastrobust/__main__.py", "train"]) == "fastrobust train"
    assert re.fullmatch(r"python \S+ --x", command_line(["script.py", "--x"]))


def test_relative_scales_at_an_encoder_layer_are_stated_as_the_per_batch_rule() -> None:
    from fastrobust.config import load_config
    from fastrobust.methods import build_method
    from fastrobust.training.model_card import resolved_scales

    sections = (
        "methods=[{kind: pgd, layer: 2, epsilon: 0.25, step_size: 0.1},"
        " {kind: rs-rp, layer: 1, sigma: 0.5}, {kind: pgd, label: abs, layer: 2, epsilon: 0.25,"
        " step_size: 0.1, scale_mode: absolute}]"
    )
    pgd, noise, absolute = (build_method(m) for m in load_config(None, [sections]).methods)
    unit = "x the RMS of layer {}'s hidden states over real tokens (per batch)"
    assert resolved_scales(pgd) == {
        "epsilon": f"0.25 {unit.format(2)}",
        "step_size": f"0.1 {unit.format(2)}",
        "init_magnitude": f"0 {unit.format(2)}",
    }
    assert resolved_scales(noise) == {"sigma": f"0.5 {unit.format(1)}"}
    # absolute scales need no unit: the numbers are what the layer's states get
    assert resolved_scales(absolute)["epsilon"] == pytest.approx(0.25)
