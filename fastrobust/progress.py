"""Progress display: our own tqdm bars only, the libraries' bars switched off while we run.

``datasets`` draws a bar for every ``map`` (one per language and G-XLT pair when tokenizing) and
``transformers`` one per weight load/save; interleaved with ours they flood a console or a log.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


def bar(**kwargs: Any) -> Any:
    """One of our tqdm bars (training steps, test examples): on stderr, so stdout keeps only the
    results; redrawn at most once a second and as wide as the terminal. ``kwargs``: tqdm's
    (total, desc, unit, initial, disable)."""
    from tqdm.auto import tqdm  # ~0.1 s: the CLI modules import this one before they need a bar

    return tqdm(dynamic_ncols=True, mininterval=1.0, file=sys.stderr, **kwargs)


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """Switches off the progress bars of ``datasets`` and ``transformers``; restores them after."""
    import datasets  # heavy: loaded when a command runs, not when its module is imported
    from transformers.utils import logging as hf_logging

    bars = datasets.utils.logging.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            hf_logging.enable_progress_bar()
