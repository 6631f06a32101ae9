"""Checks before the first training step: each mistake is one line naming the field, not a traceback
(or, worse, a run that trains on nothing) minutes into the run.

- :func:`check_output_dir`: ``output.dir`` is writable, and holds no results of the methods about to
  run unless the user said ``--resume`` or ``--overwrite``;
- :func:`check_model_source`: ``model.name_or_path`` is a model folder with tokenizer files, or a
  name for the hub (a path that does not exist is not sent to the hub as a "repo id");
- :func:`load_pretrained`: the tokenizer/config loads, or one line says why;
- :func:`check_tokenizer`: it has a pad token and a vocabulary that fits the embedding table;
- :func:`position_limit` / :func:`check_max_length`: ``model.max_length`` fits the position table;
- :func:`head_mismatch`: a classifier head of another label count is re-initialised with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastrobust.errors import ConfigError

if TYPE_CHECKING:  # annotations only
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

MODEL_FIELD = "model.name_or_path"
# Files that carry a tokenizer's vocabulary (fast tokenizers, WordPiece, BPE, SentencePiece).
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")
# Model types whose position ids start after the padding index (RoBERTa's convention):
# the usable length is max_position_embeddings - pad_token_id - 1 (514 -> 512 for XLM-R).
OFFSET_POSITION_TYPES = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "xmod"}


# ---- output folder ---------------------------------------------------------------------------


def check_writable(out_dir: Path, field: str = "output.dir") -> None:
    """Creates ``out_dir`` if needed and writes (then removes) a probe file in it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fastrobust-probe-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{field}: {out_dir} is not writable ({reason})") from None


def method_state(method_dir: Path) -> str | None:
    """What a method folder holds: 'finished', 'checkpoints at step N', 'files', or None if unused."""
    from fastrobust.training import checkpoint as ckpt  # torch: not needed to check an output folder

    if not method_dir.is_dir():
        return None
    summary = method_dir / "summary.json"
    if summary.is_file():
        try:
            status = json.loads(summary.read_text(encoding="utf-8")).get("status", "complete")
        except (OSError, ValueError, AttributeError):
            status = "unreadable"
        return "finished" if status == "complete" else f"unfinished, summary.json {status}"
    found = ckpt.complete_checkpoints(method_dir / "checkpoints")
    if found:
        return f"unfinished, checkpoint at step {found[-1][0]}"
    if any(method_dir.iterdir()):
        return "unfinished"
    return None


def check_output_dir(out_dir: Path, labels: Sequence[str], *, resume: bool, overwrite: bool) -> None:
    """Refuses to start fresh runs of ``labels`` over results already in ``out_dir``.

    A run's results live in ``out_dir/<label>/`` (``out_dir/<label>/seed-<k>/`` when the config
    lists seeds: pass those folders as ``labels``); runs in other folders may share ``out_dir``.
    ``resume`` continues them, ``overwrite`` replaces them; without either, a used folder is an error
    that says which methods it holds and what to pass.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one (continue the methods, or replace them)")
    check_writable(out_dir)
    if resume or overwrite:
        return
    used = {label: state for label in labels if (state := method_state(out_dir / label))}
    if used:
        held = "; ".join(f"{label} ({state})" for label, state in used.items())
        raise ConfigError(
            f"output.dir: {out_dir} already holds results of {held}; pass --resume to continue, "
            "--overwrite to replace them, or set output.dir to a new folder"
        )


def clear_method_dir(method_dir: Path) -> None:
    """Removes a method's previous results (``--overwrite``), so that nothing old mixes in (tb, ckpts)."""
    if method_dir.exists():
        shutil.rmtree(method_dir)


# ---- model and tokenizer ---------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else the user meant as a folder.
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def check_model_source(name: str, field: str = MODEL_FIELD) -> None:
    """A local folder must hold a model (config.json) and its tokenizer; a missing path is not a hub id."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{field}: {name} is a file; expected a model folder or a hub name")
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{field}: {name} has no config.json (expected a folder written by save_pretrained)"
            )
        if not any((path / f).is_file() for f in VOCAB_FILES) and not any(path.glob("*.model")):
            raise ConfigError(
                f"{field}: {name} has no tokenizer files (tokenizer.json, vocab.txt, *.model, ...); "
                "save the tokenizer into the model folder (tokenizer.save_pretrained)"
            )
        return
    if _looks_like_path(name):
        raise ConfigError(f"{field}: {name}: no such folder")


def load_pretrained(loader: Callable[[str], Any], name: str, field: str = MODEL_FIELD) -> Any:
    """``loader(name)`` (e.g. ``AutoTokenizer.from_pretrained``); an OSError becomes one line."""
    try:
        return loader(name)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = " (offline, HF_HUB_OFFLINE=1: give a local model folder)" if offline else ""
        raise ConfigError(f"{field}: cannot load {name!r}: {first}{hint}") from None


def check_tokenizer(
    tokenizer: PreTrainedTokenizerBase, hf_config: PretrainedConfig, name: str, field: str = MODEL_FIELD
) -> None:
    """A pad token (batches are padded), a vocabulary, and ids that index the embedding table."""
    if tokenizer.pad_token is None:
        raise ConfigError(
            f"{field}: the tokenizer of {name} has no pad token (decoder models such as GPT-2 have none); "
            "batches are padded: set one and save it, e.g. tokenizer.pad_token = tokenizer.eos_token"
        )
    n = len(tokenizer)
    specials = len(set(tokenizer.all_special_tokens))
    if n <= specials:
        raise ConfigError(
            f"{field}: the tokenizer of {name} has no vocabulary ({n} tokens, all special); "
            "its tokenizer files are missing or empty"
        )
    rows = getattr(hf_config, "vocab_size", None)
    if rows is not None and n > rows:
        raise ConfigError(
            f"{field}: the tokenizer of {name} has {n} tokens but the model's embedding table has "
            f"{rows} rows; they do not belong together"
        )


def position_limit(hf_config: PretrainedConfig) -> int | None:
    """The longest input the model's position table allows, or None when it has no such limit."""
    if getattr(hf_config, "position_embedding_type", "absolute") not in ("absolute", None):
        return None  # relative position encodings
    if getattr(hf_config, "position_biased_input", True) is False:
        return None  # DeBERTa-v2/v3: relative attention only
    limit = getattr(hf_config, "max_position_embeddings", None)
    if limit is None:
        return None
    if getattr(hf_config, "model_type", None) in OFFSET_POSITION_TYPES:
        pad = getattr(hf_config, "pad_token_id", None)
        limit -= (pad if pad is not None else 1) + 1
    return int(limit)


def check_max_length(max_length: int, hf_config: PretrainedConfig, name: str) -> None:
    """``model.max_length`` must fit the position table (else the first long batch crashes)."""
    limit = position_limit(hf_config)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"model.max_length: {max_length} is above the {limit} positions {name} supports; "
            f"set model.max_length <= {limit}"
        )


def head_mismatch(hf_config: PretrainedConfig, num_labels: int, name: str, task: str) -> str | None:
    """A warning when the checkpoint has a classification head of another size (it is re-initialised)."""
    archs = getattr(hf_config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return None
    have = int(getattr(hf_config, "num_labels", num_labels))
    if have == num_labels:
        return None
    return (
        f"{MODEL_FIELD}: {name} has a {have}-label classification head but task {task} has "
        f"{num_labels} labels; the head is re-initialised (its weights are not used)"
    )
