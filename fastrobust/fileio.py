"""Atomic file writes that respect the user's umask, and one-line messages for failed writes.

Every report, summary and model file fastrobust writes goes through :func:`atomic_write`: the
content is written to a temporary file in the destination folder, flushed to disk, then renamed
onto the destination (``os.replace`` is atomic on POSIX). A reader, or a run killed mid-write,
never sees half a file: the old version or the new one.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask; teams share run folders,
so the file gets the mode ``open()`` would have given it (0666 minus the umask) before the rename.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@functools.cache
def umask() -> int:
    """The process umask, read once (``os.umask`` can only be read by setting it; doing that later,
    while other threads create files, could briefly expose them with a wrong umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """0666 minus the umask: the mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~umask()


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Calls ``write(tmp_path)``, flushes the file to disk and renames it onto ``path``; returns ``path``.

    The folder is created if needed. On any failure the temporary file is removed and the previous
    version of ``path`` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        os.close(fd)
        fd = -1
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):  # name the file, not its stand-in
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8, ``\\n`` line ends kept as given) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


# Any below: JSON documents of every shape (summaries, reports, configs) go through these.
def _json_default(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # tensors and numpy arrays/scalars
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def json_text(obj: Any, *, indent: int | None = 2, sort_keys: bool = False, ensure_ascii: bool = True) -> str:
    """JSON of ``obj`` (paths as strings, tensors/arrays as lists), ending with a newline.

    ``indent``, ``sort_keys`` and ``ensure_ascii`` are :func:`json.dumps`'s (``indent=None``: one
    line). Non-finite floats are written as ``NaN``/``Infinity`` (Python's json reads them back).
    """
    text = json.dumps(
        obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=_json_default
    )
    return text + "\n"


def atomic_write_json(path: str | Path, obj: Any, **layout: Any) -> Path:
    """Writes ``obj`` as JSON to ``path`` atomically; ``layout``: :func:`json_text`'s keywords."""
    return atomic_write_text(path, json_text(obj, **layout))


def describe_os_error(exc: OSError, path: str | Path | None = None) -> str:
    """One line naming the file and the reason: ``cannot write /x/y: No space left on device [errno 28]``."""
    where = path if path is not None else (exc.filename or "?")
    reason = exc.strerror or str(exc) or type(exc).__name__
    errno = f" [errno {exc.errno}]" if exc.errno is not None else ""
    return f"cannot write {where}: {reason}{errno}"


# How libraries that write files themselves report a failed write without an OSError:
# safetensors "I/O error: No space left on device (os error 28)", torch.save's zip writer
# "PytorchStreamWriter failed writing file" / "unexpected pos 576 vs 534".
_OS_ERROR_CODE = re.compile(r"os error (\d+)|\[errno (\d+)\]", re.IGNORECASE)
_WRITER_FAILED = ("failed writing file", "unexpected pos", "file write failed")


def as_os_error(exc: BaseException, path: str | Path) -> OSError | None:
    """``exc`` as an OSError naming ``path`` when it is a failed write (an OSError without a file
    name, safetensors' or torch's own error for one); None when it is something else."""
    if isinstance(exc, OSError):
        if exc.filename is not None:
            return exc
        return OSError(exc.errno, exc.strerror or str(exc), str(path))
    if type(exc).__name__ != "SafetensorError" and not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    found = _OS_ERROR_CODE.search(text)
    if found:
        code = int(found.group(1) or found.group(2))
        return OSError(code, os.strerror(code), str(path))
    if any(sign in text for sign in _WRITER_FAILED):
        return OSError(errno.EIO, "the write failed (disk full?)", str(path))
    return None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Inside the block, a failed write becomes an OSError naming ``path`` (see :func:`as_os_error`),
    so that a full disk is one line that says where, whichever library was writing."""
    try:
        yield
    except Exception as exc:
        err = as_os_error(exc, path)
        if err is None or err is exc:
            raise
        raise err from exc


def apply_umask(folder: str | Path) -> None:
    """Gives every file under ``folder`` the mode ``open()`` would have (0666 minus the umask):
    safetensors creates its files with 0600 whatever the umask."""
    mode = file_mode()
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(dirpath, name), mode)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yields a temporary folder next to ``path``; when the block succeeds, it replaces ``path``.

    For folders written by other libraries (``save_pretrained``): a crash or a full disk leaves the
    previous ``path`` (or none), never a half-written one; the temporary folder is removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp gives 0700; mkdir would give 0777 minus the umask
    try:
        yield tmp
        apply_umask(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
