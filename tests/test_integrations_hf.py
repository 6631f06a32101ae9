"""``fastrobust.integrations.hf``: RobustTrainer (transformers.Trainer) runs the same method code.

With ``data_order="fastrobust"`` and the per-micro-batch re-seeding, a RobustTrainer run sees the
same batches and the same random draws (dropout, noise, PGD/FreeLB starts, RS-DA substitutions)
as ``fastrobust train``, so the per-step losses agree to float noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_run import check_exit, distributed_env

from fastrobust.errors import ConfigError, DataError
from fastrobust.integrations.hf import (
    EmbeddingNoiseCallback,
    RobustTrainer,
    resolve_method,
    training_arguments,
)
from fastrobust.training.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(data: Path, model: Path, out: Path, method: str, *extra: str):
    from fastrobust.training.run import resolve_config

    return resolve_config(
        None,
        [
            "seed=3",
            "seeds=null",  # one run (the demo config underneath lists 3 seeds)
            "parallel=1",
            "task.name=pawsx",
            "task.source=local",
            f"task.path={data}",
            "task.languages=[en, de]",
            "task.gxlt=false",
            f"model.name_or_path={model}",
            "model.max_length=32",
            f"methods=[{method}]",
            "optim.batch_size=8",
            "optim.micro_batch_size=4",
            "optim.max_steps=10",  # 8 steps per epoch: crosses an epoch (RS-DA re-draws)
            "optim.learning_rate=2e-3",
            "optim.warmup_ratio=0.25",
            "eval.every_steps=10",
            "output.log_every=1",
            "output.tensorboard=false",
            "output.save_model=false",
            f"output.dir={out}",
            *extra,
        ],
    )


def _model(path: Path, seed: int = 3, **config):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)  # as fastrobust train: same seed, same classifier head
    return AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2, **config)


def _robust_trainer(cfg, model_path: Path, out: Path, method, *, model=None, callbacks=None, **args):
    from transformers import AutoTokenizer

    from fastrobust.data import load_task

    task = load_task(cfg.task)
    args = {"logging_steps": 1, "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, **args}
    targs = training_arguments(cfg, out, **args)
    return RobustTrainer(
        model=model if model is not None else _model(model_path),
        args=targs,
        train_dataset=task.train,
        processing_class=AutoTokenizer.from_pretrained(str(model_path)),
        method=method,
        task_synonyms=task.synonyms,
        max_length=cfg.model.max_length,
        data_order="fastrobust",
        callbacks=callbacks,
    )


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


METHODS = [
    "{kind: baseline}",
    "{kind: pgd, steps: 2, init_magnitude: 0.2, epsilon: 1.0, step_size: 0.5}",
    "{kind: freelb, steps: 2, init_magnitude: 0.2, epsilon: 1.0, step_size: 0.5}",
    "{kind: rs-rp, sigma: 0.5}",
    "{kind: rs-rp, sigma: 0.5, sigma_mode: absolute, distribution: uniform}",
    "{kind: rs-rp, sigma: 5.0, sigma_mode: neftune}",
    "{kind: rs-da}",
]


@pytest.mark.parametrize("method", METHODS)
def test_same_losses_as_fastrobust_train(tiny_pawsx, tmp_path: Path, method: str) -> None:
    from fastrobust.training import train

    data, model = tiny_pawsx
    cfg = _config(data, model, tmp_path / "ours", method)
    ours = next(iter(train(cfg)["methods"].values()))["losses"]
    trainer = _robust_trainer(cfg, model, tmp_path / "hf", yaml.safe_load(method))
    trainer.train()
    theirs = _losses(trainer)
    assert len(ours) == len(theirs) == 10
    assert theirs == pytest.approx(ours, abs=1e-6, rel=0), method


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_same_losses_as_fastrobust_train(tiny_pawsx, tmp_path: Path, precision: str) -> None:
    """FreeLB (3 backwards per micro-batch) under bf16/fp16 autocast, accelerate's on the Trainer side.

    (On CPU accelerate keeps no fp16 grad scaler, fastrobust train does; with these small losses
    neither scales anything away. The CUDA scaler path is not exercised on a CPU machine.)"""
    from fastrobust.training import train

    data, model = tiny_pawsx
    method = "{kind: freelb, steps: 3, init_magnitude: 0.2}"
    cfg = _config(data, model, tmp_path / "ours", method, f"model.precision={precision}", "optim.max_steps=4")
    ours = next(iter(train(cfg)["methods"].values()))["losses"]
    trainer = _robust_trainer(cfg, model, tmp_path / "hf", yaml.safe_load(method))
    assert getattr(trainer.args, precision)
    trainer.train()
    assert trainer.accelerator.mixed_precision == precision
    assert _losses(trainer) == pytest.approx(ours, abs=5e-5, rel=0)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "method",
    [
        {"kind": "freelb", "steps": 3, "epsilon": 1.0, "step_size": 0.5},
        {"kind": "pgd", "steps": 2, "epsilon": 1.0, "step_size": 0.5},
    ],
)
def test_accumulation_2x4_equals_1x8(tiny_pawsx, tmp_path: Path, method: dict) -> None:
    """Same global batch, split into 2 micro-batches of 4 or one of 8: same update.

    Deterministic set-up (no dropout, PGD/FreeLB from delta = 0) so that only the split differs.
    """
    data, model_path = tiny_pawsx
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    runs = {}
    for micro in (4, 8):
        cfg = _config(
            data,
            model_path,
            tmp_path,
            "{kind: baseline}",
            f"optim.micro_batch_size={micro}",
            "optim.max_steps=4",
        )
        trainer = _robust_trainer(
            cfg, model_path, tmp_path / f"m{micro}", method, model=_model(model_path, **no_dropout)
        )
        assert trainer.args.gradient_accumulation_steps == 8 // micro
        trainer.train()
        runs[micro] = (_losses(trainer), _params(trainer.model))
    (l4, p4), (l8, p8) = runs[4], runs[8]
    assert l4 == pytest.approx(l8, abs=1e-5, rel=0)
    init = _params(_model(model_path))
    key = "bert.embeddings.word_embeddings.weight"
    assert not torch.allclose(p4[key], init[key], atol=1e-4)  # the updates did something
    for k in p4:
        torch.testing.assert_close(p4[k], p8[k], rtol=0, atol=1e-5, msg=k)


def test_resume_from_trainer_checkpoint(tiny_pawsx, tmp_path: Path) -> None:
    """Stopped after its step-3 checkpoint and resumed, an RS-RP run ends like the uninterrupted one."""
    data, model_path = tiny_pawsx
    method = {"kind": "rs-rp", "sigma": 0.5}
    cfg = _config(data, model_path, tmp_path, "{kind: baseline}", "optim.max_steps=6")
    save = {"save_strategy": "steps", "save_steps": 3}

    out = tmp_path / "run"
    full = _robust_trainer(cfg, model_path, out, method, **save)
    full.train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    import shutil

    shutil.rmtree(out / "checkpoint-6")  # as if the job had died after its step-3 checkpoint
    again = _robust_trainer(cfg, model_path, out, method, **save)
    again.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    assert again.state.global_step == 6
    assert _losses(again)[-3:] == pytest.approx(_losses(full)[-3:], abs=1e-6, rel=0)
    a, b = _params(again.model), _params(full.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # every saved folder says which method and which resolved scale trained it
    info = json.loads((out / "checkpoint-6" / "fastrobust.json").read_text())
    assert info["method"]["kind"] == "rs-rp" and info["method"]["sigma"] == 0.5
    assert info["embedding_rms"] > 0


def test_evaluation_and_saved_scales(tiny_pawsx, tmp_path: Path) -> None:
    """Trainer.evaluate works on a text eval set; fastrobust.json records PGD's resolved scales."""
    from fastrobust.data import load_task

    data, model_path = tiny_pawsx
    cfg = _config(data, model_path, tmp_path, "{kind: baseline}", "optim.max_steps=2")
    trainer = _robust_trainer(cfg, model_path, tmp_path / "hf", {"kind": "pgd", "steps": 1, "epsilon": 0.5})
    trainer.eval_dataset = trainer._prepare_text(load_task(cfg.task).dev["en"], train=False)
    trainer.train()
    metrics = trainer.evaluate()
    assert 0 < metrics["eval_loss"] < 5
    trainer.save_model(str(tmp_path / "saved"))
    info = json.loads((tmp_path / "saved" / "fastrobust.json").read_text())
    rms = info["embedding_rms"]
    assert info["resolved_scales"]["epsilon"] == pytest.approx(0.5 * rms)
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_embedding_noise_callback_on_plain_trainer(tiny_pawsx, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, Trainer

    from fastrobust.data import encode_dataset, load_task, make_collator

    data, model_path = tiny_pawsx
    cfg = _config(data, model_path, tmp_path, "{kind: baseline}", "optim.max_steps=3")
    tok = AutoTokenizer.from_pretrained(str(model_path))
    train_set = encode_dataset(load_task(cfg.task).train, tok, 32)
    losses = {}
    for name, callbacks in (
        ("plain", []),
        ("noise", [EmbeddingNoiseCallback(2.0, sigma_mode="relative", seed=0)]),
    ):
        model = _model(model_path)
        args = training_arguments(cfg, tmp_path / name, logging_steps=1, save_strategy="no", use_cpu=True)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            data_collator=make_collator(tok),
            callbacks=callbacks,
        )
        trainer.train()
        losses[name] = _losses(trainer)
        emb = model.get_input_embeddings()
        assert not emb._forward_hooks, "the noise hook must be removed when training ends"
    assert losses["noise"] != pytest.approx(losses["plain"], abs=1e-4)


def test_method_arguments_and_errors(tiny_pawsx, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from fastrobust.data import encode_dataset, load_task

    m = resolve_method("pgd", epsilon=0.1, steps=2)
    assert m.kind == "pgd" and m.cfg.epsilon == 0.1 and m.cfg.steps == 2
    assert resolve_method({"kind": "rs-rp", "sigma": 0.2}).cfg.sigma == 0.2
    with pytest.raises(ConfigError, match="steps"):
        resolve_method("freelb", steps=0)
    with pytest.raises(ConfigError, match="unknown method kind"):
        resolve_method("dropout")
    data, model_path = tiny_pawsx
    cfg = _config(data, model_path, tmp_path, "{kind: baseline}", "optim.max_steps=1")
    # keyword arguments of the method section go straight to RobustTrainer
    trainer = _robust_trainer(cfg, model_path, tmp_path / "a", "rs-rp")
    assert trainer.robust_method.kind == "rs-rp"
    placed = RobustTrainer(
        model=_model(model_path), args=trainer.args, method="pgd", layer=1, ball="sentence"
    )
    assert type(placed.robust_method).__name__ == "PGD" and placed.robust_method.cfg.layer == 1
    with pytest.raises(ConfigError, match=r"unknown keyword argument\(s\) \['sigmaa'\]"):
        RobustTrainer(model=_model(model_path), args=trainer.args, method="rs-rp", sigmaa=0.1)
    tok = AutoTokenizer.from_pretrained(str(model_path))
    tokenized = encode_dataset(load_task(cfg.task).train, tok, 32)
    with pytest.raises(DataError, match="re-draws the training text every epoch"):
        RobustTrainer(
            model=_model(model_path),
            args=trainer.args,
            train_dataset=tokenized,
            processing_class=tok,
            method="rs-da",
            task_synonyms={"w1": ["w2"]},
        )


# --- several processes ----------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = distributed_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _worker(
    tiny_pawsx, out: Path, method: dict, micro: int, accum: int, *, procs: int = 1, stage=None
) -> list[float]:
    data, model = tiny_pawsx
    args = [
        str(ROOT / "tests" / "hf_worker.py"),
        str(data),
        str(model),
        str(out),
        json.dumps(method),
        str(micro),
        str(accum),
    ]
    if stage is not None:
        args.append(str(stage))
    launch = [sys.executable]
    if procs > 1:
        launch = [str(BIN / "torchrun"), "--nproc_per_node", str(procs), "--master_port", str(free_port())]
    proc = subprocess.run([*launch, *args], env=_env(), cwd=ROOT, timeout=600, capture_output=True, text=True)
    check_exit(proc, f"hf_worker.py on {procs} process(es), ZeRO stage {stage}")
    return json.loads((out / "losses.json").read_text())


def _compare_models(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    pa, pb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], rtol=0, atol=1e-5, msg=k)


FREELB = {"kind": "freelb", "steps": 2, "init_magnitude": 0.2}


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_equal_one_process_with_accumulation(tiny_pawsx, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (DDP, gloo), micro 4 each == 1 process, micro 4 x 2 accumulation."""
    one = _worker(tiny_pawsx, tmp_path / "one", FREELB, 4, 2)
    two = _worker(tiny_pawsx, tmp_path / "two", FREELB, 4, 1, procs=2)
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, abs=1e-6, rel=0)
    _compare_models(tmp_path / "one", tmp_path / "two")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_in_training_arguments(tiny_pawsx, tmp_path: Path, stage: int) -> None:
    """``TrainingArguments(deepspeed=...)`` ZeRO-2/3 on 2 ranks: FreeLB's 2 backwards per micro-batch
    make one optimizer step per accumulation window; same losses and weights as one plain process."""
    one = _worker(tiny_pawsx, tmp_path / "one", FREELB, 4, 2)
    zero = _worker(tiny_pawsx, tmp_path / "zero", FREELB, 4, 1, procs=2, stage=stage)
    assert zero == pytest.approx(one, abs=1e-5, rel=0)
    _compare_models(tmp_path / "one", tmp_path / "zero")


def test_docs_example_runs(tiny_pawsx, tmp_path: Path) -> None:
    """The complete example of docs/integrations.md runs as written (tiny model, hub-layout folder)."""
    text = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    example = next(b for b in blocks if "zero-shot" in b and "trainer.train()" in b)
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    env = _env()
    env.update(
        MODEL=str(tiny_pawsx[1]),
        DATA=str(ROOT / "tests" / "fixtures" / "hub_pawsx"),
        OUT=str(tmp_path / "out"),
        LANGUAGES="en fr",
        EPOCHS="1",
    )
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, timeout=300, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["en"], ["fr"])]
    assert [x[0] for x in lines] == ["en", "fr"] and all(0 <= float(x[1]) <= 1 for x in lines)
    assert (tmp_path / "out" / "best" / "fastrobust.json").is_file()


@pytest.mark.slow
def test_torch_compile_same_losses_without_dropout(tiny_pawsx, tmp_path: Path) -> None:
    """``torch_compile=True``: the compiled model runs the method's inputs_embeds forwards.

    Dropout off: compiled dropout draws from another random stream than eager dropout (so with
    dropout on, the two runs differ by that draw, ~4e-3 in loss here, not by the method).
    """
    from fastrobust.training import train

    data, model_path = tiny_pawsx
    folder = tmp_path / "model"
    _model(model_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(model_path)).save_pretrained(folder)
    method = "{kind: freelb, steps: 2, init_magnitude: 0.2}"
    cfg = _config(data, folder, tmp_path / "ours", method, "optim.max_steps=3")
    ours = next(iter(train(cfg)["methods"].values()))["losses"]
    trainer = _robust_trainer(cfg, folder, tmp_path / "hf", yaml.safe_load(method), torch_compile=True)
    trainer.train()
    assert _losses(trainer) == pytest.approx(ours, abs=1e-5, rel=0)
