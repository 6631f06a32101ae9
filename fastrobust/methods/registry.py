"""The method registry: which ``kind`` of method section is which method class and config class.

A method is one file: a :class:`~fastrobust.methods.base.RobustMethod` subclass that declares its
``kind``, its ``config_class`` (a pydantic section with ``kind: Literal[...]`` and ``label``), a
one-line ``summary`` for the CLI help, ``backward_calls(cfg)`` (how often its training step calls
backward per micro-batch), ``relative_cost(cfg)`` (forward/backward passes per step relative to the
baseline's one, for scheduling) and its ``training_step``; ``register_method(cls)`` adds it. The
config loader, the engine, the parallel scheduler and the CLI help ask this module and name no
method.

Other packages register methods without any edit here, by an entry point of the group
``fastrobust.methods`` (name: the kind, value: ``module:Class``); it is loaded when its kind is
first looked up, so ``fastrobust train`` and spawned worker processes find it too.

This module imports neither torch nor pydantic: the built-in methods are named by import path and
load on first use, so ``fastrobust train --help`` and config validation stay fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

from fastrobust.errors import ConfigError

if TYPE_CHECKING:  # annotations only: both load with the first method that is built
    from pydantic import BaseModel

    from fastrobust.methods.base import RobustMethod

ENTRY_POINT_GROUP = "fastrobust.methods"


class MethodSection(Protocol):
    """What every method section has, whichever method registered it (``fastrobust.config.methods``)."""

    kind: str
    label: str | None


@dataclass(frozen=True)
class MethodEntry:
    """One registered kind: its method and config classes (or ``module:Name`` paths) and help line."""

    kind: str
    summary: str
    method: str | type[RobustMethod]
    config: str | type[BaseModel]

    def method_class(self) -> type[RobustMethod]:
        return _load(self.method)

    def config_class(self) -> type[BaseModel]:
        return _load(self.config)


_CONFIGS = "fastrobust.config.methods"
_BUILTIN = (
    MethodEntry("baseline", "", "fastrobust.methods.baseline:Baseline", f"{_CONFIGS}:BaselineConfig"),
    MethodEntry(
        "pgd", "adversarial training", "fastrobust.methods.adversarial:PGD", f"{_CONFIGS}:AdversarialConfig"
    ),
    MethodEntry(
        "freelb",
        "",
        "fastrobust.methods.adversarial:FreeLB",
        f"{_CONFIGS}:AdversarialConfig",
    ),
    MethodEntry(
        "rs-rp", "embedding noise", "fastrobust.methods.noise:RandomPerturbation", f"{_CONFIGS}:NoiseConfig"
    ),
    MethodEntry(
        "rs-da",
        "synonym substitution: needs task.synonyms or <task.path>/synonyms.json",
        "fastrobust.methods.synonyms:SynonymSubstitution",
        f"{_CONFIGS}:SynonymConfig",
    ),
)
_REGISTRY: dict[str, MethodEntry] = {e.kind: e for e in _BUILTIN}


def _load(target: str | type) -> type:
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def register_method(cls: type[RobustMethod]) -> type[RobustMethod]:
    """Adds a method class under its ``kind`` (usable as a class decorator); returns ``cls``.

    Raises ConfigError when the class declares no ``kind`` or ``config_class``, or when another
    class is already registered under its kind.
    """
    kind = getattr(cls, "kind", None)
    config = getattr(cls, "config_class", None)
    if not isinstance(kind, str) or kind == "method" or config is None:
        raise ConfigError(f"register_method: {cls.__name__} must declare `kind` and `config_class`")
    known = _REGISTRY.get(kind)
    if known is not None and known.method is not cls and known.method != f"{cls.__module__}:{cls.__name__}":
        raise ConfigError(f"register_method: kind {kind!r} is already registered ({known.method})")
    _REGISTRY[kind] = MethodEntry(kind, getattr(cls, "summary", "") or "", cls, config)
    return cls


def _from_entry_point(kind: str) -> MethodEntry | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            register_method(ep.load())
            return _REGISTRY.get(kind)
    return None


def lookup(kind: object) -> MethodEntry:
    """The entry of ``kind``; ConfigError naming the known kinds when there is none."""
    entry = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if entry is None and isinstance(kind, str):
        entry = _from_entry_point(kind)
    if entry is None:
        raise ConfigError(f"methods: unknown method kind {kind!r} (expected one of {', '.join(kinds())})")
    return entry


def kinds() -> tuple[str, ...]:
    """Every known kind: the registered ones, then those of installed entry points."""
    plugged = [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in _REGISTRY]
    return (*_REGISTRY, *plugged)


def backward_calls(cfg: MethodSection) -> int:
    """How many times the training step of section ``cfg`` calls backward per micro-batch."""
    return int(lookup(cfg.kind).method_class().backward_calls(cfg))


def relative_cost(cfg: MethodSection) -> float:
    """Forward/backward passes per optimizer step of section ``cfg``, relative to the baseline's."""
    return lookup(cfg.kind).method_class().relative_cost(cfg)


def help_lines() -> list[str]:
    """``kind (summary)`` of every known kind, for the CLI help (entry points by name, not loaded)."""
    lines = [f"{e.kind} ({e.summary})" if e.summary else e.kind for e in _REGISTRY.values()]
    return lines + list(kinds()[len(_REGISTRY) :])
