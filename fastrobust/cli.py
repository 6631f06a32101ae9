"""The ``fastrobust`` command: ``train``, ``evaluate``, ``compare``, ``calibrate``, ``certify``,
``augment``, ``synonyms``.

Each subcommand lives next to the code it drives and exposes ``add_arguments(parser)``
and ``run(args) -> int``. Errors print one line ``fastrobust <cmd>: error: ...`` without a
traceback. Exit codes: 0 done; 2 bad input (``FastrobustError``, a missing file); 1 a result could
not be written (disk full, permissions: the line names the path and where the results went);
3 training diverged (``DivergenceError``); 130 / 143 stopped by SIGINT / SIGTERM (after a checkpoint).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence

from fastrobust.errors import FastrobustError
from fastrobust.fileio import describe_os_error

SUBCOMMANDS = {
    "train": ("fastrobust.training.cli", "fine-tune (baseline, AT, FreeLB, RS-RP, RS-DA) and evaluate"),
    "evaluate": ("fastrobust.evaluate.cli", "XLT and G-XLT report of a trained model directory"),
    "compare": (
        "fastrobust.evaluate.compare_cli",
        "merge finished runs into one comparison (mean ± sd over seeds, bootstrap intervals)",
    ),
    "calibrate": (
        "fastrobust.evaluate.calibrate_cli",
        "fit label-free logit offsets for a target language on unlabeled inputs, saved beside the model",
    ),
    "certify": ("fastrobust.methods.certify_cli", "certified accuracy of the smoothed classifier"),
    "augment": (
        "fastrobust.methods.augment_cli",
        "write synonym-augmented copies of a training file (RS-DA)",
    ),
    "synonyms": ("fastrobust.data.synonyms_cli", "build an English synonym table for RS-DA from WordNet"),
}


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``fastrobust`` parser; ``commands``: the subcommands whose options are defined (default all).

    Defining a subcommand's options imports its module; ``main`` defines only the one being run,
    so that ``fastrobust --help`` imports nothing heavy (torch, datasets) and answers at once.
    """
    parser = argparse.ArgumentParser(
        prog="fastrobust",
        description="Robust fine-tuning of multilingual encoders (XLT and G-XLT).",
        epilog="Run `fastrobust COMMAND --help` for a command's options; `fastrobust train` alone "
        "runs the synthetic demo.",
    )
    # The deepspeed launcher inserts --local_rank=N right after the script/module name, i.e.
    # before the subcommand; the rank is also in the LOCAL_RANK environment variable, which we use.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = set(SUBCOMMANDS) if commands is None else set(commands)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub_parser.set_defaults(_module=module)
        if name in wanted:
            importlib.import_module(module).add_arguments(sub_parser)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first argument that is one), or None."""
    return next((a for a in argv if a in SUBCOMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    parser = build_parser([command] if command else [])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (FastrobustError, FileNotFoundError) as exc:
        print(f"fastrobust {args.command}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except OSError as exc:  # a write that failed outside the places that rescue results
        print(f"fastrobust {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastrobust {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
