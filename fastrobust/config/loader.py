"""Loading a config: YAML file -> ``--set key=value`` overrides -> validated ``Config``.

Errors are ``ConfigError`` whose message names the file and the dotted key, e.g.
``configs/x.yaml: methods.1.sigma: Input should be greater than or equal to 0 (got -1)``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fastrobust.config.schema import Config
from fastrobust.errors import ConfigError

DEMO_CONFIG = "demo.yaml"


def packaged_config_path(name: str) -> Path:
    """Path of a recipe shipped inside the package (``fastrobust.configs``), e.g. ``demo.yaml``."""
    path = Path(str(importlib.resources.files("fastrobust.configs").joinpath(name)))
    if not path.is_file():
        raise ConfigError(f"{name}: no such packaged config")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
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
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p)) or "<top level>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        detail = f" (got {got!r})" if err["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        lines.append(f"{source}: {loc}: {msg}{detail}")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the discriminator value into the location of a tagged union member.
    return isinstance(part, str) and part in {"baseline", "pgd", "freelb", "rs-rp", "rs-da"}


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Loads ``path`` (default: the packaged demo config) and applies ``overrides``."""
    file = Path(path) if path is not None else packaged_config_path(DEMO_CONFIG)
    data = _read_yaml(file)
    for override in overrides:
        apply_override(data, override)
    return config_from_dict(data, source=str(file))
