"""Placement options of the methods (fastrobust.methods.placement): a hidden layer instead of the
word embeddings, one sentence of a pair, one budget per sentence, per-sentence shift noise."""

from __future__ import annotations

import pytest
import torch
from test_methods_util import grads, tiny_batch, tiny_model

from fastrobust.config import AdversarialConfig, NoiseConfig
from fastrobust.errors import ConfigError, FastrobustError
from fastrobust.methods import adversarial_step, build_method, freelb_step, noisy_embedding_step
from fastrobust.methods.adversarial import PGD, FreeLB
from fastrobust.methods.embeddings import embed_inputs, embedding_rms, forward_from_ids
from fastrobust.methods.noise import RandomPerturbation
from fastrobust.methods.placement import masked_rms, perturb_layer, sentence_masks, sentence_noise

# The default placement (word embeddings, both sentences, one ball) with absolute scales; each
# test overrides what it is about.
DEFAULT = dict(unit="absolute", layer=0, sentences="both")


def _backward(loss):
    loss.backward()


def _pgd(model, batch, backward=_backward, **kw):
    """adversarial_step: L2 PGD from a zero start, adversarial loss only, unless ``kw`` says."""
    args = {**DEFAULT, "ball": "sequence", "norm": "l2", "init_magnitude": 0.0, "adv_weight": 1.0, **kw}
    return adversarial_step(model, batch, backward, **args)


def _freelb(model, batch, backward=_backward, **kw):
    return freelb_step(model, batch, backward, **{**DEFAULT, "ball": "sequence", **kw})


def _noise(model, batch, backward=_backward, **kw):
    args = {**DEFAULT, "distribution": "gaussian", "shape": "token", **kw}
    return noisy_embedding_step(model, batch, backward, **args)


def _embedding_states_rms(model, batch) -> float:
    """The ``unit: states`` factor at layer 0 (RMS of the lookup over real tokens)."""
    with torch.no_grad():
        return float(masked_rms(embed_inputs(model, batch), batch["attention_mask"]))


def _xlmr_pair_batch():
    """<s> a b </s></s> c d e </s> <pad>..., and a single-sentence row <s> a </s>."""
    ids = torch.tensor(
        [
            [0, 5, 6, 2, 2, 7, 8, 9, 2, 1],
            [0, 5, 2, 2, 7, 2, 1, 1, 1, 1],
            [0, 5, 6, 7, 2, 1, 1, 1, 1, 1],
        ]
    )
    mask = ids.ne(1).long()
    mask[:, 0] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


def test_sentence_masks_from_separators_and_from_token_types():
    m1, m2 = sentence_masks(_xlmr_pair_batch())
    assert m1.tolist()[0] == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert m2.tolist()[0] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert m1.tolist()[1] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert m2.tolist()[1] == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert m2[2].sum() == 0 and m1[2].sum() == 5  # a single sentence is all sentence 1
    batch = tiny_batch(token_types=True)
    m1, m2 = sentence_masks(batch)
    assert torch.equal(m2.long(), batch["token_type_ids"] * batch["attention_mask"])
    assert torch.equal((m1 + m2).long(), batch["attention_mask"])


@pytest.mark.parametrize("arch", ["bert", "xlmr"])
def test_default_placement_equals_the_existing_steps(arch):
    """layer 0, both sentences, one ball: the general path (forced by ``unit: states`` with the scales
    divided by that unit) gives the fused path's loss and grads."""
    batch = tiny_batch(token_types=arch == "bert")
    kw = dict(steps=2, epsilon=0.5, step_size=0.3, norm="l2", init_magnitude=0.0)
    a, b = tiny_model(arch), tiny_model(arch)
    r = _embedding_states_rms(b, batch)
    rel = dict(kw, epsilon=0.5 / r, step_size=0.3 / r, unit="states")
    la = adversarial_step(a, batch, _backward, adv_weight=0.5, **kw)
    lb = _pgd(b, batch, adv_weight=0.5, **rel)
    assert torch.allclose(la, lb, atol=1e-6)
    ga, gb = grads(a), grads(b)
    assert all(torch.allclose(ga[k], gb[k], atol=1e-6) for k in ga if ga[k] is not None)
    a, b = tiny_model(arch), tiny_model(arch)
    la = freelb_step(a, batch, _backward, **kw)
    lb = _freelb(b, batch, **rel)
    assert torch.allclose(la, lb, atol=1e-6)
    a, b = tiny_model(arch), tiny_model(arch)
    torch.manual_seed(3)
    la = noisy_embedding_step(a, batch, _backward, sigma=0.4)
    torch.manual_seed(3)
    lb = _noise(b, batch, sigma=0.4 / r, unit="states")
    assert torch.allclose(la, lb, atol=1e-6)


def _capture_delta(monkeypatch):
    """Records every delta the placed PGD projects (the module's project_step)."""
    import fastrobust.methods.placement as placement

    seen = []
    real = placement.project_step

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out.detach().clone())
        return out

    monkeypatch.setattr(placement, "project_step", spy)
    return seen


def test_second_sentence_only_and_one_ball_per_sentence(monkeypatch):
    batch = _xlmr_pair_batch()
    model = tiny_model("xlmr")
    seen = _capture_delta(monkeypatch)
    eps = 0.2
    _pgd(model, batch, steps=1, epsilon=eps, step_size=10.0, sentences="second")
    d = seen[-1]
    m1, m2 = sentence_masks(batch)
    assert d[m1.bool()].abs().max() == 0 and d[~batch["attention_mask"].bool()].abs().max() == 0
    norms = d.flatten(1).norm(dim=1)
    assert (
        torch.allclose(norms[:2], torch.full((2,), eps), atol=1e-5) and norms[2] == 0
    )  # row 2: no sentence 2
    _pgd(model, batch, steps=1, epsilon=eps, step_size=10.0, ball="sentence")
    d = seen[-1]
    n1 = (d * m1.unsqueeze(-1)).flatten(1).norm(dim=1)
    n2 = (d * m2.unsqueeze(-1)).flatten(1).norm(dim=1)
    assert torch.allclose(n1, torch.full((3,), eps), atol=1e-5)  # each sentence fills its own ball
    assert torch.allclose(n2[:2], torch.full((2,), eps), atol=1e-5)


def test_layer_hook_and_layer_pgd_ascends():
    model = tiny_model("bert", layers=3)
    batch = tiny_batch()
    with torch.no_grad():
        clean = forward_from_ids(model, batch)
        with perturb_layer(model, 2, torch.zeros_like):
            same = forward_from_ids(model, batch)
        with perturb_layer(model, 2, lambda h: torch.ones_like(h)):
            moved = forward_from_ids(model, batch)
    assert torch.equal(clean, same) and not torch.allclose(clean, moved)
    assert len(model.bert.encoder.layer[1]._forward_hooks) == 0  # removed on exit
    with pytest.raises(FastrobustError, match="layer"), perturb_layer(model, 4, torch.zeros_like):
        pass
    clean_loss = torch.nn.functional.cross_entropy(clean, batch["labels"])
    adv = _pgd(model, batch, lambda loss: None, steps=3, epsilon=1.0, step_size=0.5, unit="states", layer=2)
    assert adv > clean_loss + 1e-4  # the ascent found a worse perturbation of h_2


def test_sentence_shift_noise_is_one_vector_per_sentence():
    batch = _xlmr_pair_batch()
    torch.manual_seed(0)
    h = torch.zeros(3, 10, 8)
    noise = sentence_noise(h, 0.5, list(sentence_masks(batch)))
    m1, m2 = sentence_masks(batch)
    for b in range(2):
        s1 = noise[b][m1[b].bool()]
        s2 = noise[b][m2[b].bool()]
        assert torch.allclose(s1, s1[:1].expand_as(s1)) and torch.allclose(s2, s2[:1].expand_as(s2))
        assert not torch.allclose(s1[0], s2[0])
    assert noise[~batch["attention_mask"].bool()].abs().max() == 0
    big = sentence_noise(torch.zeros(2000, 1, 64), 0.5, [torch.ones(2000, 1)])
    assert big.std().item() == pytest.approx(0.5, rel=0.02)


def test_layer_noise_relative_to_the_layer_rms(monkeypatch):
    import fastrobust.methods.placement as placement

    model = tiny_model("bert", layers=2)
    batch = tiny_batch()
    seen = {}
    real = placement.apply_noise

    def spy(h, sigma, *a, **k):
        seen["sigma"] = float(sigma)
        return real(h, sigma, *a, **k)

    monkeypatch.setattr(placement, "apply_noise", spy)
    _noise(model, batch, lambda loss: None, sigma=0.5, unit="states", layer=1)
    box = {}
    with torch.no_grad(), perturb_layer(model, 1, lambda h: box.setdefault("h", h) * 0):
        forward_from_ids(model, batch)
    m = batch["attention_mask"].bool()
    assert seen["sigma"] == pytest.approx(0.5 * float(box["h"][m].pow(2).mean().sqrt()), rel=1e-5)
    method = build_method(NoiseConfig(sigma=0.5, sigma_mode="relative", shape="sentence"))
    method.setup(model)
    method.training_step(model, batch, lambda loss: None)  # layer 0: units of the embedding table
    assert seen["sigma"] == pytest.approx(0.5 * embedding_rms(model), rel=1e-6)


def test_config_and_build_method_routing():
    # one class per method: the placement is a parameter of its step
    assert type(build_method(AdversarialConfig(kind="pgd", layer=2, ball="sentence"))) is PGD
    assert type(build_method(AdversarialConfig(kind="pgd"))) is PGD
    assert type(build_method(NoiseConfig(sentences="second"))) is RandomPerturbation
    assert type(build_method(AdversarialConfig(kind="freelb", layer=1))) is FreeLB
    with pytest.raises(ConfigError, match="layer"):
        build_method({"kind": "rs-rp", "layer": -1})
    with pytest.raises(ConfigError, match="ball"):
        build_method({"kind": "pgd", "ball": "token"})
    with pytest.raises(FastrobustError, match="neftune"):
        build_method(NoiseConfig(sigma_mode="neftune", shape="sentence"))


def test_placed_methods_train_in_the_trainer(tiny_pawsx, tmp_path):
    from fastrobust.training import train

    data, model = tiny_pawsx
    result = train(
        None,
        [
            "seeds=null",  # one run per method (the demo config underneath lists seeds)
            "parallel=1",
            "task.name=pawsx",
            "task.source=local",
            f"task.path={data}",
            "task.languages=[en, de]",
            f"model.name_or_path={model}",
            "model.max_length=32",
            "methods=[{kind: pgd, label: pgd-l1-s2, layer: 1, sentences: second, ball: sentence, steps: 2},"
            " {kind: freelb, label: freelb-ball, ball: sentence, steps: 2},"
            " {kind: rs-rp, label: shift, shape: sentence, sentences: second, layer: 1}]",
            "optim.batch_size=8",
            "optim.max_steps=3",
            "eval.every_steps=3",
            "output.save_model=false",
            "output.tensorboard=false",
            f"output.dir={tmp_path}",
        ],
    )
    for label in ("pgd-l1-s2", "freelb-ball", "shift"):
        s = result["methods"][label]
        assert s["steps"] == 3 and all(map(torch.isfinite, torch.tensor(s["losses"])))
