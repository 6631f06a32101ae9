"""The typed schema of a fastrobust run (one YAML file, ``--set`` overrides on top)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fastrobust.config.base import StrictModel
from fastrobust.config.methods import BaselineConfig, MethodConfig, method_label


class LoraSection(StrictModel):
    """LoRA adapters (PEFT) on the encoder: only the adapters and the classifier head train.

    Each targeted linear layer W (out x in) becomes ``W x + (alpha / r) * B A x`` with A (r x in),
    B (out x r), B = 0 at the start; W and the embedding table stay frozen (the methods perturb
    the embeddings' output, so they work unchanged). Needs ``pip install fastrobust[peft]``.
    """

    r: int = Field(8, ge=1, description="rank of the update B A")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="names (suffixes) of the linear layers that get adapters; null = PEFT's default for "
        "the architecture (query and value of every attention layer for BERT, mBERT and XLM-R)",
    )
    modules_to_save: list[str] | None = Field(
        None,
        description="modules trained in full and saved with the adapter; null = the classifier head plus "
        "every module the base checkpoint does not hold (e.g. BERT's pooler when it was saved without one)",
    )


class ModelConfig(StrictModel):
    name_or_path: str | None = Field(
        None, description="HF hub name or local folder; null only for task 'synthetic', which builds its own"
    )
    max_length: int = Field(128, ge=8)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    lora: LoraSection | None = Field(
        None, description="train LoRA adapters instead of the full model (PEFT); null = full fine-tuning"
    )
    compile: bool = Field(
        False,
        description="torch.compile the training forward once, with a dynamic sequence length (no recompile "
        "for a new padded length); evaluation runs eager",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode (with model.compile)"
    )
    compile_backend: str = Field(
        "inductor", min_length=1, description="torch.compile backend (with model.compile), e.g. aot_eager"
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.compile_mode != "default" and self.compile_backend != "inductor":
            raise ValueError(
                f"compile_mode: {self.compile_mode!r} is a mode of the inductor backend; "
                f"compile_backend {self.compile_backend!r} takes only 'default'"
            )
        return self


class SyntheticConfig(StrictModel):
    """The synthetic cross-lingual benchmark (the embedded default). See fastrobust.data.synthetic.

    Languages share ``concepts`` concepts grouped into ``topics``; every language has its own
    word for each concept plus ``synonyms_per_concept`` within-language synonyms. The
    "pretrained" word-embedding table puts every word of the first (anchor) language at its
    concept vector (+ a synonym offset of RMS ``synonym_spread`` relative to the concept
    vector), and every other language's word at the anchor word's vector + a random offset of
    relative RMS ``misalignment``. A tiny BERT then gets ``pretrain_steps`` of multilingual
    masked-LM pretraining with that table frozen.
    """

    languages: list[str] = Field(
        default_factory=lambda: ["en", "xa", "xb", "xc"],
        min_length=2,
        description="language codes; the first is the anchor (training) language",
    )
    misalignment: float = Field(
        1.0, ge=0, description="RMS of a non-anchor word's offset / RMS of a concept vector; 0 = aligned"
    )
    misalignment_kind: Literal["word", "rotation"] = Field(
        "word",
        description=(
            "word: an independent random offset per word; rotation: one random rotation per language "
            "(angle ~ misalignment), shared by all its words, so similarities within a language are kept "
            "and only pairs of two languages are misaligned"
        ),
    )
    concepts: int = Field(240, ge=8)
    topics: int = Field(12, ge=1, description="concepts are split into topics; a sentence stays in one")
    synonyms_per_concept: int = Field(2, ge=1)
    synonym_spread: float = Field(0.5, ge=0, description="RMS of a synonym's offset / RMS of a concept")
    embedding_scale: float = Field(
        1.0,
        gt=0,
        description=(
            "per-coordinate RMS of the concept vectors in the input embedding table; fine-tuning moves "
            "a row by ~learning rate per step whatever its size, so a larger scale means less drift "
            "of the English rows relative to their norm"
        ),
    )
    min_words: int = Field(6, ge=2)
    max_words: int = Field(10, ge=2)
    replace_fraction: float = Field(
        1.0, gt=0, le=1, description="share of a sentence's concepts replaced to make a negative pair"
    )
    train_size: int = Field(4000, ge=8)
    dev_size: int = Field(400, ge=8)
    test_size: int = Field(400, ge=8)
    hidden_size: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(
        0.1, ge=0, lt=1, description="hidden and attention dropout of the encoder (pretraining, fine-tuning)"
    )
    pretrain_steps: int = Field(400, ge=0, description="masked-LM steps with the word embeddings frozen")
    pretrain_batch_size: int = Field(64, ge=1)
    pretrain_learning_rate: float = Field(2e-3, gt=0)
    seed: int = 0
    cache_dir: str | None = Field(
        None, description="where built benchmarks are cached; null = ~/.cache/fastrobust/synthetic"
    )

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        if len(set(self.languages)) != len(self.languages):
            raise ValueError(f"languages: codes must be unique, got {self.languages}")
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) must be >= min_words ({self.min_words})")
        if self.concepts // self.topics < 2 * self.max_words:
            raise ValueError(
                f"topics: {self.concepts} concepts in {self.topics} topics leave fewer than 2 * max_words "
                f"= {2 * self.max_words} concepts per topic (needed to draw two disjoint sentences)"
            )
        if self.hidden_size % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden_size ({self.hidden_size})")
        return self


class TaskConfig(StrictModel):
    """The task: a preset (``pawsx``, ``xnli``), the ``synthetic`` benchmark, or ``custom``.

    ``custom`` is any sentence or sentence-pair classification task: ``text_columns`` names the
    text column (one) or the two sentence columns (a pair) of the files or hub dataset,
    ``label_column`` the label; ``labels`` lists the label names in id order (null: the sorted
    distinct values of the training labels). Local files are ``train-<lang>``, ``dev-<lang>``,
    ``test-<lang>`` (.tsv/.jsonl/.csv); with ``languages: null`` the languages are those of the
    ``test-<lang>`` files (hub: the dataset's configs). G-XLT is built only for pair tasks.
    The presets fix their columns and labels; the same keys override them.
    """

    name: Literal["pawsx", "xnli", "synthetic", "custom"] = "synthetic"
    source: Literal["auto", "hub", "local"] = "auto"
    path: str | None = Field(
        None, description="local folder (train-<lang>.<ext>, ...), or with source hub any load_dataset path"
    )
    format: Literal["tsv", "jsonl", "csv"] = "tsv"
    text_columns: list[str] | None = Field(
        None,
        min_length=1,
        max_length=2,
        description="custom: the text column, or the 2 sentence columns of a pair task; null = the preset's",
    )
    label_column: str = "label"
    labels: list[str] | None = Field(
        None, min_length=2, description="label names in id order; null = the preset's, or read from the data"
    )
    languages: list[str] | None = Field(
        None, description="null = every language of the task (or of the files)"
    )
    train_language: str = "en"
    gxlt: bool = True
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1, description="first N examples of every dev/test set")
    gxlt_pairs: Literal["all", "with_train_language"] | list[str] = Field(
        "all",
        description="G-XLT pairs to test: all ordered pairs, those with the train language on one side "
        "(2n-1 instead of n*n), or a list such as [en-de, de-en] (sentence1 language - sentence2 language)",
    )
    max_gxlt_examples: int | None = Field(
        None, ge=1, description="first N examples of every G-XLT pair set; null = as the test sets"
    )
    synonyms: str | None = Field(None, description="JSON word -> [synonyms] table for RS-DA")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        for key in ("text_columns", "labels"):
            values = getattr(self, key) or []
            dup = sorted({x for x in values if values.count(x) > 1})
            if dup:
                raise ValueError(f"{key}: {dup} listed twice")
        if self.name == "custom" and not self.text_columns:
            raise ValueError(
                "text_columns: required for task 'custom', e.g. [text] (one sentence) "
                "or [sentence1, sentence2] (a pair)"
            )
        if self.name == "synthetic" and (self.text_columns or self.labels):
            raise ValueError("text_columns/labels: the synthetic benchmark fixes its own columns and labels")
        return self


# transformers' schedules that need nothing but the warmup and total step counts; the others
# (reduce_lr_on_plateau, cosine_with_min_lr, warmup_stable_decay, ...) need arguments we do not pass.
Scheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]


class OptimConfig(StrictModel):
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(32, ge=1, description="effective (global) batch size per optimizer step")
    micro_batch_size: int | None = Field(
        None, ge=1, description="per device and forward; null = batch_size / world size (no accumulation)"
    )
    scheduler: Scheduler = Field(
        "linear", description="learning-rate schedule (transformers' get_scheduler) after linear warmup"
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    nonfinite_patience: int = Field(
        10,
        ge=0,
        description="optimizer steps in a row with a non-finite loss or gradient norm that are skipped "
        "before the run stops as diverged (0 = stop at the first)",
    )


class EvalConfig(StrictModel):
    every_steps: int | None = Field(None, ge=1, description="dev evaluation cadence; null = every epoch")
    batch_size: int = Field(64, ge=1)
    gxlt: bool = True


class OutputConfig(StrictModel):
    dir: str = "runs/fastrobust"
    save_model: bool = True
    checkpoint_every: int | None = Field(
        None, ge=1, description="steps between checkpoints, and one at the end of training; null = none"
    )
    checkpoint_minutes: float | None = Field(
        10.0,
        gt=0,
        description="minutes of training between checkpoints, so an interruption loses at most that "
        "much (SIGINT/SIGTERM also write one); null = none",
    )
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints a run keeps")
    keep_finished_checkpoints: bool = Field(
        False,
        description="keep a run's checkpoints once it has finished (with checkpoint_every, one of the "
        "last step among them), e.g. to train it further; false = removed once its results are written",
    )
    log_every: int = Field(10, ge=1)
    tensorboard: bool = True


class AverageConfig(StrictModel):
    """Weight averaging (SWA-style, uniform): snapshots of the trainable weights taken at steps
    ``s0, s0 + every_steps, ...`` up to the last step, with ``s0 = max(1, ceil(start * total_steps))``,
    are averaged with equal weight. The run is evaluated both as trained (the best English-dev
    checkpoint) and averaged; the averaged run is written as ``<label>+avg``."""

    start: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="fraction of the optimizer steps after which snapshots begin (0 = from step 1)",
    )
    every_steps: int = Field(1, ge=1, description="optimizer steps between two snapshots")


class DeepSpeedSection(StrictModel):
    config: str | None = Field(None, description="DeepSpeed JSON; its 'auto' fields are filled from optim")


class Config(StrictModel):
    name: str = "fastrobust"
    seed: int = Field(0, description="seed of the classifier head, data order, dropout and noise draws")
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="train every method once per seed (runs in <method>/seed-<k>/); when set, seed is unused",
    )
    parallel: int = Field(
        1,
        ge=1,
        description=(
            "train up to N (method, seed) runs at once in worker processes (single-process CPU runs; "
            "elsewhere the runs go one by one, with a note)"
        ),
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    methods: list[MethodConfig] = Field(default_factory=lambda: [BaselineConfig()], min_length=1)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    average: AverageConfig | None = Field(
        None,
        description="weight averaging of snapshots taken during training (null = off); every run is "
        "then also evaluated and written averaged, as <label>+avg",
    )
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)

    @model_validator(mode="after")
    def _check(self) -> Config:
        labels = [method_label(m) for m in self.methods]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"methods: labels must be unique, {dup} appear twice (set 'label')")
        if self.task.name != "synthetic" and self.model.name_or_path is None:
            raise ValueError("model.name_or_path: required unless task.name is 'synthetic'")
        if self.seeds is not None:
            dup = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
            if dup:
                raise ValueError(f"seeds: each seed once, {dup} appear twice")
        return self

    @property
    def run_seeds(self) -> list[int]:
        """The seeds every method is trained with: ``seeds``, or ``[seed]``."""
        return list(self.seeds) if self.seeds is not None else [self.seed]
