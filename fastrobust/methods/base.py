"""The interface between the trainer and a robust-training method."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from fastrobust.errors import FastrobustError
from fastrobust.timing import NULL_TIMER, SectionTimer

if TYPE_CHECKING:  # only annotations name it; importing datasets costs seconds (pyarrow, fsspec)
    import datasets
    from pydantic import BaseModel

Backward = Callable[[Tensor], None]


class RobustMethod:
    """One robust-training method, as the trainer drives it.

    Life cycle: ``build_method(cfg)`` -> ``setup(model)`` once after the model is built
    (resolves scales relative to the embedding table) -> per epoch
    ``epoch_train_dataset(train, epoch, seed)`` (RS-DA substitutes words there; the others
    return the dataset unchanged) -> per micro-batch ``training_step(model, batch, backward)``.

    ``training_step`` owns the forward passes and the perturbation; ``backward(loss)``,
    supplied by the trainer (``engine.backward`` under DeepSpeed, else ``(loss / accum).backward()``),
    is the only thing that puts gradients into parameters. The trainer clips, steps the
    optimizer and scheduler, and zeroes gradients.

    What a method declares for the registry (:mod:`fastrobust.methods.registry`): ``kind`` (the
    config sections' ``kind``), ``config_class`` (the pydantic section), ``summary`` (one line of
    CLI help), :meth:`backward_calls` and :meth:`relative_cost`; :meth:`build` makes one from a
    validated section.
    """

    label: str = "method"
    kind: str = "method"
    config_class: ClassVar[type[BaseModel] | None] = None
    summary: ClassVar[str] = ""

    # cfg is Any in these methods: each subclass narrows it to its own config class, which a
    # common base type would forbid (parameters are contravariant).
    @classmethod
    def build(cls, cfg: Any, *, task_synonyms: Mapping[str, list[str]] | None = None) -> RobustMethod:
        """The method of a validated section (``cfg``: an instance of ``config_class``, typed Any
        because each subclass has its own). task_synonyms: the task's synonym table, for the methods
        that use one. Default: ``cls(cfg)``."""
        return cls(cfg)

    @classmethod
    def backward_calls(cls, cfg: Any) -> int:
        """How many times ``training_step`` calls backward per micro-batch under section ``cfg``."""
        return 1

    @classmethod
    def relative_cost(cls, cfg: Any) -> int:
        """Forward/backward passes per optimizer step relative to the baseline's one (scheduling)."""
        return 1

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg
        if cfg is not None:
            self.kind = cfg.kind
            self.label = cfg.label or cfg.kind
        self.embedding_rms: float | None = None

    def setup(self, model: nn.Module) -> None:
        """Called once with the built model (or DeepSpeed engine). Default: nothing to resolve."""

    def epoch_train_dataset(self, dataset: datasets.Dataset, epoch: int, seed: int) -> datasets.Dataset:
        """The training set of ``epoch`` (columns sentence1, sentence2, label). Default: unchanged."""
        return dataset

    def training_step(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        backward: Backward,
        timer: SectionTimer = NULL_TIMER,
    ) -> Tensor:
        """Forward, perturbation and ``backward`` on one micro-batch; returns the detached loss.

        batch: input_ids (B, L), attention_mask (B, L), [token_type_ids (B, L)], labels (B,),
        right-padded and on the model's device.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(label={self.label!r}, cfg={self.cfg!r})"


def require_labels(batch: Mapping[str, Tensor]) -> Tensor:
    """``batch["labels"]`` (B,) with a clear error when the collator did not provide it."""
    labels = batch.get("labels")
    if labels is None:
        raise FastrobustError("batch: missing 'labels' (training batches need integer class labels)")
    return labels
