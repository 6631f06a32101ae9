"""``fastrobust train``: fine-tune the methods of a config and evaluate them (XLT, G-XLT).

Single process: ``fastrobust train --config F``. Under a launcher:
``deepspeed --num_gpus N --module fastrobust train --config F --deepspeed configs/ds/zero3.json``
or ``torchrun --nproc_per_node N -m fastrobust train --config F``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=None, metavar="FILE", help="YAML recipe (default: the packaged demo.yaml)"
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
        help="train only the method section with this label (repeatable; default: all)",
    )
    parser.add_argument(
        "--deepspeed",
        default=None,
        metavar="DS_JSON",
        help='DeepSpeed config (e.g. configs/ds/zero3.json); its "auto" fields are filled from the config',
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each method from its newest complete checkpoint (finished seeds are skipped)",
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
    # Launchers may pass the local rank as an argument; LOCAL_RANK in the environment is what we use.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from fastrobust.errors import ConfigError
    from fastrobust.train import train

    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(
                f"--seeds {args.seeds!r}: expected integers separated by commas, e.g. 0,1,2"
            ) from None
    train(
        args.config,
        args.overrides,
        methods=args.methods,
        resume=args.resume,
        deepspeed=args.deepspeed,
        seeds=seeds,
        parallel=args.parallel,
    )
    return 0
