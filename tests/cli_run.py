"""Running the real ``fastrobust`` console script in a subprocess (what users run)."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# "path.py:123: FutureWarning: ..." (Python's warning header; its source line follows, indented)
_WARNING = re.compile(r"^\S+\.py:\d+: \w*Warning: ")


def without_warnings(text: str) -> str:
    """``text`` less Python's warning reports (header and source line): a torchrun child repeats
    the same deprecation warning per rank and step, which would push the real error out of view."""
    kept: list[str] = []
    skip_source = False
    for line in text.splitlines():
        if _WARNING.match(line):
            skip_source = True
            continue
        if skip_source and line.startswith((" ", "\t")):
            skip_source = False
            continue
        skip_source = False
        kept.append(line)
    return "\n".join(kept)


def check_exit(proc: subprocess.CompletedProcess, what: str) -> None:
    """Fails the test unless ``proc`` exited 0, with its output in full (pytest truncates an
    assertion message, and the cause of a multi-process failure is often far above its end)."""
    if proc.returncode != 0:
        out, err = without_warnings(proc.stdout)[-3000:], without_warnings(proc.stderr)[-12000:]
        report = f"{what} exited {proc.returncode}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        pytest.fail(report, pytrace=False)


def entry_point() -> str:
    """The installed ``fastrobust`` script of this interpreter's environment."""
    here = Path(sys.executable).parent / "fastrobust"
    found = str(here) if here.is_file() else shutil.which("fastrobust")
    if found is None:
        raise RuntimeError("the fastrobust console script is not installed (pip install -e .)")
    return found


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FASTROBUST_BACKEND="torch",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def distributed_env() -> dict[str, str]:
    """Environment of multi-process runs (torchrun, deepspeed) on the CPU: offline, the torch ops,
    one intra-op thread, DeepSpeed's CPU accelerator (unless the caller's environment names one)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", FASTROBUST_BACKEND="torch")
    env["OMP_NUM_THREADS"] = "1"
    # DeepSpeed compiles its shared-memory comm op once (~55 s) into this cache (as the Makefile does).
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "fastrobust" / "torch_extensions"))
    env.setdefault("DS_ACCELERATOR", "cpu")
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float  # user + system CPU time of the child (load on the machine does not inflate it)


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None, **kw) -> Result:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [entry_point(), *map(str, args)],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout,
        **kw,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Result(proc.returncode, proc.stdout, proc.stderr, cpu)
