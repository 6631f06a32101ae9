"""Convergence: a tiny model trained a few steps with each method gives the same losses
through the Triton kernels (the interpreter on CPU, native on CUDA) and the torch reference.

Deterministic methods (baseline, PGD and FreeLB started at delta = 0, RS-DA) must agree to
rounding: the only difference is the order of the fp32 reductions inside ``pgd_step``.
RS-RP draws its noise from Philox on the Triton path and from torch's generator on the
reference path — the same distribution, different bits — so its two runs are compared with
a small sigma, where the noise moves the loss by O(sigma) and the tolerance is set from it.
"""

from __future__ import annotations

import pytest
import torch
from test_methods_util import tiny_batch, tiny_model

from fastrobust import ops
from fastrobust.config import AdversarialConfig, BaselineConfig, NoiseConfig, SynonymConfig
from fastrobust.methods import build_method

pytestmark = pytest.mark.kernels

STEPS = 3
WORDS = ["the", "big", "large", "huge", "car", "auto", "red", "crimson", "sat", "on", "mat"]
SYNONYMS = {"big": ["large", "huge"], "car": ["auto"], "red": ["crimson"]}


def _text_batches(method, device):
    """RS-DA's per-epoch substitution, then a word-level encoding (id = 3 + word index)."""
    import datasets

    s1 = ["the big red car sat on the mat", "the car sat", "big big car", "red mat on the car"]
    s2 = ["a big car", "the red car sat on the big mat", "the mat", "car"]
    data = datasets.Dataset.from_dict({"sentence1": s1, "sentence2": s2, "label": [0, 1, 1, 0]})
    batches = []
    for epoch in range(STEPS):
        aug = method.epoch_train_dataset(data, epoch, seed=0)
        rows = [
            [2]
            + [3 + WORDS.index(w) for w in a.split() if w in WORDS]
            + [2]
            + [3 + WORDS.index(w) for w in b.split() if w in WORDS]
            for a, b in zip(aug["sentence1"], aug["sentence2"])
        ]
        length = max(map(len, rows))
        ids = torch.tensor([r + [1] * (length - len(r)) for r in rows])
        mask = (torch.arange(length)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
        batches.append(
            {
                "input_ids": ids.to(device),
                "attention_mask": mask.to(device),
                "labels": torch.tensor(aug["label"], device=device),
            }
        )
    return batches


def _train(cfg, backend, device, monkeypatch):
    monkeypatch.setenv("FASTROBUST_BACKEND", backend)
    model = (
        tiny_model("xlmr", seed=0, hidden=16, layers=1).to(device).train()
    )  # no dropout: only the ops differ
    method = build_method(cfg, task_synonyms=SYNONYMS)
    method.setup(model)
    # SGD, not Adam: Adam divides by sqrt(v) and turns rounding-level differences in near-zero
    # gradients into lr-sized updates, which would hide what this test compares.
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batches = (
        _text_batches(method, device)
        if cfg.kind == "rs-da"
        else [
            {k: v.to(device) for k, v in tiny_batch(4, 8, seed=s, token_types=False).items()}
            for s in range(STEPS)
        ]
    )
    torch.manual_seed(1)
    losses = []
    for batch in batches:
        losses.append(method.training_step(model, batch, lambda l: l.backward()).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses


DETERMINISTIC = [
    BaselineConfig(),
    AdversarialConfig(kind="pgd", steps=3, norm="l2", epsilon=1.0, step_size=0.4, init_magnitude=0.0),
    AdversarialConfig(kind="pgd", steps=2, norm="linf", epsilon=0.5, step_size=0.2, adv_weight=0.5),
    AdversarialConfig(kind="freelb", steps=3, norm="l2", epsilon=1.0, step_size=0.4),
    SynonymConfig(),
]


@pytest.mark.parametrize("cfg", DETERMINISTIC, ids=lambda c: f"{c.kind}-{getattr(c, 'norm', '')}")
def test_deterministic_methods_same_losses_on_both_paths(cfg, device, monkeypatch):
    monkeypatch.setenv("FASTROBUST_BACKEND", "triton")
    assert ops.backend_for(torch.zeros(1, device=device)) == "triton"
    kernels = _train(cfg, "triton", device, monkeypatch)
    reference = _train(cfg, "torch", device, monkeypatch)
    assert kernels == pytest.approx(reference, rel=1e-5, abs=1e-6)
    assert kernels[-1] != kernels[0]  # it trained


@pytest.mark.parametrize("mode", ["relative", "neftune"])
def test_noise_method_losses_agree_at_small_sigma(mode, device, monkeypatch):
    # The two paths draw different noise, so a few training steps are compared at a sigma small
    # enough (1e-3 of the embedding RMS; alpha = 1e-3 for neftune) that the noise moves each loss
    # by < 1e-5; 1e-4 then separates "same training" from "different training".
    cfg = NoiseConfig(sigma=1e-3, sigma_mode=mode)
    kernels = _train(cfg, "triton", device, monkeypatch)
    reference = _train(cfg, "torch", device, monkeypatch)
    assert kernels == pytest.approx(reference, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
def test_noise_method_loss_distribution_agrees_at_large_sigma(distribution, device, monkeypatch):
    """At a sigma that matters (2x the embedding RMS) the loss is a random variable. One training
    step on a batch of 160 copies of one example gives 160 independent draws of the per-example
    loss on each path. Their means must agree within 4.5 standard errors (a two-sample z-test;
    seeds are fixed, so the outcome is deterministic) and so must their spreads (ratio of standard
    deviations; the sd of the log-ratio is ~0.11 at n = 160). Without noise every draw would be
    equal (no dropout), so a positive spread also shows the noise is applied."""
    import torch.nn.functional as F

    from fastrobust.methods import noise as noise_module

    model = tiny_model("xlmr", seed=0, hidden=16, layers=1).to(device)
    one = tiny_batch(1, 8, seed=0, token_types=False)
    batch = {k: v.repeat(160, *([1] * (v.dim() - 1))).to(device) for k, v in one.items()}
    method = build_method(NoiseConfig(sigma=2.0, sigma_mode="relative", distribution=distribution))
    method.setup(model)
    recorded = []

    def per_example_loss(logits, labels):
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        recorded.append(losses.detach().double().cpu())
        return losses.mean()

    monkeypatch.setattr(noise_module, "classification_loss", per_example_loss)
    samples = {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("FASTROBUST_BACKEND", backend)
        torch.manual_seed(3)
        method.training_step(model, batch, lambda l: None)
        samples[backend] = recorded.pop()
    k, r = samples["triton"], samples["torch"]
    se = (k.var() / len(k) + r.var() / len(r)).sqrt()
    assert (k.mean() - r.mean()).abs() < 4.5 * se, (k.mean(), r.mean(), se)
    assert r.std() > 0 and 0.65 < k.std() / r.std() < 1.55, (k.std(), r.std())
