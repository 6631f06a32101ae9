"""``fastrobust calibrate MODEL_DIR --inputs FILE --target NAME``: fit label-free offsets for a target.

Reads a batch of *unlabeled* inputs of one target language (or language pair): a TSV, JSONL or CSV
file with the task's text columns (a label column, if there is one, is ignored: nothing here reads
a target label). It fits the per-class logit offsets that give those inputs the reference class
rates (:mod:`fastrobust.evaluate.calibration`) and saves them under NAME in
``MODEL_DIR/calibration.json`` (:mod:`fastrobust.evaluate.offsets`), naming them in the model card.

The reference: ``source`` (default) = the model's own predicted-class rates on the training
language's dev set of the task in MODEL_DIR/fastrobust.json; ``prior`` = the class rates of the
training labels; or ``--rates`` given explicitly. The correction assumes that the target's class
mix is the reference's.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fastrobust.errors import DataError
from fastrobust.progress import library_bars_off


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="trained HF model folder (with fastrobust.json)"
    )
    parser.add_argument("--inputs", required=True, help="unlabeled target inputs: .tsv, .jsonl or .csv")
    parser.add_argument("--target", required=True, help="name the offsets are saved under (e.g. de, en-de)")
    parser.add_argument(
        "--reference",
        choices=("source", "prior"),
        default="source",
        help="reference class rates: the model's own on the source-language dev set (default), or the "
        "training labels' prior",
    )
    parser.add_argument("--rates", default=None, help="explicit reference rates, comma-separated (sum 1)")
    parser.add_argument("--config", default=None, help="YAML config whose task section to use")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: eval.batch_size)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")


def read_unlabeled(path: Path, columns: list[tuple[str, ...]]) -> dict[str, list[str]]:
    """The text columns of an inputs file -> ``{first alias: [texts]}``. ``columns``: the accepted
    names of each text role. TSV/CSV: a header row naming them, or the texts in the first columns."""
    if not path.is_file():
        raise DataError(f"--inputs: {path} is not a file")
    roles = [names[0] for names in columns]
    out: dict[str, list[str]] = {r: [] for r in roles}
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            for role, names in zip(roles, columns, strict=True):
                key = next((n for n in names if isinstance(row, dict) and n in row), None)
                if key is None:
                    raise DataError(f"{path}:{lineno}: no {role} key (accepted: {list(names)})")
                out[role].append(str(row[key]))
        return out
    if path.suffix not in (".tsv", ".csv"):
        raise DataError(f"--inputs: {path} must end in .tsv, .jsonl or .csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ",") if any(r)]
    names = [c.strip().lower() for c in rows[0]] if rows else []
    idx = [next((i for i, n in enumerate(names) if n in {a.lower() for a in al}), None) for al in columns]
    if all(i is not None for i in idx):
        rows = rows[1:]
    else:
        idx = list(range(len(columns)))
    for lineno, r in enumerate(rows, 1):
        if len(r) < len(columns):
            raise DataError(
                f"{path}: row {lineno} has {len(r)} fields, expected the {len(columns)} text columns"
            )
        for role, i in zip(roles, idx, strict=True):
            out[role].append(r[i].strip())
    return out


def run(args: argparse.Namespace) -> int:
    with library_bars_off():
        return _run(args)


def _reference(args: argparse.Namespace, task, model, tokenizer, max_length: int, batch_size: int, device):
    """(name, rates) of the reference class rates (module doc)."""
    from fastrobust.data.xtreme import column
    from fastrobust.evaluate.calibration import check_rates, class_rates
    from fastrobust.evaluate.predict import predict

    c = task.num_labels
    if args.rates is not None:
        try:
            rates = [float(x) for x in args.rates.split(",")]
        except ValueError:
            raise DataError(f"--rates: expected comma-separated fractions, got {args.rates!r}") from None
        return "given", check_rates(rates, c, "--rates").tolist()
    if args.reference == "prior":
        return "prior", class_rates(column(task.train, "label"), c).tolist()
    dev = task.dev.get(task.train_language)
    if dev is None:
        raise DataError(f"--reference source: the task has no {task.train_language} dev set; use --rates")
    pred = predict(model, tokenizer, dev, max_length=max_length, batch_size=batch_size, device=device)
    return "source", class_rates(pred, c).tolist()


def _run(args: argparse.Namespace) -> int:
    from fastrobust.evaluate.cli import check_batch_size, load_classifier, resolve, resolve_device

    args.out = None
    cfg, max_length, _ = resolve(args)
    batch_size = check_batch_size(args.batch_size, cfg.eval.batch_size)
    device = resolve_device(args.device)
    from transformers import AutoTokenizer

    from fastrobust.data import load_task
    from fastrobust.data.tasks import build_spec
    from fastrobust.data.xtreme import texts_dataset
    from fastrobust.evaluate.calibration import fit_offsets
    from fastrobust.evaluate.offsets import load_or_new, save_calibration
    from fastrobust.evaluate.predict import predict_logits

    model_dir = Path(args.model_dir)
    spec = build_spec(cfg.task)
    texts = read_unlabeled(Path(args.inputs), [spec.column_names[r] for r in spec.text_columns])
    n = len(next(iter(texts.values())))
    if n == 0:
        raise DataError(f"--inputs: {args.inputs} holds no inputs; offsets need unlabeled examples")
    task = load_task(cfg.task.model_copy(update={"gxlt": False}))
    cal = load_or_new(model_dir, task.name, task.label_names)  # refuses a file of another task first
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = load_classifier(model_dir, task.num_labels).to(device)
    ref_name, rates = _reference(args, task, model, tokenizer, max_length, batch_size, device)
    # the dataset needs a label column for the collator; these zeros are never read
    inputs = texts_dataset(texts, [0] * n)
    logits = predict_logits(
        model, tokenizer, inputs, max_length=max_length, batch_size=batch_size, device=device
    )
    fit = fit_offsets(logits, rates)
    cal.add(args.target, fit, ref_name)
    path = save_calibration(model_dir, cal)
    shown = ", ".join(f"{name} {100 * r:.1f}%" for name, r in zip(task.label_names, fit.predicted_rates))
    offs = ", ".join(f"{b:+.3f}" for b in fit.offsets)
    print(f"target {args.target}: {n} inputs, offsets [{offs}], predicted rates after: {shown} "
          f"(reference {ref_name}: {', '.join(f'{100 * r:.1f}%' for r in rates)})")  # fmt: skip
    print(f"offsets written to {path} (and the model card)")
    return 0
