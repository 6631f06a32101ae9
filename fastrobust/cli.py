"""The ``fastrobust`` command: ``train``, ``evaluate``, ``compare``, ``certify``, ``augment``,
``synonyms``.

Each subcommand lives next to the code it drives and exposes ``add_arguments(parser)``
and ``run(args) -> int``. Bad input (``FastrobustError``, a missing file) prints one
line ``fastrobust <cmd>: error: ...`` and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "train": ("fastrobust.train.cli", "fine-tune (baseline, AT, FreeLB, RS-RP, RS-DA) and evaluate"),
    "evaluate": ("fastrobust.evaluate.cli", "XLT and G-XLT report of a trained model directory"),
    "compare": (
        "fastrobust.evaluate.compare_cli",
        "merge finished runs into one comparison (mean ± sd over seeds, bootstrap intervals)",
    ),
    "certify": ("fastrobust.methods.certify_cli", "certified accuracy of the smoothed classifier"),
    "augment": (
        "fastrobust.methods.augment_cli",
        "write synonym-augmented copies of a training file (RS-DA)",
    ),
    "synonyms": ("fastrobust.data.synonyms_cli", "build an English synonym table for RS-DA from WordNet"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastrobust", description="Robust fine-tuning of multilingual encoders (XLT and G-XLT)."
    )
    # The deepspeed launcher inserts --local_rank=N right after the script/module name, i.e.
    # before the subcommand; the rank is also in the LOCAL_RANK environment variable, which we use.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fastrobust.errors import FastrobustError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (FastrobustError, FileNotFoundError) as exc:
        print(f"fastrobust {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastrobust {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
