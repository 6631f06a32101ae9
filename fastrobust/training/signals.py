"""SIGINT (Ctrl-C) and SIGTERM (what cluster schedulers send before killing a job) during training:
finish the current step, write a checkpoint, exit with 128 + the signal number (130 / 143).

While :func:`stop_on_signals` is active, the first signal only sets :attr:`StopRequest.signum`; the
loop reads it between steps (every step with one process; at synchronised steps under several, so
that all ranks stop at the same step) and then checkpoints and raises
:class:`fastrobust.errors.Interrupted`. A second SIGINT interrupts at once (KeyboardInterrupt), a
second SIGTERM terminates. Handlers can only be installed from the main thread; elsewhere (a
notebook's worker thread) the default behaviour is kept.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ANNOUNCE = True  # False in the workers of ``parallel: N``: their parent says it once for all


class StopRequest:
    """The signal received during training, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            if ANNOUNCE:
                print(
                    f"\nfastrobust: {name} received; stopping after this step and writing a checkpoint "
                    f"({name} again to stop at once)",
                    file=sys.stderr,
                    flush=True,
                )
            # the second one acts as if no handler were installed
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Installs the graceful handlers for the duration of the block; restores the previous ones."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, request._handle)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
