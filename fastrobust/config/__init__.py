"""Typed configuration of fastrobust runs (pydantic schema, YAML files, ``--set`` overrides)."""

from fastrobust.config.loader import (
    apply_override,
    config_from_dict,
    find_config,
    load_config,
    packaged_config_path,
    packaged_recipes,
)
from fastrobust.config.methods import (
    AdversarialConfig,
    BaselineConfig,
    MethodConfig,
    NoiseConfig,
    SynonymConfig,
    method_label,
)
from fastrobust.config.schema import (
    AverageConfig,
    Config,
    DeepSpeedSection,
    EvalConfig,
    LoraSection,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    SyntheticConfig,
    TaskConfig,
)

__all__ = [
    "AdversarialConfig",
    "AverageConfig",
    "BaselineConfig",
    "Config",
    "DeepSpeedSection",
    "EvalConfig",
    "LoraSection",
    "MethodConfig",
    "ModelConfig",
    "NoiseConfig",
    "OptimConfig",
    "OutputConfig",
    "SynonymConfig",
    "SyntheticConfig",
    "TaskConfig",
    "apply_override",
    "config_from_dict",
    "find_config",
    "load_config",
    "method_label",
    "packaged_config_path",
    "packaged_recipes",
]
