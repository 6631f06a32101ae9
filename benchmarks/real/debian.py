"""Debian's package descriptions and their human translations, read from apt's list files.

``apt-get -o Acquire::Languages=en,de,... update`` fetches ``*_i18n_Translation-<lang>.lz4``;
``/usr/lib/apt/apt-helper cat-file F`` decompresses one. A Translation file is a sequence of
RFC 822 records separated by blank lines::

    Package: 0ad
    Description-md5: d943033bedada21853d2ae54a2578a7b
    Description-de: Echtzeit-Strategiespiel über antike Kriegsführung      <- the synopsis
     0 A.D. ist ein freies, quelloffenes, plattformübergreifendes           <- the long text,
     Echtzeit-Strategiespiel (RTS) über antike Kriegsführung. ...              one space indented
     .                                                                      <- paragraph break

``Description-md5`` is the md5 of the English original: records with the same md5 in two
languages are translations of the same text, by people. The ``Packages`` list (binary package
records with ``Source:``, ``Section:``, ``Tag:``) gives each binary package's source package —
the "family" the benchmark keeps on one side of every split.

Line folding: a continuation line's break is read as a space, except next to CJK characters
(Han, kana, CJK punctuation), where translators wrap without one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastrobust.fileio import atomic_write_text

_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
_LIST_LINE = re.compile(r"^\s*([*\-+o•]|\d+[.)])\s")


class DebianSourceError(RuntimeError):
    """apt's lists or tools are not available (the message says how to get them)."""


@dataclass
class Description:
    """One description in one language (the key is its English original's md5)."""

    md5: str
    packages: list[str]
    synopsis: str
    paragraphs: list[str]
    has_list: list[bool] = field(default_factory=list)  # paragraph i contained list items / verbatim


@dataclass
class PackageInfo:
    source: str
    section: str
    tags: frozenset[str]


def _fold(lines: list[str]) -> str:
    """Join the folded lines of one paragraph (see the module doc for the CJK rule)."""
    out = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if out and not (_CJK.match(out[-1]) or _CJK.match(line[0])):
            out += " "
        out += line
    return re.sub(r"\s+", " ", out).strip()


def _records(text: str) -> Iterator[dict[str, list[str]]]:
    """RFC 822 records: field name -> [first line, continuation lines...]."""
    rec: dict[str, list[str]] = {}
    last = None
    for line in text.split("\n"):
        if not line.strip():
            if rec:
                yield rec
            rec, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                rec[last].append(line[1:])
        else:
            name, _, value = line.partition(":")
            last = name.strip()
            rec[last] = [value.strip()]
    if rec:
        yield rec


def parse_translation(text: str, lang: str) -> dict[str, Description]:
    """md5 -> Description for one Translation file's text (``lang`` as in ``Description-<lang>``)."""
    key = f"Description-{lang}"
    out: dict[str, Description] = {}
    for rec in _records(text):
        md5 = rec.get("Description-md5", [None])[0]
        desc = rec.get(key)
        pkg = rec.get("Package", [None])[0]
        if not md5 or desc is None:
            continue
        if md5 in out:
            if pkg:
                out[md5].packages.append(pkg)
            continue
        paragraphs: list[list[str]] = [[]]
        for line in desc[1:]:
            if line.strip() == ".":
                paragraphs.append([])
            else:
                paragraphs[-1].append(line)
        paragraphs = [p for p in paragraphs if any(x.strip() for x in p)]
        has_list = [any(_LIST_LINE.match(x) or x.startswith(" ") for x in p) for p in paragraphs]
        out[md5] = Description(
            md5=md5,
            packages=[pkg] if pkg else [],
            synopsis=_fold([desc[0]]),
            paragraphs=[_fold(p) for p in paragraphs],
            has_list=has_list,
        )
    return out


def parse_packages(text: str) -> dict[str, PackageInfo]:
    """Binary package -> (source package, section, debtags) from a ``Packages`` list."""
    out: dict[str, PackageInfo] = {}
    for rec in _records(text):
        pkg = rec.get("Package", [None])[0]
        if not pkg or pkg in out:
            continue
        source = rec.get("Source", [pkg])[0].split(" ")[0] or pkg
        tags = " ".join(rec.get("Tag", [""])).replace(",", " ").split()
        out[pkg] = PackageInfo(source=source, section=rec.get("Section", [""])[0], tags=frozenset(tags))
    return out


# --------------------------------------------------------------------------------------------
# getting the files


APT_LISTS = Path("/var/lib/apt/lists")
APT_HELPER = Path("/usr/lib/apt/apt-helper")


def _file_lang(name: str) -> str:
    # ..._i18n_Translation-pt%5fBR.lz4 -> pt_BR
    tail = name.split("Translation-", 1)[1]
    return tail.split(".")[0].replace("%5f", "_")


def find_list_files(lists_dir: Path, suite: str = "bookworm") -> tuple[dict[str, Path], Path | None]:
    """(lang -> Translation file, Packages file) of the main archive of ``suite`` in ``lists_dir``."""
    trans: dict[str, Path] = {}
    packages = None
    for p in sorted(lists_dir.glob(f"*_dists_{suite}_main_*")):
        if "_i18n_Translation-" in p.name:
            trans[_file_lang(p.name)] = p
        elif p.name.endswith(("_binary-amd64_Packages", "_binary-amd64_Packages.lz4")) or re.search(
            r"_binary-[a-z0-9]+_Packages(\.\w+)?$", p.name
        ):
            packages = packages or p
    return trans, packages


def cat_file(path: Path) -> str:
    """Decompressed text of an apt list file (apt-helper handles lz4/gz/xz; plain files as is)."""
    if path.suffix not in (".lz4", ".gz", ".xz", ".bz2", ".zst"):
        return path.read_text(encoding="utf-8", errors="replace")
    if not APT_HELPER.is_file():
        raise DebianSourceError(
            f"{APT_HELPER} not found: cannot decompress {path} (is this a Debian system?)"
        )
    proc = subprocess.run([str(APT_HELPER), "cat-file", str(path)], capture_output=True)
    if proc.returncode != 0:
        raise DebianSourceError(f"apt-helper cat-file {path} failed: {proc.stderr.decode()[-300:]}")
    return proc.stdout.decode("utf-8", errors="replace")


def fetch_lists(dest: Path, languages: list[str], *, suite_hint: str = "bookworm") -> None:
    """Copy decompressed Translation-<lang> and Packages files into ``dest`` (cached).

    Takes them from /var/lib/apt/lists when there; otherwise runs ``apt-get update`` with
    ``Acquire::Languages`` into a private lists folder (``dest/apt-lists``; needs root and the
    Debian mirror), so the system's own lists are left alone.
    """
    dest.mkdir(parents=True, exist_ok=True)
    need = [lang for lang in languages if not (dest / f"Translation-{lang}").is_file()]
    if not need and (dest / "Packages").is_file():
        return
    trans, packages = find_list_files(APT_LISTS, suite_hint)
    if any(lang not in trans for lang in need) or packages is None:
        private = dest / "apt-lists"
        (private / "partial").mkdir(parents=True, exist_ok=True)
        apt = shutil.which("apt-get")
        if apt is None:
            raise DebianSourceError(
                "apt-get not found and no Translation files in /var/lib/apt/lists: the real benchmark "
                "needs a Debian (bookworm) machine, or copy Translation-<lang> and Packages files into "
                f"{dest}"
            )
        cmd = [apt, "-o", f"Dir::State::Lists={private}", "-o", f"Acquire::Languages={','.join(languages)}",
               "update"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DebianSourceError(
                f"{' '.join(cmd)} failed (needs root and the Debian mirror): {proc.stderr.strip()[-400:]}"
            )
        t2, p2 = find_list_files(private, suite_hint)
        trans = {**t2, **{k: v for k, v in trans.items() if k not in t2}}
        packages = p2 or packages
    missing = [lang for lang in need if lang not in trans]
    if missing or packages is None:
        raise DebianSourceError(
            f"Debian lists missing for {missing or 'Packages'} (suite {suite_hint}); the mirror may not "
            "carry those translations"
        )
    for lang in need:
        atomic_write_text(dest / f"Translation-{lang}", cat_file(trans[lang]))
    if not (dest / "Packages").is_file():
        atomic_write_text(dest / "Packages", cat_file(packages))
