"""pytest configuration of the benchmarks (``make bench``; smoke runs from tests/).

Benchmark files are named ``bench_*.py``; pytest's default pattern only collects
``test_*.py``, so this hook collects them when the folder is given (a file named on the
command line is collected by pytest itself). Benchmarks time real devices: do not run them
with TRITON_INTERPRET=1 (the interpreter's timings mean nothing); Triton providers appear
only on CUDA.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _util import bench_device, copy_bandwidth_gbps  # noqa: E402


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def bench_dev() -> torch.device:
    """The device benchmarks run on: CUDA when present, else CPU."""
    return bench_device()


@pytest.fixture(scope="session")
def copy_gbps(bench_dev: torch.device) -> float:
    """Device-copy bandwidth (GB/s, read + write) measured once in this session: the
    yardstick that every op's GB/s is compared with."""
    return copy_bandwidth_gbps(bench_dev)
