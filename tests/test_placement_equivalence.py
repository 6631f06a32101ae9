"""Fixed-seed results of the real sweep's method sections (benchmarks/real/sweep.py), pinned.

Each section of the sweep's plan (placed and default placements of pgd, freelb, rs-rp) is built
with ``build_method`` on a tiny 6-layer BERT (so ``layer: 6`` is its last layer), set up, and run
for two ``training_step`` calls with SGD updates in between, from a fixed torch seed. The losses,
the summed |grad| and the sum of the updated weights are compared with the numbers stored in
tests/fixtures/placement_golden.json. Regenerate (only when a change of results is intended) with
``FASTROBUST_WRITE_GOLDEN=1 pytest tests/test_placement_equivalence.py``.

Tolerance: rtol 1e-5 / atol 1e-6 in float32 on CPU (the reference backend), i.e. the same
operations in the same order; a reordering of float sums would show as ~1e-7 relative.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_methods_util import tiny_batch, tiny_model

from benchmarks.real.sweep import families
from fastrobust.methods import build_method

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "placement_golden.json"
KINDS = ("pgd", "freelb", "rs-rp")


def _sections() -> dict[str, dict]:
    out = {}
    for _, secs in families():
        for s in secs:
            if s["kind"] in KINDS:
                out[s["label"]] = s
    # absolute scales and a random start too, so that both unit paths and pgd_init are pinned
    out["pgd-abs-init"] = {
        "kind": "pgd",
        "label": "pgd-abs-init",
        "steps": 2,
        "epsilon": 0.5,
        "step_size": 0.2,
        "scale_mode": "absolute",
        "init_magnitude": 0.1,
        "adv_weight": 0.5,
    }
    out["freelb-l3-s1"] = {
        "kind": "freelb",
        "label": "freelb-l3-s1",
        "steps": 2,
        "epsilon": 2.0,
        "step_size": 1.0,
        "layer": 3,
        "sentences": "first",
        "ball": "sentence",
        "init_magnitude": 0.1,
    }
    return out


SECTIONS = _sections()


def _run(section: dict) -> dict:
    model = tiny_model("bert", layers=6, seed=0)
    method = build_method(dict(section))
    method.setup(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1234)
    losses, gsums = [], []
    for step in range(2):
        batch = tiny_batch(seed=1 + step, token_types=True)
        opt.zero_grad()
        loss = method.training_step(model, batch, lambda loss: loss.backward())
        losses.append(float(loss))
        gsums.append(float(sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None)))
        opt.step()
    wsum = float(sum(p.detach().double().sum() for p in model.parameters()))
    return {"losses": losses, "grad_abs_sums": gsums, "weight_sum": wsum}


def test_sweep_sections_are_covered():
    for label in ("shift-s2-0.4", "shift-0.2", "rs-rp-l6-0.25", "rs-rp-0.25", "pgd-k1-1", "pgd-ball-8"):
        assert label in SECTIONS


@pytest.mark.parametrize("label", sorted(SECTIONS))
def test_fixed_seed_results_match_golden(label):
    got = _run(SECTIONS[label])
    if os.environ.get("FASTROBUST_WRITE_GOLDEN"):
        data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        data[label] = got
        GOLDEN.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")
        return
    want = json.loads(GOLDEN.read_text())[label]
    for key in ("losses", "grad_abs_sums"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    assert got["weight_sum"] == pytest.approx(want["weight_sum"], rel=1e-7, abs=1e-5)
