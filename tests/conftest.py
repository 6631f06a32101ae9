"""Test configuration.

TRITON_INTERPRET must be in the environment before triton is imported — and torch
imports triton as soon as a transformers model is built — so it is set here, on the
first lines, before anything else is imported. On a machine with an NVIDIA GPU the
variable is left unset and the kernel tests run natively on CUDA.
"""

import glob
import os

if "TRITON_INTERPRET" not in os.environ and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=None,
        help="device for kernel tests: cuda when available, else cpu (Triton interpreter)",
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device kernel tests run on: --device, else CUDA when present, else CPU."""
    name = request.config.getoption("--device")
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@pytest.fixture(autouse=True)
def _reference_backend_unless_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests not marked ``kernels`` use the pure-torch ops (fast on CPU); kernel tests pick
    their backend themselves. Scoped to each test through monkeypatch, not a global."""
    if request.node.get_closest_marker("kernels") is None:
        monkeypatch.setenv("FASTROBUST_BACKEND", "torch")
