"""``fastrobust certify MODEL_DIR``: certified accuracy of the smoothed classifier per language.

For each evaluation language, the first ``--max-examples`` test examples are certified
with Cohen et al.'s CERTIFY in the input-embedding space (``fastrobust.methods.smoothing``):
Gaussian noise of scale sigma on the word embeddings of real tokens, n0 selection samples,
n estimation samples, level alpha. The certified accuracy at radius r is the fraction of
examples whose certified class is the gold label with a radius >= r (abstentions count as
wrong). ``--sigma`` and ``--radii`` are in the same unit: embedding units with
``--sigma-mode absolute``, multiples of the RMS of the embedding table with ``relative``.

MODEL_DIR, ``--config`` and ``--set`` are read exactly as by ``fastrobust evaluate``
(MODEL_DIR/fastrobust.json gives the task and max_length). Writes ``certify.json`` and
``certify.md`` to ``--out`` (default MODEL_DIR/../certify) and prints the table.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastrobust.errors import ConfigError, DataError
from fastrobust.evaluate.cli import resolve, resolve_device
from fastrobust.fileio import atomic_write_json, atomic_write_text
from fastrobust.progress import library_bars_off

if TYPE_CHECKING:  # annotations only
    import datasets
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from fastrobust.data.loader import TaskData

DEFAULT_RADII = "0,0.25,0.5,1,2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="trained HF model folder (with fastrobust.json)"
    )
    parser.add_argument("--config", default=None, help="YAML config whose task section to certify on")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key"
    )
    parser.add_argument("--sigma", type=float, default=0.5, help="noise scale of the smoothed classifier")
    parser.add_argument(
        "--sigma-mode",
        choices=("absolute", "relative"),
        default="relative",
        help="sigma and radii in embedding units, or in multiples of the embedding-table RMS (default)",
    )
    parser.add_argument("--n0", type=int, default=100, help="selection samples per example")
    parser.add_argument("-n", "--n", dest="n", type=int, default=1000, help="estimation samples per example")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    parser.add_argument(
        "--radii", default=DEFAULT_RADII, help=f"comma-separated radii (default {DEFAULT_RADII})"
    )
    parser.add_argument("--languages", default=None, help="comma-separated subset of the task's languages")
    parser.add_argument(
        "--max-examples", type=int, default=100, help="test examples per language (default 100)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="noisy sequences per forward pass (default 256)"
    )
    parser.add_argument("--examples-per-batch", type=int, default=8, help="examples certified together")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    parser.add_argument(
        "--offsets",
        default=None,
        metavar="FILE",
        help="saved label-free offsets (calibration.json of `fastrobust calibrate`): the base classifier's "
        "logits of each language named by a target get them before every vote",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: MODEL_DIR/../certify)")


def parse_radii(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]; ConfigError naming --radii on anything else."""
    try:
        radii = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--radii: expected comma-separated numbers, got {text!r}") from None
    if not radii or any(not math.isfinite(r) or r < 0 for r in radii):
        raise ConfigError(f"--radii: expected one or more finite numbers >= 0, got {text!r}")
    return sorted(set(radii))


def _check_args(args: argparse.Namespace) -> list[float]:
    if not math.isfinite(args.sigma) or args.sigma <= 0:
        raise ConfigError(f"--sigma: must be a finite number > 0, got {args.sigma}")
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha: must be in (0, 1), got {args.alpha}")
    for name in ("n0", "n", "max_examples", "batch_size", "examples_per_batch"):
        value = getattr(args, name)
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.seed < 0:
        raise ConfigError(f"--seed: must be >= 0, got {args.seed}")
    return parse_radii(args.radii)


def certified_accuracy(correct: list[bool], radius: list[float], radii: list[float]) -> dict[str, float]:
    """{str(r): fraction of examples certified correct with radius >= r}."""
    total = len(correct)
    return {
        f"{r:g}": (sum(1 for c, rad in zip(correct, radius) if c and rad >= r) / total if total else 0.0)
        for r in radii
    }


def format_table(results: dict[str, dict], radii: list[float]) -> str:
    header = ["language", "examples", "abstain %"] + [f"r={r:g}" for r in radii]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lang, res in results.items():
        cells = [lang, str(res["examples"]), f"{100 * res['abstain_rate']:.1f}"]
        cells += [f"{100 * res['certified_accuracy'][f'{r:g}']:.1f}" for r in radii]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with library_bars_off():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Checks the arguments, certifies every language, writes and prints the results."""
    radii = _check_args(args)
    cfg, max_length, default_out = resolve(args)
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else default_out.parent / "certify"

    # the model's libraries, after the arguments are checked (a wrong one fails at once)
    from fastrobust.data import load_task
    from fastrobust.methods.embeddings import embedding_rms

    task = load_task(cfg.task.model_copy(update={"gxlt": False}))
    languages = _languages(args.languages, task)
    tokenizer, model = _load_model(args.model_dir, task, device)
    unit = embedding_rms(model) if args.sigma_mode == "relative" else 1.0
    offsets = _offsets(args.offsets, task, languages)
    results = {
        lang: _certify_language(
            model,
            tokenizer,
            task.test[lang],
            args,
            lang_index,
            device,
            unit=unit,
            radii=radii,
            max_length=max_length,
            offsets=offsets.get(lang),
        )
        for lang_index, lang in enumerate(languages)
    }
    payload = {
        "model_dir": str(Path(args.model_dir).resolve()),
        "task": task.name,
        "sigma": args.sigma,
        "sigma_mode": args.sigma_mode,
        "sigma_absolute": args.sigma * unit,
        "embedding_rms": unit if args.sigma_mode == "relative" else None,
        "n0": args.n0,
        "n": args.n,
        "alpha": args.alpha,
        "radii": radii,
        "radius_unit": "embedding-table RMS" if args.sigma_mode == "relative" else "embedding units",
        "max_length": max_length,
        "languages": results,
        "offsets": {lang: b.tolist() for lang, b in offsets.items()},
    }
    _write_results(out, payload, args)
    return 0


def _offsets(path: str | None, task: TaskData, languages: list[str]) -> dict[str, Any]:
    """{language: offsets tensor (C,)} of the languages ``path``'s calibration file names."""
    if path is None:
        return {}
    import torch  # loaded with the model anyway

    from fastrobust.evaluate.offsets import read_calibration

    cal = read_calibration(path, task=task.name, label_names=task.label_names)
    return {
        lang: torch.tensor(cal.offsets(lang), dtype=torch.float32)
        for lang in languages
        if lang in cal.targets
    }


def _languages(text: str | None, task: TaskData) -> list[str]:
    """The languages ``--languages`` names (all of the task's when not given); ConfigError on an
    unknown one."""
    if not text:
        return task.languages
    wanted = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in task.test]
    if unknown:
        raise ConfigError(f"--languages: {unknown} not among the task's test languages {sorted(task.test)}")
    return wanted


def _load_model(model_dir: str, task: TaskData, device: torch.device) -> tuple[Any, Any]:
    """(tokenizer, classifier in eval mode on ``device``) of MODEL_DIR; DataError when the model's
    label count is not the task's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # ~1.3 s: not for --help

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device).eval()
    if model.config.num_labels != len(task.label_names):
        raise DataError(
            f"MODEL_DIR: the model has {model.config.num_labels} labels but task {task.name} has "
            f"{len(task.label_names)} ({', '.join(task.label_names)})"
        )
    return tokenizer, model


def _certify_language(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: datasets.Dataset,
    args: argparse.Namespace,
    lang_index: int,
    device: torch.device,
    *,
    unit: float,
    radii: list[float],
    max_length: int,
    offsets: torch.Tensor | None = None,
) -> dict[str, Any]:
    """CERTIFY on the first ``--max-examples`` examples of one language's test set: examples,
    abstention rate, certified accuracy per radius and mean radius of the correct ones (radii in
    the unit of ``--sigma``: ``unit`` embedding units)."""
    # datasets and torch: loaded once a model is certified, not for --help
    from fastrobust.data import encode_dataset, make_collator
    from fastrobust.methods.smoothing import ABSTAIN, certify, derive_seed

    collate = make_collator(tokenizer)
    data = data.select(range(min(args.max_examples, len(data))))
    encoded = encode_dataset(data, tokenizer, max_length)
    keep = [
        c for c in encoded.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")
    ]
    rows = [dict(zip(keep, vals)) for vals in zip(*(encoded[c] for c in keep))]
    correct: list[bool] = []
    radius: list[float] = []
    abstained = 0
    for start in range(0, len(rows), args.examples_per_batch):
        batch = collate(rows[start : start + args.examples_per_batch])
        labels = batch.pop("labels")
        batch = {k: v.to(device) for k, v in batch.items()}
        res = certify(
            model,
            batch,
            sigma=args.sigma * unit,
            n0=args.n0,
            n=args.n,
            alpha=args.alpha,
            batch_size=args.batch_size,
            # one independent stream per (seed, language, batch): no two batches share noise
            seed=derive_seed(args.seed, lang_index, start),
            offsets=offsets,
        )
        abstained += int((res.prediction == ABSTAIN).sum())
        correct += (res.prediction == labels.cpu()).tolist()
        radius += (res.radius / unit).tolist()  # back in the unit of --sigma
    return {
        "examples": len(rows),
        "abstain_rate": abstained / len(rows) if rows else 0.0,
        "certified_accuracy": certified_accuracy(correct, radius, radii),
        "mean_radius_correct": (sum(r for c, r in zip(correct, radius) if c) / max(1, sum(correct))),
    }


def _write_results(out: Path, payload: dict[str, Any], args: argparse.Namespace) -> None:
    """Writes ``certify.json`` and ``certify.md`` to ``out`` and prints the table."""
    table = format_table(payload["languages"], payload["radii"])
    title = (
        f"Certified accuracy (%) of the smoothed classifier, sigma = {args.sigma:g} ({args.sigma_mode}), "
        f"n0 = {args.n0}, n = {args.n}, alpha = {args.alpha:g}; radii in {payload['radius_unit']}"
    )
    atomic_write_json(out / "certify.json", payload)
    atomic_write_text(out / "certify.md", f"{title}\n\n{table}\n")
    print(title + "\n" + table)
    print(f"\nwritten to {out}")
