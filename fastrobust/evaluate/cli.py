"""``fastrobust evaluate MODEL_DIR``: XLT and G-XLT report of a trained model folder.

MODEL_DIR is a Hugging Face model folder (config, weights, tokenizer) as the trainer saves it, with
``fastrobust.json`` = ``{"task": <task section>, "max_length": int}``. The task comes from that
file, or from ``--config`` (its ``task`` section); ``--set task.key=value`` overrides either.
The sequence length is the one the model was trained with unless ``--set model.max_length=N``.
Writes the report files (see ``write_report``) and ``predictions.npz`` (per-example class
probabilities and labels of every set, for ``fastrobust compare`` and calibration checks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastrobust.errors import ConfigError, DataError
from fastrobust.progress import library_bars_off

META_FILE = "fastrobust.json"
# Imports inside the functions below: ``fastrobust evaluate --help`` defines this module's options
# and answers at once: it loads none of numpy, torch, datasets, transformers or pydantic.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="trained HF model folder (with fastrobust.json)"
    )
    parser.add_argument("--config", default=None, help="YAML config whose task section to evaluate on")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key"
    )
    parser.add_argument("--out", default=None, help="report folder (default: MODEL_DIR/../evaluation)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="evaluation batch size (default: eval.batch_size)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "--calibration-reference",
        choices=("source", "prior"),
        default="source",
        help="reference class rates of the label-free correction in the report's calibrated accuracy: the "
        "model's own on the training language's test set (default), or the training labels' prior",
    )
    parser.add_argument(
        "--offsets",
        default=None,
        metavar="FILE",
        help="apply saved label-free offsets (a calibration.json, e.g. MODEL_DIR/calibration.json from "
        "`fastrobust calibrate`) to every test set named by one of its targets (a language, or a pair "
        "a-b) before anything is scored",
    )
    parser.add_argument(
        "--no-gxlt",
        action="store_true",
        help="skip the G-XLT pairs (or fewer: --set task.gxlt_pairs=with_train_language or [en-de,de-en], "
        "--set task.max_gxlt_examples=N)",
    )


def _read_meta(model_dir: Path) -> dict | None:
    path = model_dir / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("task", {}), dict):
        raise DataError(f"{path}: expected an object with a 'task' section")
    return meta


def resolve(args: argparse.Namespace):
    """(Config, max_length, out_dir) from MODEL_DIR/fastrobust.json, --config and --set."""
    # pydantic builds the config schema in ~0.2 s: loaded when the command runs, not for --help
    from fastrobust.config import apply_override, config_from_dict, load_config

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise DataError(f"MODEL_DIR: {model_dir} is not a folder")
    meta = _read_meta(model_dir)
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
    elif meta is not None and "task" not in meta:
        # e.g. saved by RobustTrainer without task=: the file records the method, not the task
        raise ConfigError(f"{model_dir / META_FILE}: has no 'task' section; give --config to say which task")
    elif meta is not None:
        # methods are irrelevant to evaluation; given explicitly so the Config validator sees a parsed list
        data = {
            "task": meta["task"],
            "model": {"name_or_path": str(model_dir)},
            "methods": [{"kind": "baseline"}],
        }
        for override in args.overrides:
            apply_override(data, override)
        cfg = config_from_dict(data, source=str(model_dir / META_FILE))
    else:
        raise ConfigError(
            f"{model_dir / META_FILE}: not found; give --config to say which task to evaluate on"
        )
    max_length = cfg.model.max_length
    overridden = any(o.split("=", 1)[0].strip() == "model.max_length" for o in args.overrides)
    if meta is not None and "max_length" in meta and not overridden:
        max_length = int(meta["max_length"])
    out = Path(args.out) if args.out else model_dir.resolve().parent / "evaluation"
    return cfg, max_length, out


def resolve_device(name: str | None, flag: str = "--device"):
    """A usable ``torch.device`` from ``--device`` (default: cuda when available, else cpu).

    ConfigError naming ``flag`` for a malformed name or a CUDA device this machine does not have
    (instead of torch's assertion deep inside the first ``.to(device)``).
    """
    import torch  # ~1.6 s: not for ``fastrobust evaluate --help``

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{flag}: {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{flag}: {name!r} requested but CUDA is not available on this machine; use cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{flag}: {name!r} requested but this machine has {count} CUDA device(s)")
    elif device.type not in ("cpu", "meta"):
        backend = getattr(torch, device.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ConfigError(f"{flag}: {name!r} requested but {device.type} is not available here")
    return device


def check_batch_size(value: int | None, default: int, flag: str = "--batch-size") -> int:
    """``value`` when given (it must be >= 1; 0 is an error, not 'use the default'), else ``default``."""
    if value is None:
        return default
    if value < 1:
        raise ConfigError(f"{flag}: must be >= 1, got {value}")
    return value


# The last linear layer of a sequence-classification head, by the names transformers gives it
# (BERT: classifier; XLM-R: classifier.out_proj; decoder models: score): its rows are the labels.
HEAD_OUTPUT_WEIGHTS = ("classifier.weight", "classifier.out_proj.weight", "score.weight")


def adapter_head_labels(model_dir: Path) -> int | None:
    """The label count of the classifier head saved in adapter folder ``model_dir``, or None
    when the adapter holds no head (then the base checkpoint's is used)."""
    from safetensors import safe_open  # kept out of the --help path with the other model libraries

    weights = model_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
            if key.endswith(HEAD_OUTPUT_WEIGHTS) and "lora_" not in key:
                return int(f.get_slice(key).get_shape()[0])
    return None


def load_classifier(model_dir: Path, num_labels: int):
    """The sequence classifier saved in ``model_dir``: a full model or a LoRA adapter folder.

    An adapter folder (``adapter_config.json``) holds no config of its own: transformers builds
    the base checkpoint's architecture, whose label count is the base's, then loads the adapter
    and the head saved with it. So for an adapter the head's label count is read from the adapter
    file and must be the task's; the base is then built with it (a head of the base checkpoint's
    own is replaced by the adapter's, so its size does not matter).
    """
    from transformers import AutoModelForSequenceClassification  # ~1.3 s: not for --help

    if not (model_dir / "adapter_config.json").is_file():
        return AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    labels = adapter_head_labels(model_dir)
    if labels is not None and labels != num_labels:
        raise DataError(
            f"MODEL_DIR: the adapter's classifier head has {labels} labels but the task has {num_labels}"
        )
    from transformers.utils import logging as hf_logging

    # The base checkpoint lacks the head and pooler that the adapter folder brings: transformers'
    # "MISSING" load report would be about weights the adapter then loads, so it is not shown.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=labels or num_labels, ignore_mismatched_sizes=labels is not None
        )
    finally:
        hf_logging.set_verbosity(level)


def apply_saved_offsets(predictions, path: str, task):
    """``predictions`` with the saved offsets of ``path`` applied to each set named by a target
    (an XLT language, or a G-XLT pair ``a-b``); DataError for a file of another task or labels."""
    from fastrobust.evaluate.calibration import apply_offsets, log_probs
    from fastrobust.evaluate.offsets import read_calibration
    from fastrobust.evaluate.predictions import SetPredictions

    cal = read_calibration(path, task=task.name, label_names=task.label_names)

    def shifted(key: tuple[str, object], p: SetPredictions) -> SetPredictions:
        kind, k = key
        # an XLT set is also the G-XLT diagonal pair (a, a): either name selects it
        names = (k, f"{k}-{k}") if kind == "xlt" else (f"{k[0]}-{k[1]}",)  # type: ignore[index]
        target = next((n for n in names if n in cal.targets), None)
        if target is None:
            return p
        return SetPredictions.from_logits(apply_offsets(log_probs(p.probs), cal.offsets(target)), p.labels)

    return predictions.map_sets(shifted)


def run(args: argparse.Namespace) -> int:
    with library_bars_off():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    cfg, max_length, out = resolve(args)
    batch_size = check_batch_size(args.batch_size, cfg.eval.batch_size)
    device = resolve_device(args.device)
    # transformers, datasets, numpy: loaded after the arguments are checked, never for --help
    from transformers import AutoTokenizer

    from fastrobust.data import load_task
    from fastrobust.evaluate import gxlt_markdown, write_report, xlt_markdown
    from fastrobust.evaluate.predict import predict_task_with_progress
    from fastrobust.evaluate.predictions import FILE_NAME

    gxlt = cfg.task.gxlt and cfg.eval.gxlt and not args.no_gxlt
    task = load_task(cfg.task.model_copy(update={"gxlt": gxlt}))
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = load_classifier(Path(args.model_dir), task.num_labels).to(device)
    if model.config.num_labels != task.num_labels:
        raise DataError(
            f"MODEL_DIR: the model has {model.config.num_labels} labels but task {task.name} has "
            f"{task.num_labels} ({', '.join(task.label_names)})"
        )
    predictions = predict_task_with_progress(
        model,
        tokenizer,
        task,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        gxlt=gxlt,
        progress="test",
    )
    if args.offsets is not None:
        predictions = apply_saved_offsets(predictions, args.offsets, task)
    reference = None
    if args.calibration_reference == "prior":
        from fastrobust.data.xtreme import column
        from fastrobust.evaluate.calibration import class_rates

        reference = class_rates(column(task.train, "label"), task.num_labels).tolist()
    report = predictions.report(reference_rates=reference)
    write_report(report, out, title=f"{task.name}: {Path(args.model_dir).name}")
    predictions.save(out / FILE_NAME)
    print("XLT accuracy (%)\n" + xlt_markdown(report))
    if gxlt:
        print("\nG-XLT accuracy (%)\n" + gxlt_markdown(report))
    print(f"\nreport written to {out}")
    return 0
