"""Shared pieces of the config schema."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment.

    ``allow_inf_nan=False``: every float of every section must be finite. A learning rate, scale or
    weight decay of ``.inf``/``.nan`` (YAML spells them so) can only produce a diverged run.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)
