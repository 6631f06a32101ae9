"""A method defined outside fastrobust/ (here) trains through ``fastrobust train`` and
``RobustTrainer`` once registered: in-process with ``register_method``, in a subprocess through an
entry point of the group ``fastrobust.methods``; the config loader, engine, scheduler and CLI help
find it in the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import Field
from torch import Tensor, nn

from fastrobust.config.base import StrictModel
from fastrobust.methods import registry
from fastrobust.methods.base import Backward, RobustMethod, require_labels
from fastrobust.methods.embeddings import classification_loss, forward_from_ids
from fastrobust.timing import NULL_TIMER, SectionTimer

ROOT = Path(__file__).resolve().parents[1]


class SplitConfig(StrictModel):
    kind: Literal["split-ce"] = "split-ce"
    label: str | None = None
    parts: int = Field(2, ge=1, description="the micro-batch is trained in this many slices")


class SplitCE(RobustMethod):
    """Cross-entropy over ``parts`` slices of the micro-batch: one forward and one backward each."""

    kind = "split-ce"
    config_class = SplitConfig
    summary = "cross-entropy slice by slice"
    cfg: SplitConfig

    @classmethod
    def backward_calls(cls, cfg: SplitConfig) -> int:
        return cfg.parts

    @classmethod
    def relative_cost(cls, cfg: SplitConfig) -> int:
        return cfg.parts

    def training_step(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        backward: Backward,
        timer: SectionTimer = NULL_TIMER,
    ) -> Tensor:
        labels = require_labels(batch)
        total = torch.zeros(())
        for rows in torch.arange(labels.shape[0]).chunk(self.cfg.parts):
            part = {k: v[rows] for k, v in batch.items()}
            loss = classification_loss(forward_from_ids(model, part), labels[rows]) * (
                len(rows) / len(labels)
            )
            backward(loss)
            total = total + loss.detach()
        return total


@pytest.fixture
def split_registered() -> Iterator[None]:
    registry.register_method(SplitCE)
    try:
        yield
    finally:
        registry._REGISTRY.pop("split-ce")


def _overrides(data: Path, model: Path, out: Path) -> list[str]:
    return [
        "seed=3",
        "seeds=null",
        "parallel=1",
        "task.name=pawsx",
        "task.source=local",
        f"task.path={data}",
        "task.languages=[en, de]",
        "task.gxlt=false",
        f"model.name_or_path={model}",
        "model.max_length=32",
        "methods=[{kind: split-ce, parts: 3}]",
        "optim.batch_size=8",
        "optim.micro_batch_size=4",
        "optim.max_steps=4",
        "optim.learning_rate=2e-3",
        "eval.every_steps=4",
        "output.log_every=1",
        "output.tensorboard=false",
        "output.save_model=false",
        f"output.dir={out}",
    ]


def test_registry_answers_for_a_registered_method(split_registered: None) -> None:
    from fastrobust.config import load_config
    from fastrobust.errors import ConfigError
    from fastrobust.methods import build_method
    from fastrobust.training import parallel
    from fastrobust.training.engine import backward_calls

    cfg = load_config(None, ["methods=[{kind: split-ce, parts: 3, label: s3}, {kind: freelb, steps: 4}]"])
    split, freelb = cfg.methods
    assert isinstance(split, SplitConfig) and split.parts == 3
    assert cfg.model_dump()["methods"][0] == {"kind": "split-ce", "label": "s3", "parts": 3}
    assert (backward_calls(split), parallel._cost(split)) == (3, 3)
    assert (backward_calls(freelb), parallel._cost(freelb)) == (4, 5)
    assert isinstance(build_method({"kind": "split-ce"}), SplitCE)
    assert "split-ce (cross-entropy slice by slice)" in registry.help_lines()
    with pytest.raises(ConfigError, match=r"methods\.0\.parts: Input should be greater"):
        load_config(None, ["methods=[{kind: split-ce, parts: 0}]"])
    with pytest.raises(ConfigError, match="already registered"):
        registry.register_method(type("Other", (SplitCE,), {}))


def test_new_method_trains_through_fastrobust_train_and_robust_trainer(
    tiny_pawsx, tmp_path: Path, split_registered: None
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastrobust.data import load_task
    from fastrobust.integrations.hf import RobustTrainer, training_arguments
    from fastrobust.training.run import resolve_config

    data, model = tiny_pawsx
    # fastrobust train in a subprocess, which finds the method through an entry point
    plugins = tmp_path / "plugins" / "split_ce-0.dist-info"
    plugins.mkdir(parents=True)
    (plugins / "METADATA").write_text("Metadata-Version: 2.1\nName: split-ce\nVersion: 0\n")
    (plugins / "entry_points.txt").write_text(
        "[fastrobust.methods]\nsplit-ce = test_method_registry:SplitCE\n"
    )
    env = {
        "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}:{tmp_path / 'plugins'}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": "/usr/bin:/bin",
    }
    out = tmp_path / "cli"
    sets = [a for o in _overrides(data, model, out) for a in ("--set", o)]
    proc = subprocess.run(
        [sys.executable, "-m", "fastrobust", "train", *sets],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "split-ce" / "summary.json").read_text())
    ours = summary["losses"]
    assert len(ours) == 4 and all(0 < x < 5 for x in ours)
    helped = subprocess.run(
        [sys.executable, "-m", "fastrobust", "train", "--help"], capture_output=True, text=True, env=env
    )
    assert "split-ce" in helped.stdout

    # RobustTrainer in this process, registered by register_method: the same losses
    cfg = resolve_config(None, _overrides(data, model, tmp_path / "ours"))
    task = load_task(cfg.task)
    torch.manual_seed(3)
    hf_model = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=2)
    args = {"logging_steps": 1, "save_strategy": "no", "use_cpu": True, "disable_tqdm": True}
    trainer = RobustTrainer(
        model=hf_model,
        args=training_arguments(cfg, tmp_path / "hf", **args),
        train_dataset=task.train,
        processing_class=AutoTokenizer.from_pretrained(str(model)),
        method={"kind": "split-ce", "parts": 3},
        max_length=cfg.model.max_length,
        data_order="fastrobust",
    )
    trainer.train()
    theirs = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert theirs == pytest.approx(ours, abs=1e-6, rel=0)


def test_builtin_entries_match_their_classes() -> None:
    # the table names the built-ins by path (nothing heavy loads for the help or the config); the
    # classes' own declarations must say the same
    for entry in registry._BUILTIN:
        cls = entry.method_class()
        assert (cls.kind, cls.config_class, cls.summary) == (entry.kind, entry.config_class(), entry.summary)


@pytest.mark.parametrize(
    "path",
    [
        "fastrobust/config/loader.py",
        "fastrobust/config/schema.py",
        "fastrobust/training/engine.py",
        "fastrobust/training/parallel.py",
        "fastrobust/training/cli.py",
    ],
)
def test_training_layer_names_no_method(path: str) -> None:
    text = (ROOT / path).read_text()
    for entry in registry._BUILTIN:
        assert f'"{entry.kind}"' not in text and f"'{entry.kind}'" not in text, (path, entry.kind)
