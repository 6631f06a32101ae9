"""Loading a config: YAML file -> ``--set key=value`` overrides -> validated ``Config``.

Errors are ``ConfigError`` whose message names the file and the dotted key, e.g.
``configs/x.yaml: methods.1.sigma: Input should be greater than or equal to 0 (got -1)``.
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fastrobust.config.schema import Config
from fastrobust.errors import ConfigError

DEMO_CONFIG = "demo.yaml"
logger = logging.getLogger(__name__)


def _packaged_dir() -> Path:
    return Path(str(importlib.resources.files("fastrobust.configs")))


def packaged_recipes() -> list[str]:
    """Names (without ``.yaml``) of the recipes shipped inside the package, e.g. ``pawsx_xlmr_base``."""
    return sorted(p.stem for p in _packaged_dir().glob("*.yaml"))


def packaged_config_path(name: str) -> Path:
    """Path of a recipe shipped inside the package (``fastrobust.configs``): ``demo.yaml`` or ``demo``."""
    for candidate in (name, f"{name}.yaml"):
        path = _packaged_dir() / candidate
        if path.is_file():
            return path
    raise ConfigError(f"{name}: no such packaged config; packaged recipes: {', '.join(packaged_recipes())}")


def find_config(name: str | Path) -> Path:
    """A config file from a path, or from the name of a packaged recipe (``pawsx_xlmr_base``).

    A file at ``name`` wins (relative to the working directory); a bare name without a folder
    part is then looked up among the packaged recipes, with or without ``.yaml``.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if len(path.parts) == 1:
        for candidate in (path.name, f"{path.name}.yaml"):
            packaged = _packaged_dir() / candidate
            if packaged.is_file():
                return packaged
    raise ConfigError(
        f"{name}: config file not found (nor a packaged recipe: {', '.join(packaged_recipes())})"
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error.

    Plain PyYAML keeps the last value silently: a second ``optim:`` section would drop the first
    one's settings, which the strict schema (unknown keys refused) could never notice.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` merges, then overrides
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise ConfigError(
                    f"{self.name}: key {key!r} is given twice (lines {seen[key]} and {line}); keep one"
                )
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loader = _UniqueKeyLoader(path.read_text(encoding="utf-8"))
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}"
        )
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Applies one ``a.b.c=value`` override in place; the value is parsed as YAML.

    Integer path parts index lists (``methods.0.sigma=0.1``); missing mappings are created
    so that the schema, not this function, decides whether a key exists.
    """
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. optim.learning_rate=3e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {where!r} is not an index of a list of length {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])!r} is a value, not a section")


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        detail = f" (got {got!r})" if err["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        lines.append(f"{source}: {loc}: {msg}{detail}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Loads ``path`` (default: the packaged demo config) and applies ``overrides``.

    ``path`` is a YAML file or the name of a packaged recipe (see :func:`find_config`).
    """
    file = find_config(path) if path is not None else packaged_config_path(DEMO_CONFIG)
    data = _read_yaml(file)
    empty = not data
    for override in overrides:
        apply_override(data, override)
    if empty:  # said before validation, so that it is seen even when an override is wrong
        task = data.get("task")
        name = task.get("name", "synthetic") if isinstance(task, dict) else "synthetic"
        demo = ", which trains the synthetic demo benchmark" if name == "synthetic" else ""
        logger.warning(
            "%s: the file is empty; every setting not given by --set takes its default%s", file, demo
        )
    return config_from_dict(data, source=str(file))
