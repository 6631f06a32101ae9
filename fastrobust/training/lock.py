"""One ``train`` at a time per output folder: ``<output.dir>/.fastrobust-train.lock``.

Two runs writing the same folder would overwrite each other's checkpoints and summaries and each
report a comparison of half of them. The lock is an advisory ``flock`` on that file, held while
the command runs: the kernel releases it when the process ends in any way (a crash or a kill
leaves no stale lock), and the file says who holds it, so that the second command can name the
process in its one-line error. Under a launcher, only the global rank 0 takes it (its ranks are
one run). The file is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from fastrobust.errors import ConfigError
from fastrobust.fileio import file_mode
from fastrobust.training.preflight import check_writable

LOCK_NAME = ".fastrobust-train.lock"


def _holder(fd: int) -> str:
    """What the lock file says about the process that holds it."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


def _acquire(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock; ConfigError when another holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"output.dir: {path.parent} is in use by another fastrobust train ({holder}); "
                "wait for it to end, or set output.dir to another folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder before us may have removed the file between our open and our lock
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Holds the output folder's lock for the duration of the block (rank 0 of a launch only)."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    check_writable(out_dir)  # one line naming the folder rather than an OSError from the lock file
    path = out_dir / LOCK_NAME
    fd = _acquire(path)
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(sys.argv) or "python"
        note = f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode("utf-8"), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiting process then retries on a new file
        os.close(fd)
