"""DeepSpeed JSON configs whose trainer-owned fields are ``"auto"``.

Batch sizes, accumulation, clipping, precision and the optimizer/scheduler hyper-parameters
are owned by the training config (``optim``, ``model.precision``); the JSON says ``"auto"``
and :func:`resolve_deepspeed_config` fills them in, so the two can never disagree. A concrete
value in the JSON that contradicts the training config is an error naming both keys. ZeRO
bucket sizes left ``"auto"`` are derived from the model's hidden size (the usual rule:
reduce bucket = H^2, stage-3 prefetch = 0.9 H^2, persistence threshold = 10 H).
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

from fastrobust.config.schema import Config
from fastrobust.errors import ConfigError


def find_deepspeed_config(path: str) -> Path:
    """``path`` as given, else relative to the packaged configs (``ds/zero3.json`` works anywhere)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    root = Path(str(importlib.resources.files("fastrobust.configs")))
    for candidate in (root / path, root / "ds" / p.name):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"deepspeed.config: {path}: file not found (nor under the packaged configs)")


def load_deepspeed_json(path: str) -> dict[str, Any]:
    file = find_deepspeed_config(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object at the top level")
    return data


def _fill(section: dict[str, Any], key: str, value: Any, where: str, owner: str) -> None:  # Any: a JSON value
    """Sets ``section[key]`` when missing or "auto"; a different concrete value is an error."""
    current = section.get(key, "auto")
    if current == "auto":
        section[key] = value
    elif current != value and not (
        isinstance(value, float)
        and isinstance(current, int | float)
        and abs(current - value) <= 1e-12 * max(1.0, abs(value))
    ):
        raise ConfigError(
            f'deepspeed config {where}{key} = {current!r} contradicts {owner} = {value!r}; set it to "auto"'
        )


def resolve_deepspeed_config(
    ds: dict[str, Any],
    cfg: Config,
    *,
    micro_batch_size: int,
    grad_accum: int,
    total_steps: int,
    warmup_steps: int,
    hidden_size: int | None,
    backward_calls: int = 1,
) -> dict[str, Any]:
    """A copy of ``ds`` with every ``"auto"`` replaced from ``cfg``.

    Invariant DeepSpeed checks itself: train_batch_size = micro * accum * world size.
    ``backward_calls``: how many times a method back-propagates per micro-batch (FreeLB: K).
    ZeRO-1/2 overwrite, rather than add to, the reduced gradient when a second backward comes
    in the same micro-step, so the trainer makes every backward its own DeepSpeed micro-step
    (``engine.step()`` after each) and DeepSpeed's accumulation count becomes accum * calls;
    its batch size is scaled alike to keep its own consistency check (its sample counter is
    then K times the real one; nothing of ours reads it).
    """
    out = json.loads(json.dumps(ds))
    o = cfg.optim
    _fill(out, "train_batch_size", o.batch_size, "", "optim.batch_size")
    _fill(out, "train_micro_batch_size_per_gpu", micro_batch_size, "", "optim.micro_batch_size")
    _fill(out, "gradient_accumulation_steps", grad_accum, "", "the accumulation implied by optim")
    _fill(out, "gradient_clipping", float(o.max_grad_norm or 0.0), "", "optim.max_grad_norm")
    for name in ("bf16", "fp16"):
        section = out.setdefault(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"deepspeed config {name}: expected an object")
        _fill(section, "enabled", cfg.model.precision == name, f"{name}.", "model.precision")
    if "optimizer" in out:
        params = out["optimizer"].setdefault("params", {})
        _fill(params, "lr", o.learning_rate, "optimizer.params.", "optim.learning_rate")
        _fill(params, "weight_decay", o.weight_decay, "optimizer.params.", "optim.weight_decay")
        _fill(params, "eps", o.adam_epsilon, "optimizer.params.", "optim.adam_epsilon")
        if params.get("betas") == "auto":
            params["betas"] = [0.9, 0.999]
    if "scheduler" in out:
        params = out["scheduler"].setdefault("params", {})
        for key, value in (
            ("warmup_min_lr", 0.0),
            ("warmup_max_lr", o.learning_rate),
            ("warmup_num_steps", warmup_steps),
            ("total_num_steps", total_steps),
        ):
            if params.get(key) == "auto":
                params[key] = value
    zero = out.get("zero_optimization", {})
    if isinstance(zero, dict) and hidden_size:
        for key, value in (
            ("reduce_bucket_size", hidden_size * hidden_size),
            ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
            ("stage3_param_persistence_threshold", 10 * hidden_size),
        ):
            if zero.get(key) == "auto":
                zero[key] = value
    if backward_calls > 1:
        out["gradient_accumulation_steps"] = grad_accum * backward_calls
        out["train_batch_size"] = o.batch_size * backward_calls
    left = _auto_paths(out)
    if left:
        raise ConfigError(f'deepspeed config: no value known for {", ".join(left)} (replace "auto")')
    return out


def _auto_paths(node: Any, prefix: str = "") -> list[str]:  # Any: a node of the JSON
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _auto_paths(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _auto_paths(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def zero_stage(ds: dict[str, Any]) -> int:
    """The ZeRO stage of a (resolved) DeepSpeed config; 0 when absent."""
    zero = ds.get("zero_optimization") or {}
    return int(zero.get("stage", 0)) if isinstance(zero, dict) else 0
