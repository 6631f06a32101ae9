"""LoRA (PEFT) with every method: ``RobustTrainer`` on a ``PeftModel`` and ``fastrobust train`` with
``model.lora``. Only the adapter (and the modules PEFT saves in full) trains, the perturbation
reaches the frozen embedding table's output, the saved adapter folder reloads to the same logits,
and ``fastrobust evaluate`` on it gives the training run's test predictions.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastrobust.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {
    "baseline": {"kind": "baseline"},
    "pgd": {"kind": "pgd", "steps": 2, "epsilon": 1.0, "step_size": 0.5, "init_magnitude": 0.2},
    "freelb": {"kind": "freelb", "steps": 2, "epsilon": 1.0, "step_size": 0.5, "init_magnitude": 0.2},
    "rs-rp": {"kind": "rs-rp", "sigma": 0.5},
    "rs-da": {"kind": "rs-da"},
}
# the methods that add a perturbation to the embedding lookup (RS-DA changes the words instead)
EMBEDDING_METHODS = ("pgd", "freelb", "rs-rp")


def _pairs(data: Path, split: str, lang: str = "en"):
    """A ``datasets.Dataset`` of (sentence1, sentence2, label) read from the fixture's TSV."""
    from datasets import Dataset

    rows = [line.split("\t") for line in (data / f"{split}-{lang}.tsv").read_text().splitlines()]
    return Dataset.from_dict(
        {
            "sentence1": [r[0] for r in rows],
            "sentence2": [r[1] for r in rows],
            "label": [int(r[2]) for r in rows],
        }
    )


def _args(out: Path, **extra):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=4,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **extra,
    )


class EmbeddingSpy:
    """Records, in call order, every word-embedding lookup E[input_ids] and every ``inputs_embeds``
    the model's embedding layer receives (None on the plain ``input_ids`` path)."""

    def __init__(self, model: torch.nn.Module) -> None:
        base = model.get_input_embeddings()
        container = next(m for m in model.modules() if any(c is base for c in m.children()))
        self.events: list[tuple[str, torch.Tensor | None]] = []
        self.handles = [
            base.register_forward_hook(
                lambda _m, _i, out: self.events.append(("lookup", out.detach().clone()))
            ),
            container.register_forward_pre_hook(self._pre, with_kwargs=True),
        ]

    def _pre(self, _module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        self.events.append(("fed", None if x is None else x.detach().clone()))

    def fed_with_lookup(self) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """(inputs_embeds, the latest lookup before it) of every forward."""
        pairs, last = [], None
        for kind, value in self.events:
            if kind == "lookup":
                last = value
            else:
                pairs.append((value, last))
        return pairs

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _logits(model, tokenizer, data: Path) -> torch.Tensor:
    rows = _pairs(data, "dev")
    enc = tokenizer(list(rows["sentence1"]), list(rows["sentence2"]), padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**enc).logits


# full fine-tuning of baseline and RS-DA through RobustTrainer: tests/test_integrations_hf.py
CASES = [(name, True) for name in METHODS] + [(name, False) for name in EMBEDDING_METHODS]


def _accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


@pytest.mark.parametrize(("name", "lora"), CASES, ids=[f"{n}-{'lora' if lo else 'full'}" for n, lo in CASES])
def test_robust_trainer_from_a_plain_script(tiny_pawsx, tmp_path: Path, name: str, lora: bool) -> None:
    """A script's RobustTrainer run (datasets.Dataset of pairs, 2 accumulation steps): finite losses;
    with a PeftModel only the adapter and head change while the perturbation still reaches the frozen
    embeddings; ``save_model`` + ``from_pretrained`` give the trained model's logits."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastrobust.integrations.hf import RobustTrainer, lora_model

    data, model_path = tiny_pawsx
    tok = AutoTokenizer.from_pretrained(str(model_path))
    torch.manual_seed(0)
    if lora:
        model = lora_model(model_path, 2, r=4, alpha=8, dropout=0.0)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(model_path), num_labels=2)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    synonyms = json.loads((data / "synonyms.json").read_text())
    trainer = RobustTrainer(
        model=model,
        args=_args(tmp_path / "run"),
        train_dataset=_pairs(data, "train"),
        processing_class=tok,
        method=METHODS[name],
        task_synonyms=synonyms if name == "rs-da" else None,
        max_length=32,
        compute_metrics=_accuracy,
    )
    spy = EmbeddingSpy(model)
    trainer.train()
    spy.remove()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)

    after = dict(model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k].detach())}
    if lora:
        assert trainable and all(("lora_" in k or "modules_to_save" in k) for k in trainable)
        assert changed <= trainable  # the base model, its embedding table included, stays frozen
        assert any("lora_B" in k for k in changed) and any("classifier" in k for k in changed)
    else:
        assert any("word_embeddings" in k for k in changed)
    forwards = spy.fed_with_lookup()
    # 8 micro-batches; PGD/FreeLB with 2 steps: 3 / 2 forwards each (the evaluation is not spied)
    assert len(forwards) == 8 * {"pgd": 3, "freelb": 2}.get(name, 1)
    if name in EMBEDDING_METHODS:
        # every training forward got inputs_embeds = the lookup + a perturbation that is zero
        # exactly at the padding
        for x, e in forwards:
            assert x is not None and e is not None and x.shape == e.shape
            moved = (x - e).abs().amax(dim=-1) > 0
            assert moved.any()
        assert any(not bool(moved.all()) for x, e in forwards for moved in [(x - e).abs().amax(-1) > 0])
    else:
        assert all(x is None for x, _ in forwards)  # baseline / RS-DA: the plain input_ids forward

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    assert (out / "fastrobust.json").is_file()
    if lora:
        assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
        assert not (out / "model.safetensors").exists()  # the adapter, not a copy of the base model
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out))
    torch.testing.assert_close(_logits(reloaded, tok, data), _logits(model, tok, data), rtol=0, atol=1e-6)
    if lora:
        # the accuracy (and loss) Trainer reports for the trained model are the reloaded adapter's
        ours = trainer.evaluate(_pairs(data, "dev"))
        again = RobustTrainer(
            model=reloaded, args=_args(tmp_path / "again"), processing_class=tok, compute_metrics=_accuracy
        )
        theirs = again.evaluate(_pairs(data, "dev"))
        assert theirs["eval_accuracy"] == ours["eval_accuracy"]
        assert theirs["eval_loss"] == pytest.approx(ours["eval_loss"], abs=1e-6)


def test_a_hand_built_peft_model_trains_only_its_adapter(tiny_pawsx, tmp_path: Path) -> None:
    """RobustTrainer with a PeftModel built with PEFT's own API (no fastrobust helper), PGD."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastrobust.integrations.hf import RobustTrainer

    data, model_path = tiny_pawsx
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(model_path), num_labels=2)
    model = get_peft_model(
        base, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, lora_alpha=4, target_modules=["query", "key"])
    )
    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    trainer = RobustTrainer(
        model=model,
        args=_args(tmp_path / "run", max_grad_norm=1.0),
        train_dataset=_pairs(data, "train"),
        processing_class=AutoTokenizer.from_pretrained(str(model_path)),
        method="pgd",
        steps=1,
        epsilon=0.5,
    )
    trainer.train()
    for k, v in model.named_parameters():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert any("key.lora_B" in k and v.abs().sum() > 0 for k, v in model.named_parameters())


# --- fastrobust train with model.lora ----------------------------------------------------------


def _overrides(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    methods = json.dumps(list(METHODS.values()))
    return [
        "task.name=pawsx", "task.source=local", f"task.path={data}", "task.languages=[en, de]",
        "task.gxlt=false", f"task.synonyms={data / 'synonyms.json'}",
        f"model.name_or_path={model}", "model.max_length=32",
        "model.lora={r: 4, alpha: 8, dropout: 0.0}",
        f"methods={methods}",
        "optim.batch_size=8", "optim.micro_batch_size=4", "optim.max_steps=4", "optim.learning_rate=5e-3",
        "eval.every_steps=2", "output.checkpoint_every=4", "output.keep_finished_checkpoints=true",
        "output.tensorboard=false", f"output.dir={out}",
        "seed=1", "seeds=null", "parallel=1", *extra,
    ]  # fmt: skip


def test_fastrobust_train_with_lora_and_evaluate_the_adapter(tiny_pawsx, tmp_path: Path) -> None:
    """Every method trains a LoRA adapter; the model folder is the adapter (with a card saying so);
    the base weights in the last checkpoint are the base checkpoint's; ``fastrobust evaluate`` on
    the adapter folder reproduces the run's test predictions."""
    from safetensors.torch import load_file

    from fastrobust.training import train
    from fastrobust.training.model_card import parse_model_card

    data, model_path = tiny_pawsx
    out = tmp_path / "run"
    result = train(None, _overrides(data, model_path, out))
    assert sorted(result["methods"]) == sorted(METHODS)
    base = load_file(str(model_path / "model.safetensors"))
    for label, summary in result["methods"].items():
        folder = out / label / "model"
        assert sorted(p.name for p in folder.iterdir()) == [
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "fastrobust.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
        lora = summary["lora"]
        assert lora["r"] == 4 and lora["target_modules"] == ["query", "value"]
        assert "bert.pooler.dense" in lora["modules_to_save"]  # the MLM checkpoint has no pooler
        assert 0 < lora["trainable_parameters"] < lora["total_parameters"] / 5
        assert json.loads((folder / "fastrobust.json").read_text())["lora"] == lora
        meta, body = parse_model_card((folder / "README.md").read_text())
        assert meta["library_name"] == "peft" and "lora" in meta["tags"]
        assert "## LoRA adapter" in body and "| r | 4 |" in body
        # frozen base weights: the last checkpoint (all parameters of the PEFT model) holds them unchanged
        last = load_file(str(out / label / "checkpoints" / "step-000004" / "model.safetensors"))
        for key, value in base.items():
            if not key.startswith("bert."):
                continue  # the masked-LM head is not part of the classifier
            name = "base_model.model." + key
            layer = name.rsplit(".", 1)[0] + ".base_layer." + name.rsplit(".", 1)[1]
            found = name if name in last else layer
            assert found in last, key
            torch.testing.assert_close(last[found], value, rtol=0, atol=0, msg=found)
        assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in last.items())

    label = "pgd"
    # in a process of its own: transformers' load report goes to the stderr of the process
    cmd = [
        sys.executable,
        "-m",
        "fastrobust",
        "evaluate",
        str(out / label / "model"),
        "--out",
        str(tmp_path / "eval"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the base checkpoint's missing head and pooler, which the adapter then loads, are not reported
    assert "MISSING" not in proc.stdout + proc.stderr
    ours = np.load(out / label / "report" / "predictions.npz")
    theirs = np.load(tmp_path / "eval" / "predictions.npz")
    assert sorted(ours.files) == sorted(theirs.files)
    for key in ours.files:
        if ours[key].dtype.kind == "f":  # the class probabilities of every test example
            np.testing.assert_allclose(theirs[key], ours[key], rtol=0, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(theirs[key], ours[key], err_msg=key)


def test_lora_config_errors_name_the_field(tiny_pawsx, tmp_path: Path) -> None:
    from cli_run import run_cli

    from fastrobust.integrations.hf import lora_model
    from fastrobust.training import train

    data, model_path = tiny_pawsx
    res = run_cli(
        "train",
        *(x for o in _overrides(data, model_path, tmp_path / "a", "model.lora.r=0") for x in ("--set", o)),
    )
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = res.stderr.strip().splitlines()
    assert "model.lora.r" in line, line
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules: .*nonexistent"):
        train(None, _overrides(data, model_path, tmp_path / "b", "model.lora.target_modules=[nonexistent]"))
    with pytest.raises(ConfigError, match=r"lora_model: dropout"):
        lora_model(model_path, 2, dropout=1.5)


def test_docs_lora_example_runs(tiny_pawsx, tmp_path: Path) -> None:
    """The LoRA example of docs/integrations.md runs as written (tiny model, hub-layout folder) and
    its reloaded adapter gives the trained model's logits."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "integrations.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    example = next(b for b in blocks if "lora_model(" in b and "trainer.train()" in b)
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    env = dict(
        os.environ,
        MODEL=str(tiny_pawsx[1]),
        DATA=str(root / "tests" / "fixtures" / "hub_pawsx"),
        OUT=str(tmp_path / "out"),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, timeout=300, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("reloaded adapter"))
    assert float(line.split()[-1]) < 1e-5, line
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert (
        json.loads((tmp_path / "out" / "adapter" / "fastrobust.json").read_text())["task"]["name"] == "pawsx"
    )


def test_evaluate_a_three_label_adapter_folder(tmp_path: Path, capsys) -> None:
    """An XNLI adapter (3-label head over a 2-label base checkpoint) evaluates to the in-memory
    model's probabilities; a 2-label adapter on the 3-label task is refused, naming MODEL_DIR."""
    from fixtures.tiny_models import tiny_classifier, word_tokenizer

    from fastrobust.cli import main
    from fastrobust.config import TaskConfig
    from fastrobust.data import load_task
    from fastrobust.evaluate.predict import predict_task
    from fastrobust.evaluate.predictions import TaskPredictions
    from fastrobust.integrations.hf import lora_model

    fixtures = Path(__file__).parent / "fixtures"
    tok = word_tokenizer("bert")
    base = tmp_path / "base"
    tiny_classifier(tok, "bert", num_labels=2, seed=3, init_range=0.5).save_pretrained(base)
    tok.save_pretrained(base)
    task_cfg = TaskConfig(name="xnli", path=str(fixtures / "xnli"), languages=["en", "de"])
    for labels in (3, 2):
        torch.manual_seed(labels)
        model = lora_model(base, labels, r=2, alpha=4, dropout=0.0).eval()
        with torch.no_grad():  # a non-zero update, so that the adapter matters
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        folder = tmp_path / f"adapter-{labels}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        (folder / "fastrobust.json").write_text(json.dumps({"task": task_cfg.model_dump(), "max_length": 24}))
        if labels == 2:
            assert main(["evaluate", str(folder), "--out", str(tmp_path / "eval-2")]) == 2
            assert (
                "MODEL_DIR: the adapter's classifier head has 2 labels but the task has 3"
                in capsys.readouterr().err
            )
            continue
        assert main(["evaluate", str(folder), "--out", str(tmp_path / "eval")]) == 0
        task = load_task(task_cfg)
        ours = predict_task(model, tok, task, max_length=24, batch_size=8, device="cpu")
        theirs = TaskPredictions.load(tmp_path / "eval" / "predictions.npz")
        assert theirs.label_names == ["entailment", "neutral", "contradiction"]
        for lang in task.languages:
            assert theirs.xlt[lang].probs.shape[1] == 3
            np.testing.assert_allclose(theirs.xlt[lang].probs, ours.xlt[lang].probs, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(theirs.xlt[lang].labels, ours.xlt[lang].labels)


def test_adapter_counts_read_the_real_sizes_of_zero3_partitioned_parameters() -> None:
    """ZeRO-3 replaces a partitioned parameter's data by an empty placeholder and keeps its size in
    ``ds_numel``: the counts of summary.json and the model card must be the model's, not the shard's."""
    from types import SimpleNamespace

    from fastrobust.training.lora import lora_summary

    class Partitioned(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            config = SimpleNamespace(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query"])
            config.modules_to_save, config.base_model_name_or_path = None, "m"
            self.peft_config = {"default": config}
            self.base = torch.nn.Parameter(torch.empty(0), requires_grad=False)
            self.base.ds_numel = 24_386
            self.adapter = torch.nn.Parameter(torch.empty(0))
            self.adapter.ds_numel = 2_146
            self.head = torch.nn.Parameter(torch.zeros(2))  # small enough to stay whole

    summary = lora_summary(Partitioned())
    assert (summary["trainable_parameters"], summary["total_parameters"]) == (2_148, 26_534)
