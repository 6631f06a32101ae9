"""Smoothed prediction and certification against a classifier with a known certified radius.

The base classifier is linear on the (masked) word embeddings: logits (0, s(e)) with
s(e) = <w, e * m> + b. Under e + sigma z m, z ~ N(0, I), the score is N(s, sigma^2 ||w_m||^2)
(w_m = w on the example's real tokens), so P(class 1) = Phi(s / (sigma ||w_m||)) and the
exact certified L2 radius of the smoothed classifier is |s| / ||w_m||.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binomtest, norm
from test_methods_util import tiny_batch, tiny_model

from fastrobust.errors import FastrobustError
from fastrobust.methods import ABSTAIN, certify, smoothed_predict
from fastrobust.methods.smoothing import clopper_pearson_lower, sample_counts

SIGMA = 0.5


class LinearOnEmbeddings(torch.nn.Module):
    def __init__(self, vocab: int, length: int, hidden: int):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embeddings = torch.nn.Embedding(vocab, hidden)
        with torch.no_grad():
            self.embeddings.weight.copy_(torch.randn(vocab, hidden, generator=gen))
        self.w = torch.nn.Parameter(torch.randn(length, hidden, generator=gen))
        self.b = torch.nn.Parameter(torch.tensor(0.3))

    def get_input_embeddings(self):
        return self.embeddings

    def score(self, embeds, attention_mask):
        x = embeds * attention_mask.unsqueeze(-1).to(embeds.dtype)
        return (x * self.w[: x.shape[1]]).sum(dim=(1, 2)) + self.b

    def forward(self, inputs_embeds=None, attention_mask=None, input_ids=None, token_type_ids=None):
        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        s = self.score(inputs_embeds, attention_mask)
        return torch.stack([torch.zeros_like(s), s], dim=-1)


def _linear_setup(ratios):
    """Model and batch whose example b has s_b / (SIGMA ||w_b||) = ratios[b] exactly (up to
    rounding): example b starts with its own token, whose embedding is shifted along w[0]."""
    B, L, H, V = len(ratios), 6, 4, 16
    model = LinearOnEmbeddings(V, L, H)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(B, V, (B, L), generator=gen)
    ids[:, 0] = torch.arange(B)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 4:] = 0  # a padded example: its norm ||w_b|| is over 4 positions only
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        s0 = model.score(model.embeddings(ids), mask)
        w_norm = (model.w.unsqueeze(0) * mask.unsqueeze(-1)).flatten(1).norm(dim=1)
        target = torch.tensor(ratios) * SIGMA * w_norm
        w0 = model.w[0]
        for b in range(B):
            model.embeddings.weight[b] += (target[b] - s0[b]) * w0 / w0.dot(w0)
        s = model.score(model.embeddings(ids), mask)
    true_radius = (s.abs() / w_norm).double()
    return model, batch, s, true_radius


def test_counts_follow_the_analytic_class_probability():
    ratios = [0.5, -1.0, 2.0, 0.0]
    model, batch, _, _ = _linear_setup(ratios)
    n = 4000
    counts = sample_counts(model, batch, n=n, sigma=SIGMA, batch_size=1000, seed=3)
    assert counts.shape == (4, 2) and torch.all(counts.sum(1) == n)
    for b, c in enumerate(ratios):
        assert binomtest(int(counts[b, 1]), n, norm.cdf(c)).pvalue > 1e-3, (b, counts[b])


def test_certified_radius_is_below_and_close_to_the_true_radius():
    ratios = [0.5, -1.0, 2.0, 1.5]
    model, batch, s, true_radius = _linear_setup(ratios)
    res = certify(model, batch, sigma=SIGMA, n0=100, n=20000, alpha=0.001, batch_size=8192, seed=0)
    assert res.prediction.tolist() == [1, 0, 1, 1]
    assert torch.all(res.radius <= true_radius)
    # with n = 20000 the Clopper-Pearson bound costs < 10% of the radius at these margins
    assert torch.all(res.radius >= 0.9 * true_radius), (res.radius, true_radius)
    expected = SIGMA * norm.ppf(
        clopper_pearson_lower(res.counts.gather(1, res.prediction.view(-1, 1)).view(-1).numpy(), 20000, 0.001)
    )
    assert torch.allclose(res.radius, torch.from_numpy(expected))


def test_abstains_when_the_top_class_is_not_above_one_half():
    model, batch, _, _ = _linear_setup([0.0, 0.02, 3.0])  # p_A = 0.5, 0.508, 0.9987
    res = certify(model, batch, sigma=SIGMA, n0=100, n=2000, alpha=0.001, seed=1)
    assert res.prediction.tolist()[:2] == [ABSTAIN, ABSTAIN]
    assert res.radius[:2].tolist() == [0.0, 0.0] and torch.all(res.p_lower[:2] <= 0.5)
    assert res.prediction[2] == 1 and res.radius[2] > 0
    # rule: certified exactly when the lower bound exceeds 1/2
    assert torch.equal(res.prediction != ABSTAIN, res.p_lower > 0.5)


def test_smoothed_predict_abstains_on_ties_and_predicts_clear_examples():
    model, batch, _, _ = _linear_setup([0.0, -1.0, 1.0])
    pred = smoothed_predict(model, batch, sigma=SIGMA, n=2000, alpha=0.001, seed=2)
    assert pred.tolist() == [ABSTAIN, 0, 1]


def test_clopper_pearson_lower_bound():
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    # all successes: the bound solves p^n = alpha
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.05 ** (1 / 10))
    low = clopper_pearson_lower(500, 1000, 0.001)
    assert 0.44 < low < 0.5


def test_certify_on_a_transformer_is_reproducible_and_preserves_training_mode():
    model = tiny_model("xlmr").train()
    batch = tiny_batch(3, 10, token_types=False)
    a = certify(model, batch, sigma=0.05, n0=8, n=40, batch_size=16, seed=5)
    b = certify(model, batch, sigma=0.05, n0=8, n=40, batch_size=16, seed=5)
    assert model.training  # restored
    assert torch.equal(a.counts, b.counts) and torch.equal(a.radius, b.radius)
    assert a.counts.shape == (3, 2) and torch.all(a.counts.sum(1) == 40)
    assert torch.all((a.prediction == ABSTAIN) | (a.radius > 0))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": math.nan}, "sigma"),
        ({"sigma": 0.1, "alpha": 1.5}, "alpha"),
        ({"sigma": 0.1, "n0": 0}, "n0"),
        ({"sigma": 0.1, "n": -3}, "n:"),
        ({"sigma": 0.1, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(kwargs, needle):
    model, batch, _, _ = _linear_setup([1.0, 1.0])
    with pytest.raises(FastrobustError, match=needle):
        certify(model, batch, **kwargs)
