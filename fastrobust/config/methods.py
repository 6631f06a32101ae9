"""Config of the robust-training methods (one section per method, selected by ``kind``).

Scales (sigma, epsilon, step size) are either absolute, in the units of the
model's input embeddings, or ``relative``: multiplied by the RMS of the model's
input-embedding table. Embedding scales differ by orders of magnitude between
models (an XLM-R row has RMS ~0.1, a randomly initialised table 0.02, others 1),
so a relative sigma transfers between models and an absolute one rarely does.
The unit is the RMS of one *entry* of the table: a token row has L2 norm ~ RMS * sqrt(H),
and an L2 ball of radius epsilon over a sequence of n real tokens moves each token by
~epsilon / sqrt(n) on average (see docs/methods.md).

Placement options (``layer``, ``sentences``, PGD/FreeLB ``ball``, RS-RP ``shape``) move the
perturbation to an encoder layer's hidden states, to one sentence of a pair, or give each sentence
its own budget; relative scales at a layer k >= 1 are in units of the RMS of that layer's states
(``fastrobust.methods.placement``). The defaults are the word embeddings, both sentences, one
budget per example.

A section's ``kind`` picks its class through the method registry (``fastrobust.methods.registry``),
which also knows the methods other packages register; the sections are turned into methods by
``fastrobust.methods.build_method``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SerializeAsAny, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError

from fastrobust.config.base import StrictModel
from fastrobust.errors import ConfigError
from fastrobust.methods.registry import MethodSection, lookup

ScaleMode = Literal["absolute", "relative"]
# The values of fastrobust.validation.NORMS / DISTRIBUTIONS, spelled out because that module imports
# torch and the config layer must not (tests/test_method_constants.py keeps them equal).
Norm = Literal["l2", "linf"]
Distribution = Literal["gaussian", "uniform"]
# which sentence of a pair a perturbation touches (fastrobust.methods.placement)
Sentences = Literal["both", "first", "second"]


class BaselineConfig(StrictModel):
    """Plain cross-entropy fine-tuning."""

    kind: Literal["baseline"] = "baseline"
    label: str | None = None


class AdversarialConfig(StrictModel):
    """PGD in the input-embedding space (``pgd``) or its FreeLB variant (``freelb``).

    PGD: ``steps`` ascent steps on delta with gradients w.r.t. delta only, then the
    training loss ``(1 - adv_weight) * clean + adv_weight * adversarial``.
    FreeLB: every ascent step also back-propagates ``loss / steps`` into the parameters.
    """

    kind: Literal["pgd", "freelb"] = "pgd"
    label: str | None = None
    steps: int = Field(3, ge=1, description="K, the number of ascent steps")
    norm: Norm = "l2"
    epsilon: float | None = Field(1.0, ge=0, description="radius of the per-example ball; null = unbounded")
    step_size: float = Field(0.3, ge=0)
    init_magnitude: float = Field(0.0, ge=0, description="radius of the random start (0 = start at delta=0)")
    scale_mode: ScaleMode = "relative"
    adv_weight: float = Field(1.0, ge=0, le=1, description="weight of the adversarial loss (pgd only)")
    # placement (fastrobust.methods.placement): defaults = the word embeddings, one ball per pair
    layer: int = Field(
        0, ge=0, description="0 = word embeddings; k = hidden states output by encoder layer k"
    )
    sentences: Sentences = "both"
    ball: Literal["sequence", "sentence"] = Field(
        "sequence", description="one ball of radius epsilon per example, or one per perturbed sentence"
    )


class NoiseConfig(StrictModel):
    """RS-RP: random noise added to the embeddings of real tokens.

    ``sigma_mode``: ``absolute`` (sigma as given), ``relative`` (sigma * RMS of the
    embedding table) or ``neftune`` (per example alpha / sqrt(L * H), with L the real
    length of that sequence and alpha = sigma).
    """

    kind: Literal["rs-rp"] = "rs-rp"
    label: str | None = None
    sigma: float = Field(0.5, ge=0)
    sigma_mode: Literal["absolute", "relative", "neftune"] = "relative"
    distribution: Distribution = "gaussian"
    # placement (fastrobust.methods.placement): defaults = i.i.d. noise on all word embeddings
    layer: int = Field(
        0, ge=0, description="0 = word embeddings; k = hidden states output by encoder layer k"
    )
    sentences: Sentences = "both"
    shape: Literal["token", "sentence"] = Field(
        "token", description="i.i.d. per entry, or one Gaussian shift vector per sentence"
    )


class SynonymConfig(StrictModel):
    """RS-DA: every word with synonyms is replaced by a uniform draw from {itself} + synonyms,
    each sentence of a pair independently, fresh at every epoch."""

    kind: Literal["rs-da"] = "rs-da"
    label: str | None = None
    synonyms: str | None = Field(None, description="JSON word -> [synonyms]; null = the task's own table")


def _validate_section(value: Any, handler: ValidatorFunctionWrapHandler) -> StrictModel:
    # value: the YAML mapping (or an already built section) of one method; the registry names its class
    del handler  # the class is the kind's, not the annotated base
    if isinstance(value, StrictModel) and hasattr(value, "kind"):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("method_section", "a method section is a mapping with a 'kind'")
    try:
        cls = lookup(value.get("kind")).config_class()
    except ConfigError as exc:
        raise PydanticCustomError(
            "method_kind", str(exc).removeprefix("methods: ").replace("{", "{{")
        ) from None
    return cls.model_validate(value)


# One method section: validated as the config class its ``kind`` is registered with.
MethodConfig = Annotated[SerializeAsAny[StrictModel], WrapValidator(_validate_section)]


def method_label(cfg: MethodSection) -> str:
    """The name a method's run is reported under (its ``label`` or its ``kind``)."""
    return cfg.label or cfg.kind
