"""Weight averaging (``average:``): the schedule, the running mean, the +avg run it writes, resume
equality, LoRA (only the adapter is averaged) and the errors of bad settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fastrobust.config import AverageConfig
from fastrobust.errors import ConfigError
from fastrobust.training import checkpoint as ckpt
from fastrobust.training.averaging import WeightAverage, averaged_label, check_supported, schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_starts_at_the_fraction_and_ends_at_the_last_step() -> None:
    assert schedule(AverageConfig(start=0.5, every_steps=30), 360) == list(range(180, 361, 30))
    assert schedule(AverageConfig(start=0.0, every_steps=1), 4) == [1, 2, 3, 4]
    assert schedule(AverageConfig(start=0.9, every_steps=5), 10) == [9]
    with pytest.raises(ConfigError, match="no optimizer step"):
        schedule(AverageConfig(), 0)
    with pytest.raises(ConfigError, match="ZeRO-3"):
        check_supported(3)
    check_supported(2)


def test_running_average_is_the_mean_of_the_snapshots_and_keeps_frozen_entries() -> None:
    g = torch.Generator().manual_seed(0)
    snaps = [{"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)} for _ in range(5)]
    avg = WeightAverage(AverageConfig(start=0.0, every_steps=1), 5, ["w"])
    for step, s in enumerate(snaps, 1):
        assert avg.due(step)
        avg.add(step, s)
        assert not avg.due(step)
    final = {"w": snaps[-1]["w"].to(torch.bfloat16), "b": snaps[-1]["b"], "frozen": torch.ones(2)}
    out = avg.averaged_state(final)
    mean = torch.stack([s["w"] for s in snaps]).mean(0)
    torch.testing.assert_close(out["w"].float(), mean.to(torch.bfloat16).float())
    assert out["w"].dtype == torch.bfloat16
    assert out["b"] is final["b"] and out["frozen"] is final["frozen"]  # not trainable: the final values
    torch.testing.assert_close(avg.avg["w"], mean, rtol=1e-6, atol=1e-6)
    assert avg.describe()["snapshots"] == 5 and avg.describe()["first_step"] == 1


def test_no_snapshot_is_an_error() -> None:
    avg = WeightAverage(AverageConfig(start=0.5), 10, ["w"])
    with pytest.raises(ConfigError, match="no snapshot"):
        avg.averaged_state({"w": torch.zeros(1)})


def _overrides(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "seeds=null",
        "parallel=1",
        "name=avg",
        "seed=3",
        "task.name=pawsx",
        "task.source=local",
        f"task.path={data}",
        "task.languages=[en, de]",
        f"model.name_or_path={model}",
        "model.max_length=32",
        "methods=[{kind: baseline}]",
        "optim.batch_size=8",
        "optim.max_steps=8",
        "optim.learning_rate=2e-3",
        "eval.every_steps=4",
        "average={start: 0.5, every_steps: 2}",
        "output.checkpoint_every=2",
        "output.keep_checkpoints=10",
        "output.keep_finished_checkpoints=true",
        "output.tensorboard=false",
        f"output.dir={out}",
        *extra,
    ]


def test_train_writes_the_averaged_run_and_its_weights_are_the_snapshot_mean(
    tiny_pawsx, tmp_path: Path
) -> None:
    from fastrobust.training import train

    data, model = tiny_pawsx
    out = tmp_path / "run"
    result = train(None, _overrides(data, model, out))
    assert set(result["methods"]) == {"baseline", "baseline+avg"}
    s = json.loads((out / "baseline" / "summary.json").read_text())
    a = json.loads((out / "baseline+avg" / "summary.json").read_text())
    assert s["averaged"]["snapshots"] == a["averaged"]["snapshots"] == 3  # steps 4, 6, 8
    assert (a["averaged"]["first_step"], a["averaged"]["last_step"]) == (4, 8)
    assert a["label"] == averaged_label("baseline") and a["kind"] == "baseline"
    assert a["fingerprint"] == s["fingerprint"] and a["losses"] == s["losses"]  # one trajectory
    assert 0 <= a["best_dev_accuracy"] <= 1 and a["averages"]["xlt_avg"] is not None
    assert (out / "baseline+avg" / "report" / "predictions.npz").is_file()
    # the averaged weights are the mean of the checkpointed weights at the snapshot steps
    trainable = load_file(str(out / "baseline+avg" / "model" / "model.safetensors"))
    steps = [ckpt.step_dir(out / "baseline" / "checkpoints", k) for k in (4, 6, 8)]
    snaps = [load_file(str(p / ckpt.MODEL_FILE)) for p in steps]
    for name in ("classifier.weight", "bert.embeddings.word_embeddings.weight"):
        mean = torch.stack([sn[name] for sn in snaps]).mean(0)
        torch.testing.assert_close(trainable[name], mean, rtol=1e-5, atol=1e-6, msg=name)
    card = (out / "baseline+avg" / "model" / "README.md").read_text()
    assert "uniform average of 3 snapshots" in card
    assert "not averaged" in (out / "baseline" / "model" / "README.md").read_text()
    meta = json.loads((out / "baseline+avg" / "model" / "fastrobust.json").read_text())
    assert meta["averaged"]["snapshots"] == 3
    # the comparison of the call holds both evaluations of the one run
    assert "baseline+avg" in (out / "comparison.md").read_text()


def test_resumed_run_reaches_the_same_averaged_weights(tiny_pawsx, tmp_path: Path) -> None:
    from fastrobust.training import train

    data, model = tiny_pawsx
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(None, _overrides(data, model, full))
    train(None, _overrides(data, model, cut))
    # make "cut" a run killed after its step-6 checkpoint (two snapshots in the average)
    for p in list(cut.iterdir()):
        if p.is_file():
            p.unlink()
    for folder in (cut / "baseline", cut / "baseline+avg"):
        for p in folder.iterdir():
            if p.name != "checkpoints":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.rmtree(cut / "baseline+avg")
    for step in (8,):
        shutil.rmtree(ckpt.step_dir(cut / "baseline" / "checkpoints", step))
    state = ckpt.load_state(ckpt.step_dir(cut / "baseline" / "checkpoints", 6) / ckpt.STATE_FILE)
    assert state["average"] == {"count": 2, "taken": [4, 6]}
    train(None, _overrides(data, model, cut), resume=True)
    b = json.loads((cut / "baseline+avg" / "summary.json").read_text())
    a = json.loads((full / "baseline+avg" / "summary.json").read_text())
    assert b["resumed_from_step"] == 6 and b["averaged"]["snapshots"] == 3
    assert b["best_dev_accuracy"] == a["best_dev_accuracy"] and b["averages"] == a["averages"]
    pa = load_file(str(full / "baseline+avg" / "model" / "model.safetensors"))
    pb = load_file(str(cut / "baseline+avg" / "model" / "model.safetensors"))
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], rtol=0, atol=1e-6, msg=k)


def test_lora_averages_only_the_adapter(tiny_pawsx, tmp_path: Path) -> None:
    from fastrobust.training import train

    data, model = tiny_pawsx
    out = tmp_path / "lora"
    train(None, _overrides(data, model, out, "model.lora={r: 4, alpha: 8, dropout: 0.0}"))
    a = json.loads((out / "baseline+avg" / "summary.json").read_text())
    adapter = load_file(str(out / "baseline+avg" / "model" / "adapter_model.safetensors"))
    trained = load_file(str(out / "baseline" / "model" / "adapter_model.safetensors"))
    assert adapter.keys() == trained.keys()
    # the averaged tensors are the adapter's and the saved head's (the trainable ones), nothing frozen
    assert a["averaged"]["parameters"] == len(adapter) < 30
    assert any(not torch.equal(adapter[k], trained[k]) for k in adapter)  # averaged != best checkpoint


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("average={start: 1.0}", "average.start"),
        ("average={start: -0.1}", "average.start"),
        ("average={every_steps: 0}", "average.every_steps"),
        ("average={every: 3}", "average.every"),
    ],
)
def test_bad_average_settings_are_one_line_exit_2(tmp_path: Path, setting: str, message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastrobust", "train", "--set", setting, "--set", f"output.dir={tmp_path}/x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


# --- RobustTrainer -----------------------------------------------------------------------------


def _hf_pairs(data: Path, split: str, lang: str = "en"):
    from datasets import Dataset

    rows = [line.split("\t") for line in (data / f"{split}-{lang}.tsv").read_text().splitlines()]
    return Dataset.from_dict(
        {
            "sentence1": [r[0] for r in rows],
            "sentence2": [r[1] for r in rows],
            "label": [int(r[2]) for r in rows],
        }
    )


def _hf_trainer(data: Path, model_path: Path, out: Path, *, lora: bool = False, **extra):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from fastrobust.integrations.hf import RobustTrainer, lora_model

    tok = AutoTokenizer.from_pretrained(str(model_path))
    torch.manual_seed(0)
    if lora:
        model = lora_model(model_path, 2, r=4, alpha=8, dropout=0.0)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(model_path), num_labels=2)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=6, learning_rate=5e-3,
        save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, seed=0,
        data_seed=0, **extra,
    )  # fmt: skip
    trainer = RobustTrainer(
        model=model,
        args=args,
        train_dataset=_hf_pairs(data, "train"),
        eval_dataset={"en": _hf_pairs(data, "dev"), "de": _hf_pairs(data, "dev", "de")},
        processing_class=tok,
        method="rs-rp",
        sigma=0.1,
        max_length=32,
        average={"start": 0.5, "every_steps": 1},
    )
    return trainer, model


def test_robust_trainer_averages_the_snapshots_and_resumes_to_the_same_average(
    tiny_pawsx, tmp_path: Path
) -> None:
    data, model_path = tiny_pawsx
    trainer, model = _hf_trainer(data, model_path, tmp_path / "full")
    trainer.train()
    assert trainer.averaging.avg.taken == [3, 4, 5, 6]
    last = load_file(str(tmp_path / "full" / "checkpoint-6" / "model.safetensors"))
    avg = trainer.averaging.averaged_state()
    assert set(trainer.averaging.avg.names) == {n for n, p in model.named_parameters() if p.requires_grad}
    final = {k: v for k, v in model.state_dict().items()}
    for name in ("classifier.weight",):
        assert not torch.equal(avg[name], final[name])  # averaged, not the last weights
        assert torch.equal(last[name], final[name].cpu())
    folder = trainer.averaging.save_averaged(trainer, tmp_path / "averaged")
    saved = load_file(str(folder / "model.safetensors"))
    torch.testing.assert_close(saved["classifier.weight"], avg["classifier.weight"])
    assert json.loads((folder / "fastrobust.json").read_text())["averaged"]["snapshots"] == 4
    assert torch.equal(
        dict(model.state_dict())["classifier.weight"], final["classifier.weight"]
    )  # left as trained
    metrics = trainer.evaluate()
    assert {"eval_en_roc_auc", "eval_de_calibrated_accuracy", "eval_de_rate_1", "eval_en_ece"} <= set(metrics)
    # resumed from checkpoint-4 (two snapshots taken), it reaches the same averaged weights
    cut, _ = _hf_trainer(data, model_path, tmp_path / "full")
    cut.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert cut.averaging.avg.taken == [3, 4, 5, 6]
    again = cut.averaging.averaged_state()
    for k in avg:
        torch.testing.assert_close(again[k], avg[k], rtol=0, atol=1e-6, msg=k)


def test_robust_trainer_averages_only_the_lora_adapter(tiny_pawsx, tmp_path: Path) -> None:
    data, model_path = tiny_pawsx
    trainer, model = _hf_trainer(data, model_path, tmp_path / "lora", lora=True)
    trainer.train()
    names = trainer.averaging.avg.names
    assert names and all(("lora_" in n or "modules_to_save" in n) for n in names)


def test_averaging_under_zero3_is_refused_before_anything_starts(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastrobust", "train", "--deepspeed", "configs/ds/zero3.json",
         "--set", "average={start: 0.5}", "--set", f"output.dir={tmp_path}/z3"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 2 and "ZeRO-3" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "method",
    ["{kind: pgd, steps: 1}", "{kind: freelb, steps: 2}", "{kind: rs-rp, sigma: 0.5}", "{kind: rs-da}"],
)
def test_every_method_writes_its_averaged_run(tiny_pawsx, tmp_path: Path, method: str) -> None:
    from fastrobust.training import train

    data, model = tiny_pawsx
    extra = [
        f"methods=[{method}]",
        "optim.max_steps=4",
        "output.save_model=false",
        "output.checkpoint_every=null",
    ]
    if "rs-da" in method:
        extra.append(f"task.synonyms={data / 'synonyms.json'}")
    result = train(None, _overrides(data, model, tmp_path / "m", *extra))
    label = next(k for k in result["methods"] if not k.endswith("+avg"))
    s = result["methods"][f"{label}+avg"]
    assert s["averaged"]["snapshots"] == 2 and s["averages"]["xlt_avg"] is not None  # steps 2 and 4
