"""``fastrobust train``: fine-tune the methods of a config and evaluate them (XLT, G-XLT).

Single process: ``fastrobust train --config F``. Under a launcher:
``deepspeed --num_gpus N --module fastrobust train --config F --deepspeed configs/ds/zero3.json``
or ``torchrun --nproc_per_node N -m fastrobust train --config F``.

This module imports nothing heavy: ``fastrobust train --help`` answers without loading torch, and
the config is validated before torch is imported, so a wrong key fails at once.
"""

from __future__ import annotations

import argparse
import importlib.resources
import textwrap
from pathlib import Path

import yaml

from fastrobust.errors import ConfigError
from fastrobust.methods import registry
from fastrobust.training import train

DESCRIPTION = """\
Fine-tune a multilingual encoder on English with one or more robust-training methods, select each
method's checkpoint on English dev accuracy, then evaluate it on every language (XLT) and every
ordered language pair (G-XLT). Without --config: the synthetic demo (nothing is downloaded)."""

EPILOG = """\
the baseline and RS-DA on your own data (a packaged recipe by name, overridden with --set):
  fastrobust synonyms -o synonyms.json          # English synonyms from WordNet, for RS-DA
  fastrobust train --config pawsx_xlmr_base --method baseline --method rs-da \\
      --set model.name_or_path=xlm-roberta-base --set task.synonyms=synonyms.json \\
      --set task.path=/data/my_pawsx --set output.dir=runs/mine

  model.name_or_path  a Hugging Face hub name or a local folder (config, weights, tokenizer files)
  task.name           pawsx (labels 0/1 = not paraphrase/paraphrase) or xnli (entailment,
                      neutral, contradiction); the label convention of your files
  task.path           a folder with train-en.tsv, dev-<lang>.tsv, test-<lang>.tsv; each line
                      "sentence1<TAB>sentence2<TAB>label" (or .jsonl with --set task.format=jsonl);
                      without task.path the task is read from the Hugging Face hub
  task.languages      e.g. [en,de,fr]: the evaluation languages (default: every language of the task)
  --method LABEL      a method section's label, which is its kind unless it sets `label`:
{methods}
  output.dir          where models, reports and checkpoints go; a used folder is refused unless
                      --overwrite or --resume

packaged recipes (--config NAME): {recipes}
every key with its value: --print-config; their bounds: fastrobust/config/schema.py, methods.py;
data formats: docs/data.md; the methods and their scales: docs/methods.md (source repository)."""


def _recipes() -> str:
    # read here rather than through fastrobust.config, whose pydantic schema takes 0.2 s to build
    try:
        folder = Path(str(importlib.resources.files("fastrobust.configs")))
        return ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "(none found)"
    except Exception:  # the help must print even if the package data is missing
        return "(none found)"


def _methods() -> str:
    # the registry's kinds with their help lines, indented under --method
    indent = " " * 22
    return textwrap.fill(
        ", ".join(registry.help_lines()), width=100, initial_indent=indent, subsequent_indent=indent
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG.format(recipes=_recipes(), methods=_methods())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--config",
        "-c",
        default=None,
        metavar="FILE|RECIPE",
        help="YAML recipe: a file, or the name of a packaged recipe (default: the packaged demo)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.learning_rate=3e-5 (repeatable)",
    )
    parser.add_argument(
        "--method",
        "-m",
        dest="methods",
        action="append",
        default=None,
        metavar="LABEL",
        help="train only the method section with this label (repeatable; default: all), e.g. "
        "-m baseline -m rs-da: RS-DA is the method docs/methods.md recommends",
    )
    parser.add_argument(
        "--deepspeed",
        default=None,
        metavar="DS_JSON",
        help='DeepSpeed config (e.g. configs/ds/zero3.json); its "auto" fields are filled from the config',
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue each method from its newest complete checkpoint (finished runs are skipped)",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of the methods being run if output.dir already holds some",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,...",
        help="train every method once per seed, e.g. --seeds 0,1,2 (replaces seed/seeds of the config); "
        "the comparison then reports mean ± sd over seeds and bootstrap intervals",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="CPU: train up to N (method, seed) runs at once in worker processes (default: config, 1)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the config the run would use (recipe + --set + --seeds/--parallel/--deepspeed, only "
        "the --method sections) as YAML, every key included, and exit",
    )
    # Launchers may pass the local rank as an argument; LOCAL_RANK in the environment is what we use.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    # pydantic builds the config schema in ~0.2 s: loaded when a command runs, not for --help
    from fastrobust.config import load_config

    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(
                f"--seeds {args.seeds!r}: expected integers separated by commas, e.g. 0,1,2"
            ) from None
    # Validated here, before the trainer imports torch and transformers: a typo fails in a blink.
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        from fastrobust.training.call import apply_call_arguments, printed_config

        cfg, sections = apply_call_arguments(
            cfg, methods=args.methods, deepspeed=args.deepspeed, seeds=seeds, parallel=args.parallel
        )
        print(yaml.safe_dump(printed_config(cfg, sections), sort_keys=False), end="")
        return 0
    train(
        cfg,
        methods=args.methods,
        resume=args.resume,
        deepspeed=args.deepspeed,
        seeds=seeds,
        parallel=args.parallel,
        overwrite=args.overwrite,
    )
    return 0
