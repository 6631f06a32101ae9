"""The method layer's repeated facts have one definition each."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

from fastrobust.config import methods as config_methods
from fastrobust.methods import base
from fastrobust.training import engine
from fastrobust.validation import DISTRIBUTIONS, NORMS


def test_config_literals_are_the_validation_constants():
    assert get_args(config_methods.Norm) == NORMS
    assert get_args(config_methods.Distribution) == DISTRIBUTIONS


def test_backward_is_defined_once():
    assert engine.Backward is base.Backward


def test_methods_base_does_not_import_datasets():
    code = "import sys, fastrobust.methods.base; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
