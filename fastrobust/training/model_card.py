"""Model cards: the ``README.md`` of a saved model folder, in the Hugging Face model-card layout.

YAML front matter (what the hub reads): ``library_name: transformers``, ``pipeline_tag:
text-classification``, ``base_model``, ``language`` (the evaluation languages), ``datasets``
(when the task has a hub id), ``tags: [fastrobust, <method kind>]``, ``metrics: [accuracy]``;
a LoRA adapter folder says ``library_name: peft`` and adds the tags ``peft`` and ``lora``.
Then markdown: the method and its resolved scales (in embedding units), the training data and
steps, dev selection, the XLT table and the G-XLT summary of this model (accuracy in %, the same
numbers as its ``report/`` and ``summary.json``), the fastrobust version, the command and the
resolved config — so the folder can be pushed to a hub as it is.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fastrobust.fileio import atomic_write_text

if TYPE_CHECKING:  # annotations only
    from fastrobust.config import TaskConfig
    from fastrobust.data.loader import TaskData
    from fastrobust.evaluate.metrics import EvalReport
    from fastrobust.methods.base import RobustMethod

CARD_FILE = "README.md"
_HUB_DATASETS = {"pawsx": "google-research-datasets/paws-x", "xnli": "facebook/xnli"}


def resolved_scales(method: RobustMethod) -> dict[str, Any]:
    """The scales a method trains with, in units of the input embeddings (after ``setup``).

    PGD/FreeLB: epsilon, step_size, init_magnitude; RS-RP: sigma (neftune: alpha and the rule);
    plus ``embedding_rms`` when the scales are relative to it. Empty for baseline and RS-DA.
    A relative scale at an encoder layer (``layer`` >= 1) is resolved per batch against the RMS of
    that layer's hidden states (:mod:`fastrobust.methods.placement`), so it is stated as that rule,
    not as a number in embedding units.
    """
    out: dict[str, Any] = {}
    cfg = method.cfg
    layer = int(getattr(cfg, "layer", 0) or 0)
    relative = "relative" in (getattr(cfg, "scale_mode", None), getattr(cfg, "sigma_mode", None))
    if layer >= 1 and relative:
        unit = f"x the RMS of layer {layer}'s hidden states over real tokens (per batch)"
        names = ("sigma",) if cfg.kind == "rs-rp" else ("epsilon", "step_size", "init_magnitude")
        for name in names:
            value = getattr(cfg, name)
            out[name] = None if value is None else f"{value:g} {unit}"
        return out
    if hasattr(method, "scales"):
        out.update(method.scales())
    elif getattr(cfg, "kind", None) == "rs-rp":
        if cfg.sigma_mode == "absolute":
            out["sigma"] = cfg.sigma
        elif cfg.sigma_mode == "relative" and method.embedding_rms is not None:
            out["sigma"] = cfg.sigma * method.embedding_rms
        elif cfg.sigma_mode == "neftune":
            out["sigma"] = f"{cfg.sigma} / sqrt(L * H) per example (NEFTune; L real tokens, H hidden size)"
    if method.embedding_rms is not None:
        out["embedding_rms"] = method.embedding_rms
    return out


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, as a shell line (``fastrobust`` for the CLI)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    name = Path(argv[0]).name
    head = ["fastrobust"] if name in ("fastrobust", "__main__.py") else ["python", argv[0]]
    return shlex.join([*head, *argv[1:]])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def front_matter(
    *, base_model: str, languages: list[str], task_cfg: TaskConfig, kind: str, adapter: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-classification",
        "base_model": base_model,
        "language": list(languages),
        "tags": ["fastrobust", kind, *(["peft", "lora"] if adapter else [])],
        "metrics": ["accuracy"],
    }
    # the presets' data is the hub dataset even when read from a local copy; a custom task is known
    # by name only when task.path is a hub id (not a local folder)
    dataset = _HUB_DATASETS.get(task_cfg.name)
    if (
        task_cfg.name == "custom"
        and task_cfg.source == "hub"
        and task_cfg.path
        and not Path(task_cfg.path).exists()
    ):
        dataset = task_cfg.path
    if dataset:
        meta["datasets"] = [dataset]
    return meta


def render_model_card(
    *,
    title: str,
    base_model: str,
    task: TaskData,
    task_cfg: TaskConfig,
    method_section: dict[str, Any],
    scales: dict[str, Any],
    training: dict[str, Any],
    report: EvalReport,
    version: str,
    command: str,
    config: dict[str, Any],
    adapter: dict[str, Any] | None = None,
) -> str:
    """The card as a string: YAML front matter + markdown (see the module docstring).

    ``training``: steps, epochs, batch_size, learning_rate, train_examples, precision, seed,
    best_dev_accuracy, best_step, world_size. ``report``: the run's EvalReport of this model.
    ``adapter``: for a LoRA adapter folder, :func:`fastrobust.training.lora.lora_summary`.
    """
    kind = method_section["kind"]
    meta = front_matter(
        base_model=base_model,
        languages=list(report.languages),
        task_cfg=task_cfg,
        kind=kind,
        adapter=adapter is not None,
    )
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += _intro_lines(title, base_model, task, kind, report)
    lines += _method_lines(method_section, scales)
    if adapter is not None:
        lines += _adapter_lines(adapter)
    lines += _training_lines(task, task_cfg, training)
    lines += _xlt_lines(task, report)
    if report.gxlt:
        lines += _gxlt_lines(report)
    lines += _use_and_reproduce_lines(version, command, config)
    return "\n".join(lines)


def _intro_lines(title: str, base_model: str, task: TaskData, kind: str, report: EvalReport) -> list[str]:
    """The title and the one-paragraph description of the model."""
    return [
        f"# {title}",
        "",
        f"`{base_model}` fine-tuned for {'sentence-pair' if task.pair else 'sentence'} classification "
        f"({', '.join(task.label_names)}) on **{task.train_language}** with **{kind}** robust training "
        "(fastrobust: robust fine-tuning so that a multilingual encoder transfers zero-shot to other "
        f"languages), selected on {task.train_language} dev accuracy and tested on "
        f"{len(report.languages)} language(s).",
        "",
    ]


def _method_lines(method_section: dict[str, Any], scales: dict[str, Any]) -> list[str]:
    """The method section: every set key of the method's config, then its resolved scales."""
    lines = ["## Method", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in method_section.items() if v is not None]
    lines += [
        f"| resolved {k} | {v:.6g} |" if isinstance(v, float) else f"| resolved {k} | {v} |"
        for k, v in scales.items()
    ]
    return lines


def _training_lines(task: TaskData, task_cfg: TaskConfig, training: dict[str, Any]) -> list[str]:
    """The training section: the task, its data source and labels, and the ``training`` settings."""
    source = task_cfg.path or _HUB_DATASETS.get(task_cfg.name, "-")
    lines = [
        "",
        "## Training",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| task | {task.name} ({task_cfg.source}: {source}) |",
        f"| labels (id order) | {', '.join(f'{i} = {n}' for i, n in enumerate(task.label_names))} |",
        f"| training language | {task.train_language} |",
    ]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in training.items()]
    return lines


def _xlt_lines(task: TaskData, report: EvalReport) -> list[str]:
    """The XLT table: accuracy (%) and test-set size per language, then the average."""
    lines = [
        "",
        "## Zero-shot cross-lingual transfer (XLT)",
        "",
        f"Accuracy (%) on the test set of each language, trained on {task.train_language} only.",
        "",
        "| language | accuracy (%) | examples |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| {lang} | {_pct(report.xlt.get(lang))} | {report.xlt_sizes.get(lang, '-')} |"
        for lang in report.languages
    ]
    lines += [f"| **average** | {_pct(report.xlt_avg)} | |", ""]
    return lines


def _gxlt_lines(report: EvalReport) -> list[str]:
    """The G-XLT summary: same-language, cross-language and all-pair averages and their gap."""
    return [
        "## Generalized cross-lingual transfer (G-XLT)",
        "",
        f"Accuracy (%) over {len(report.gxlt)} ordered language pairs (sentence 1 in one language, "
        "sentence 2 in another); the full matrix is in the run's `report/`.",
        "",
        "| summary | accuracy (%) |",
        "| --- | ---: |",
        f"| same-language pairs | {_pct(report.gxlt_same_lang_avg)} |",
        f"| cross-language pairs | {_pct(report.gxlt_cross_lang_avg)} |",
        f"| all pairs | {_pct(report.gxlt_avg)} |",
        f"| gap (same - cross) | {_pct(report.gap)} |",
        "",
    ]


def _use_and_reproduce_lines(version: str, command: str, config: dict[str, Any]) -> list[str]:
    """How to load the model, and what reproduces it: version, command, resolved config."""
    return [
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        'classify = pipeline("text-classification", model="PATH_OR_HUB_ID")',
        "```",
        "",
        "## Reproduce",
        "",
        f"fastrobust {version}; command: `{command}`" if command else f"fastrobust {version}",
        "",
        "<details><summary>resolved config</summary>",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]


def _adapter_lines(adapter: dict[str, Any]) -> list[str]:
    """The card's LoRA section: what the folder holds and the adapter's settings."""
    share = 100 * adapter["trainable_parameters"] / max(1, adapter["total_parameters"])
    lines = [
        "",
        "## LoRA adapter",
        "",
        "This folder holds a LoRA adapter (PEFT), not a full model: the base model "
        f"`{adapter['base_model']}` stays frozen, only the adapter and the modules listed below were "
        f"trained ({adapter['trainable_parameters']:,} of {adapter['total_parameters']:,} parameters, "
        f"{share:.2f}%). "
        "`AutoModelForSequenceClassification.from_pretrained(folder)` (with `peft` installed) loads the "
        "base model and the adapter.",
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    for key in ("r", "alpha", "dropout", "target_modules", "modules_to_save"):
        value = adapter[key]
        lines.append(f"| {key} | {', '.join(value) if isinstance(value, list) else value} |")
    return lines


def write_model_card(folder: Path, text: str) -> Path:
    """Writes ``folder/README.md`` atomically."""
    return atomic_write_text(Path(folder) / CARD_FILE, text)


def parse_model_card(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, markdown body) of a card; ValueError when the front matter is missing."""
    if not text.startswith("---\n"):
        raise ValueError("model card: no YAML front matter (the file must start with '---')")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ValueError("model card: the YAML front matter is not closed by '---'")
    meta = yaml.safe_load(text[4:end])
    if not isinstance(meta, dict):
        raise ValueError("model card: the front matter is not a mapping")
    return meta, text[end + 5 :]
