"""Running the real ``fastrobust`` console script in a subprocess (what users run)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


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
