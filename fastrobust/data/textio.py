"""Reading UTF-8 text files with errors that say where a file is not UTF-8.

Python's ``UnicodeDecodeError`` names neither the file nor the line. Here a bad byte gives one
``DataError``: ``data/train-en.tsv:1042: not valid UTF-8: byte 0xe9 at byte offset 53317 of the file
(column 18 of the line); save the file as UTF-8``. A UTF-8 byte-order mark at the start is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fastrobust.errors import DataError

BOM = b"\xef\xbb\xbf"


def _error(path: Path, lineno: int, line_start: int, raw: bytes, exc: UnicodeDecodeError) -> DataError:
    bad = raw[exc.start]
    return DataError(
        f"{path}:{lineno}: not valid UTF-8: byte 0x{bad:02x} at byte offset {line_start + exc.start} of "
        f"the file (column {exc.start + 1} of the line); save the file as UTF-8"
    )


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 file, split on ``\\n`` only (a stray ``\\r``
    inside a sentence does not start a new line), line end and a leading BOM removed."""
    path = Path(path)
    offset = 0
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            start = offset
            offset += len(raw)
            if lineno == 1 and raw.startswith(BOM):
                raw, start = raw[len(BOM) :], start + len(BOM)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _error(path, lineno, start, raw, exc) from None
            yield lineno, text.rstrip("\r\n")


def read_text(path: str | Path) -> str:
    """The whole UTF-8 file as text (BOM removed); DataError naming file, line and byte offset."""
    path = Path(path)
    data = path.read_bytes()
    skip = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        pos = skip + exc.start
        lineno = data.count(b"\n", 0, pos) + 1
        line_start = data.rfind(b"\n", 0, pos) + 1
        fake = UnicodeDecodeError("utf-8", data[line_start:], pos - line_start, pos - line_start + 1, "bad")
        raise _error(path, lineno, line_start, data[line_start:], fake) from None
