"""Config schema and loader: every shipped recipe loads; bad keys/types/values/overrides name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastrobust.config import Config, load_config, packaged_config_path
from fastrobust.errors import ConfigError
from fastrobust.training.ds_config import load_deepspeed_json, resolve_deepspeed_config, zero_stage
from fastrobust.training.trainer import batch_layout, resolve_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_every_recipe_is_shipped_and_loads() -> None:
    names = {p.name for p in RECIPES}
    for task in ("pawsx", "xnli"):
        for model in ("mbert", "xlmr_base", "xlmr_large"):
            assert f"{task}_{model}.yaml" in names
    for path in RECIPES:
        cfg = load_config(path)
        assert isinstance(cfg, Config)
        if path.name != "demo.yaml":
            assert {m.kind for m in cfg.methods} == {"baseline", "pgd", "freelb", "rs-rp", "rs-da"}
            assert cfg.optim.learning_rate == 2e-5 and cfg.model.max_length == 128
            assert cfg.optim.batch_size == 32 and cfg.optim.max_grad_norm == 1.0
            assert cfg.optim.scheduler == "linear"
            assert cfg.optim.epochs == (3 if path.name.startswith("pawsx") else 1)


def test_default_is_the_packaged_demo() -> None:
    cfg = load_config()
    assert cfg.task.name == "synthetic"
    assert packaged_config_path("demo.yaml").is_file()
    assert {m.kind for m in cfg.methods} >= {"baseline", "rs-rp", "rs-da", "pgd"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("optim:\n  learnin_rate: 1.0\n", "optim.learnin_rate: unknown key"),
        ("optim:\n  batch_size: many\n", "optim.batch_size"),
        ("optim:\n  learning_rate: -1\n", "optim.learning_rate"),
        ("methods:\n  - kind: rs-rp\n    sigma: -0.5\n", "methods.0.sigma"),
        ("methods:\n  - kind: pgd\n    stepz: 3\n", "methods.0.stepz: unknown key"),
        ("methods:\n  - kind: magic\n", "methods.0"),
        ("methods:\n  - kind: baseline\n  - kind: baseline\n", "labels must be unique"),
        ("task:\n  name: pawsx\n", "model.name_or_path"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("- a\n- b\n", "mapping"),
        ("optim: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value) or "mapping" in needle or "YAML" in needle


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.learning_rate", "expected key=value"),
        ("=3", "expected key=value"),
        ("optim.nope=1", "optim.nope: unknown key"),
        ("optim.epochs=zero", "optim.epochs"),
        ("methods.7.sigma=0.1", "not an index"),
        ("name.x=1", "is a value, not a section"),
        ("eval.every_steps=0", "eval.every_steps"),
    ],
)
def test_bad_override(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert needle in str(info.value)


def test_overrides_apply_and_parse_yaml() -> None:
    cfg = load_config(None, ["optim.learning_rate=3e-5", "methods.1.sigma=0.25", "task.languages=[en, xa]"])
    assert cfg.optim.learning_rate == 3e-5
    assert cfg.methods[1].sigma == 0.25
    assert cfg.task.languages == ["en", "xa"]
    again = resolve_config(cfg, ["seed=7"])
    assert again.seed == 7 and cfg.seed == 0


def test_batch_layout() -> None:
    cfg = load_config(None, ["optim.batch_size=32"])
    assert batch_layout(cfg, 1) == (32, 1)
    assert batch_layout(cfg, 2) == (16, 1)
    cfg = load_config(None, ["optim.batch_size=32", "optim.micro_batch_size=4"])
    assert batch_layout(cfg, 2) == (4, 4)
    cfg = load_config(None, ["optim.batch_size=30", "optim.micro_batch_size=4"])
    with pytest.raises(ConfigError, match=r"optim.batch_size \(30\).*optim.micro_batch_size \(4\)"):
        batch_layout(cfg, 1)
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        batch_layout(load_config(None, ["optim.batch_size=33"]), 2)


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero3_offload.json"])
def test_deepspeed_auto_fields_are_filled(name: str) -> None:
    cfg = load_config(None, ["optim.batch_size=32", "optim.max_grad_norm=0.5", "model.precision=bf16"])
    raw = load_deepspeed_json(f"configs/ds/{name}")
    assert raw["train_batch_size"] == "auto"
    out = resolve_deepspeed_config(
        raw, cfg, micro_batch_size=8, grad_accum=2, total_steps=100, warmup_steps=10, hidden_size=64
    )
    assert out["train_batch_size"] == 32 and out["train_micro_batch_size_per_gpu"] == 8
    assert out["gradient_accumulation_steps"] == 2 and out["gradient_clipping"] == 0.5
    assert out["bf16"]["enabled"] is True and out["fp16"]["enabled"] is False
    assert zero_stage(out) == (2 if name == "zero2.json" else 3)
    assert "auto" not in json.dumps(out)
    if "optimizer" in out:
        assert out["optimizer"]["params"]["lr"] == cfg.optim.learning_rate
    # FreeLB's K backward calls per micro-batch become K DeepSpeed micro-steps
    k3 = resolve_deepspeed_config(
        raw,
        cfg,
        micro_batch_size=8,
        grad_accum=2,
        total_steps=100,
        warmup_steps=0,
        hidden_size=64,
        backward_calls=3,
    )
    assert k3["gradient_accumulation_steps"] == 6 and k3["train_batch_size"] == 96


def test_deepspeed_contradiction_and_missing_file(tmp_path: Path) -> None:
    cfg = load_config(None, ["optim.batch_size=32"])
    with pytest.raises(ConfigError, match=r"train_batch_size = 64 contradicts optim.batch_size = 32"):
        resolve_deepspeed_config(
            {"train_batch_size": 64},
            cfg,
            micro_batch_size=32,
            grad_accum=1,
            total_steps=1,
            warmup_steps=0,
            hidden_size=None,
        )
    with pytest.raises(ConfigError, match="stage3_max_live_parameters"):
        resolve_deepspeed_config(
            {"zero_optimization": {"stage": 3, "stage3_max_live_parameters": "auto"}},
            cfg,
            micro_batch_size=32,
            grad_accum=1,
            total_steps=1,
            warmup_steps=0,
            hidden_size=8,
        )
    with pytest.raises(ConfigError, match="file not found"):
        load_deepspeed_json(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_deepspeed_json(str(bad))
