"""What one ``train`` call runs: the config with the call's arguments applied (``--seeds``,
``--parallel``, ``--deepspeed``) and the method sections it selects (``--method``).

Free of torch, so that ``fastrobust train --print-config`` prints exactly this, in a blink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastrobust.config import Config, method_label
from fastrobust.errors import ConfigError


def apply_call_arguments(
    cfg: Config,
    *,
    methods: Sequence[str] | None = None,
    deepspeed: str | None = None,
    seeds: Sequence[int] | None = None,
    parallel: int | None = None,
) -> tuple[Config, list[Any]]:
    """``cfg`` with the call's arguments in place of its own keys, and the sections to train."""
    if parallel is not None:
        if parallel < 1:
            raise ConfigError(f"--parallel: must be >= 1, got {parallel}")
        cfg = cfg.model_copy(update={"parallel": parallel})
    if deepspeed is not None:
        cfg = cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(update={"config": deepspeed})})
    if seeds is not None:
        seeds = [int(x) for x in seeds]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"--seeds: give distinct seeds, e.g. 0,1,2 (got {seeds})")
        cfg = cfg.model_copy(update={"seeds": seeds, "seed": seeds[0]})
    sections = list(cfg.methods)
    if methods:
        labels = [method_label(m) for m in sections]
        unknown = [m for m in methods if m not in labels]
        if unknown:
            raise ConfigError(
                f"--method {', '.join(unknown)}: no such method section; the config has {labels}"
            )
        sections = [m for m in sections if method_label(m) in methods]
    return cfg, sections


def printed_config(cfg: Config, sections: Sequence[Any]) -> dict[str, Any]:
    """The config as ``--print-config`` shows it: every key, and only the sections to train."""
    data = cfg.model_dump(mode="json")
    data["methods"] = [m.model_dump(mode="json") for m in sections]
    return data
