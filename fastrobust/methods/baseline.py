"""Baseline: plain cross-entropy fine-tuning."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from fastrobust.config.methods import BaselineConfig
from fastrobust.methods.base import Backward, RobustMethod, require_labels
from fastrobust.methods.embeddings import classification_loss, forward_from_ids
from fastrobust.timing import NULL_TIMER, SectionTimer


class Baseline(RobustMethod):
    """loss = CE(f(input_ids), labels), one forward and one ``backward`` per micro-batch."""

    kind = "baseline"
    config_class = BaselineConfig

    def training_step(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        backward: Backward,
        timer: SectionTimer = NULL_TIMER,
    ) -> Tensor:
        labels = require_labels(batch)
        with timer.section("forward"):
            loss = classification_loss(forward_from_ids(model, batch), labels)
        with timer.section("backward"):
            backward(loss)
        return loss.detach()
