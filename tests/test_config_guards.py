"""Schema guards: non-finite numbers, scheduler names, recipes by name, empty files."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from fastrobust.config import Config, load_config
from fastrobust.config.methods import AdversarialConfig, NoiseConfig
from fastrobust.errors import ConfigError


def _float_fields(model: type[BaseModel], prefix: str) -> list[str]:
    """Dotted keys of every float-typed field of ``model`` and its sub-sections."""
    keys = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        args = typing.get_args(ann) or (ann,)
        if float in args:
            keys.append(f"{prefix}{name}")
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                keys += _float_fields(arg, f"{prefix}{name}.")
    return keys


TOP = _float_fields(Config, "")
METHOD = {
    kind: _float_fields(cls, "methods.0.")
    for kind, cls in (("pgd", AdversarialConfig), ("rs-rp", NoiseConfig))
}


def test_the_walk_finds_the_numbers_the_issue_names() -> None:
    assert {"optim.learning_rate", "optim.weight_decay", "optim.max_grad_norm"} <= set(TOP)
    assert "methods.0.epsilon" in METHOD["pgd"] and "methods.0.sigma" in METHOD["rs-rp"]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key", TOP + [f"{k}|{kind}" for kind, keys in METHOD.items() for k in keys])
def test_every_float_refuses_non_finite(key: str, value: str) -> None:
    key, _, kind = key.partition("|")
    overrides = [f"methods=[{{kind: {kind}}}]"] if kind else []
    with pytest.raises(ConfigError) as info:
        load_config(None, [*overrides, f"{key}={value}"])
    assert f"{key}: Input should be a finite number" in str(info.value)


def test_unknown_scheduler_is_refused_before_training() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optim.scheduler=cosine_annealing"])
    msg = str(info.value)
    assert "optim.scheduler" in msg and "'linear'" in msg and "'cosine'" in msg and len(msg.splitlines()) == 1
    assert load_config(None, ["optim.scheduler=cosine"]).optim.scheduler == "cosine"


def test_cli_refuses_an_infinite_learning_rate() -> None:
    from cli_run import run_cli

    res = run_cli("train", "--set", "optim.learning_rate=.inf")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.learning_rate: Input should be a finite number" in lines[0]


def test_recipes_are_found_by_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastrobust.config import packaged_recipes

    monkeypatch.chdir(tmp_path)
    assert {"demo", "pawsx_xlmr_base", "xnli_mbert"} <= set(packaged_recipes())
    assert load_config("pawsx_xlmr_base").name == "pawsx_xlmr_base"
    assert load_config("xnli_mbert.yaml").task.name == "xnli"
    # a file in the working directory wins over a packaged recipe of the same name
    (tmp_path / "pawsx_xlmr_base").write_text("name: mine\n")
    assert load_config("pawsx_xlmr_base").name == "mine"
    with pytest.raises(
        ConfigError, match=r"nope: config file not found \(nor a packaged recipe: .*pawsx_mbert"
    ):
        load_config("nope")


def test_cli_finds_a_packaged_recipe_by_name(tmp_path: Path) -> None:
    from cli_run import run_cli

    res = run_cli("train", "--config", "pawsx_xlmr_base", "--set", "optim.learning_rate=-1", cwd=tmp_path)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert "pawsx_xlmr_base.yaml: optim.learning_rate: Input should be greater than 0" in line


def test_an_empty_file_says_so_in_one_line(tmp_path: Path) -> None:
    from cli_run import run_cli

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here yet\n")
    res = run_cli("train", "--config", empty, "--set", "optim.max_steps=0")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[0] == (
        f"{empty}: the file is empty; every setting not given by --set takes its default, "
        "which trains the synthetic demo benchmark"
    ), lines


def test_a_key_given_twice_names_the_key_and_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("optim:\n  learning_rate: 1.0e-3\ntask:\n  name: synthetic\noptim:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: key 'optim' is given twice (lines 1 and 5); keep one"
    # inside a section too; a YAML merge key (<<) that an explicit key then overrides is no duplicate
    path.write_text("optim:\n  epochs: 1\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"key 'epochs' is given twice \(lines 2 and 3\)"):
        load_config(path)
    path.write_text("optim:\n  <<: {epochs: 1, learning_rate: 1.0e-3}\n  epochs: 2\n")
    cfg = load_config(path)
    assert cfg.optim.epochs == 2 and cfg.optim.learning_rate == 1.0e-3
