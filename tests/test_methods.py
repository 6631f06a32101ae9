"""Robust-training methods on tiny BERT / XLM-R classifiers (reference ops backend)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from test_methods_util import EngineLike, grads, tiny_batch, tiny_model

from fastrobust import reference
from fastrobust.config import AdversarialConfig, BaselineConfig, NoiseConfig, SynonymConfig
from fastrobust.errors import ConfigError, DataError, FastrobustError
from fastrobust.methods import adversarial_step, build_method, find_perturbation, freelb_step
from fastrobust.methods import noise as noise_module
from fastrobust.methods.embeddings import (
    embed_inputs,
    embedding_rms,
    forward_from_embeds,
    forward_from_ids,
    position_padding_idx,
)
from fastrobust.timing import SectionTimer

ARCHS = ["bert", "xlmr"]


def _batch(arch, **kw):
    return tiny_batch(token_types=(arch == "bert"), **kw)


def _per_example_loss(model, batch, embeds):
    return F.cross_entropy(
        forward_from_embeds(model, batch, embeds).float(), batch["labels"], reduction="none"
    )


# --------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_from_embeds_equals_input_ids_forward(arch):
    model = tiny_model(arch)
    batch = _batch(arch)
    with torch.no_grad():
        ref = forward_from_ids(model, batch)
        out = forward_from_embeds(model, batch, embed_inputs(model, batch))
    assert torch.equal(out, ref)


def test_xlmr_position_ids_follow_the_mask_even_when_left_padded():
    """XLM-R numbers real tokens from padding_idx + 1. With right padding the naive
    inputs_embeds path happens to agree (padding is masked anyway); with left padding it does
    not, and the helper still matches the input_ids forward exactly."""
    xlmr, bert = tiny_model("xlmr"), tiny_model("bert")
    assert position_padding_idx(xlmr) == 1
    assert position_padding_idx(bert) is None
    right = _batch("xlmr")
    mask = right["attention_mask"]
    # roll each row so that its padding comes first
    shifts = (mask.shape[1] - mask.sum(1)).tolist()
    left = {
        k: torch.stack([torch.roll(v[i], s) for i, s in enumerate(shifts)]) if v.dim() == 2 else v
        for k, v in right.items()
    }
    assert left["attention_mask"][1, 0] == 0
    with torch.no_grad():
        ref = forward_from_ids(xlmr, left)
        ours = forward_from_embeds(xlmr, left, embed_inputs(xlmr, left))
        naive = xlmr(inputs_embeds=embed_inputs(xlmr, left), attention_mask=left["attention_mask"]).logits
    assert torch.allclose(ours, ref, atol=1e-6)
    assert not torch.allclose(naive[1:], ref[1:], atol=1e-4)


def test_embedding_rms_matches_table_and_gathers_under_zero3(monkeypatch):
    model = tiny_model("bert")
    weight = model.get_input_embeddings().weight
    assert embedding_rms(model) == pytest.approx(float(weight.detach().pow(2).mean().sqrt()), rel=1e-6)
    # A ZeRO-3 parameter (ds_id set) must be gathered before reading it.
    entered = []

    class Gathered:
        def __init__(self, params, modifier_rank=None):
            entered.append((list(params), modifier_rank))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=Gathered)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    weight.ds_id = 7
    try:
        embedding_rms(model)
    finally:
        del weight.ds_id
    assert len(entered) == 1 and entered[0][0][0] is weight and entered[0][1] is None


# --------------------------------------------------------------------------- build_method / bad input


def test_build_method_kinds_and_labels():
    assert build_method(BaselineConfig()).label == "baseline"
    assert build_method(AdversarialConfig(kind="pgd", label="at")).label == "at"
    assert type(build_method({"kind": "freelb"})).__name__ == "FreeLB"
    assert type(build_method({"kind": "rs-rp", "sigma": 0.1})).__name__ == "RandomPerturbation"
    method = build_method({"kind": "rs-da"}, task_synonyms={"big": ["large"]})
    assert type(method).__name__ == "SynonymSubstitution"


@pytest.mark.parametrize(
    ("section", "error", "needle"),
    [
        ({"kind": "dropout"}, ConfigError, "unknown method kind 'dropout'"),
        ({"kind": "pgd", "steps": 0}, ConfigError, "steps"),
        ({"kind": "freelb", "epsilon": -1.0}, ConfigError, "epsilon"),
        ({"kind": "rs-rp", "sigma": -0.5}, ConfigError, "sigma"),
        ({"kind": "rs-rp", "sigma_mode": "bogus"}, ConfigError, "sigma_mode"),
        ({"kind": "rs-da"}, ConfigError, "synonym table"),
        ({"kind": "rs-da", "synonyms": "/nonexistent/syn.json"}, DataError, "/nonexistent/syn.json"),
    ],
)
def test_build_method_rejects_bad_sections(section, error, needle):
    with pytest.raises(error, match=None) as info:
        build_method(section)
    assert needle in str(info.value)


def test_functional_api_rejects_bad_arguments():
    model, batch = tiny_model("bert"), _batch("bert")
    with pytest.raises(FastrobustError, match="steps"):
        adversarial_step(model, batch, lambda loss: None, steps=0)
    with pytest.raises(FastrobustError, match="epsilon"):
        adversarial_step(model, batch, lambda loss: None, epsilon=-0.1)
    with pytest.raises(FastrobustError, match="adv_weight"):
        adversarial_step(model, batch, lambda loss: None, adv_weight=1.5)
    with pytest.raises(FastrobustError, match="norm"):
        freelb_step(model, batch, lambda loss: None, norm="l1")
    with pytest.raises(FastrobustError, match="labels"):
        adversarial_step(model, {k: v for k, v in batch.items() if k != "labels"}, lambda loss: None)


def test_relative_scales_need_setup_and_use_the_rms():
    model = tiny_model("bert")
    method = build_method(
        AdversarialConfig(epsilon=2.0, step_size=0.5, init_magnitude=0.1, scale_mode="relative")
    )
    with pytest.raises(FastrobustError, match="setup"):
        method.training_step(model, _batch("bert"), lambda loss: None)
    method.setup(model)
    rms = embedding_rms(model)
    assert method.scales() == pytest.approx(
        {"epsilon": 2.0 * rms, "step_size": 0.5 * rms, "init_magnitude": 0.1 * rms}
    )
    absolute = build_method(AdversarialConfig(epsilon=2.0, step_size=0.5, scale_mode="absolute"))
    assert absolute.scales()["epsilon"] == 2.0


# --------------------------------------------------------------------------- the adversary


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_adversary_beats_clean_and_random_perturbations(arch, norm):
    model, batch = tiny_model(arch), _batch(arch)
    rms = embedding_rms(model)
    # L2 over a whole sequence vs Linf per entry: comparable strength needs different radii.
    eps = 2.0 * rms * 32**0.5 if norm == "l2" else 0.5 * rms
    delta = find_perturbation(model, batch, steps=5, epsilon=eps, step_size=eps / 2, norm=norm)
    mask = batch["attention_mask"].bool()
    assert not delta.requires_grad
    assert torch.all(delta[~mask] == 0)  # padding untouched
    flat = delta.flatten(1)
    norms = flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)
    assert torch.all(norms <= eps * (1 + 1e-5))
    assert torch.all(norms >= 0.5 * eps)  # the ascent actually moved every example

    # A random perturbation with exactly the same per-example norm and mask.
    gen = torch.Generator().manual_seed(5)
    rand = torch.randn(delta.shape, generator=gen) * mask.unsqueeze(-1)
    if norm == "l2":
        rand = rand * (norms / rand.flatten(1).norm(dim=1)).view(-1, 1, 1)
    else:
        rand = torch.sign(rand) * eps
    with torch.no_grad():
        embeds = embed_inputs(model, batch)
        clean = _per_example_loss(model, batch, embeds)
        adv = _per_example_loss(model, batch, embeds + delta)
        noisy = _per_example_loss(model, batch, embeds + rand)
    assert torch.all(adv > clean), (adv, clean)
    assert adv.mean() > noisy.mean() and (adv > noisy).float().mean() >= 0.75, (adv, noisy)


def test_pgd_random_start_stays_in_ball():
    model, batch = tiny_model("bert"), _batch("bert")
    torch.manual_seed(0)
    delta = find_perturbation(model, batch, steps=1, epsilon=0.05, step_size=0.0, init_magnitude=1.0)
    # step_size 0: delta is the random start, capped at epsilon (init 1.0 > eps 0.05)
    norms = delta.flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.05 * (1 + 1e-5)) and torch.all(norms > 0)
    assert torch.all(delta[~batch["attention_mask"].bool()] == 0)


class RecordingBackward:
    """A backward callable that records the state of every parameter .grad when called."""

    def __init__(self, model, call_backward=True):
        self.model = model
        self.call_backward = call_backward
        self.calls = []

    def __call__(self, loss):
        self.calls.append((loss.detach().clone(), grads(self.model)))
        if self.call_backward:
            loss.backward()


@pytest.mark.parametrize("arch", ARCHS)
def test_pgd_inner_steps_leave_parameter_grads_untouched(arch):
    model, batch = tiny_model(arch), _batch(arch)
    sentinel = {}
    for name, p in model.named_parameters():
        p.grad = torch.full_like(p, 7.0)
        sentinel[name] = p.grad.clone()
    backward = RecordingBackward(model, call_backward=False)
    adversarial_step(model, batch, backward, steps=4, epsilon=0.5, step_size=0.2)
    assert len(backward.calls) == 1  # exactly one backward, after the inner steps
    seen = backward.calls[0][1]
    for name, p in model.named_parameters():
        assert torch.equal(seen[name], sentinel[name]), name  # nothing accumulated during the ascent
        assert torch.equal(p.grad, sentinel[name]), name


@pytest.mark.parametrize("adv_weight", [1.0, 0.3])
def test_pgd_step_loss_and_grads_equal_the_mixed_objective(adv_weight):
    model, batch = tiny_model("xlmr"), _batch("xlmr")
    kw = dict(steps=3, epsilon=0.3, step_size=0.1, norm="l2")
    loss = adversarial_step(model, batch, lambda l: l.backward(), adv_weight=adv_weight, **kw)
    got = grads(model)
    model.zero_grad(set_to_none=True)
    delta = find_perturbation(model, batch, **kw)
    embeds = embed_inputs(model, batch)
    adv = F.cross_entropy(forward_from_embeds(model, batch, embeds + delta).float(), batch["labels"])
    clean = F.cross_entropy(forward_from_embeds(model, batch, embeds).float(), batch["labels"])
    expected = adv_weight * adv + (1 - adv_weight) * clean
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    want = grads(model)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-7, rtol=1e-5), name
    # the embedding table is trained by the adversarial loss too
    assert got["roberta.embeddings.word_embeddings.weight"].abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_freelb_accumulated_grads_equal_hand_computed(arch, norm):
    model, batch = tiny_model(arch), _batch(arch)
    K, eps, a = 3, 0.4, 0.15
    backward = RecordingBackward(model)
    loss = freelb_step(model, batch, backward, steps=K, epsilon=eps, step_size=a, norm=norm)
    got = grads(model)
    assert len(backward.calls) == K
    model.zero_grad(set_to_none=True)

    # By hand: K passes at delta_0 = 0, delta_{t+1} = reference.pgd_step(delta_t, grad), each
    # parameter gradient accumulated with weight 1/K.
    params = [p for _, p in model.named_parameters()]
    total = [torch.zeros_like(p) for p in params]
    mask = batch["attention_mask"]
    delta = torch.zeros_like(embed_inputs(model, batch))
    losses = []
    for t in range(K):
        d = delta.clone().requires_grad_(True)
        lt = F.cross_entropy(
            forward_from_embeds(model, batch, embed_inputs(model, batch) + d).float(), batch["labels"]
        )
        losses.append(lt.item())
        gs = torch.autograd.grad(lt / K, params + [d], allow_unused=True)
        for acc, g in zip(total, gs[:-1]):
            if g is not None:
                acc += g
        delta = reference.pgd_step(delta, gs[-1], step_size=a, epsilon=eps, norm=norm, mask=mask)
        assert backward.calls[t][0].item() == pytest.approx(lt.item() / K, rel=1e-6)
    assert loss.item() == pytest.approx(sum(losses) / K, rel=1e-6)
    for (name, _), want in zip(model.named_parameters(), total):
        assert torch.allclose(got[name], want, atol=1e-7, rtol=1e-5), name


# --------------------------------------------------------------------------- RS-RP


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["absolute", "relative", "neftune"])
def test_rs_rp_sigma_zero_equals_baseline_step_exactly(arch, mode):
    # dropout on: the two steps must also consume the random stream identically
    model, batch = tiny_model(arch, dropout=0.1).train(), _batch(arch)
    base, noisy = build_method(BaselineConfig()), build_method(NoiseConfig(sigma=0.0, sigma_mode=mode))
    noisy.setup(model)
    torch.manual_seed(11)
    loss_b = base.training_step(model, batch, lambda l: l.backward())
    grads_b = grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    loss_n = noisy.training_step(model, batch, lambda l: l.backward())
    assert torch.equal(loss_b, loss_n)
    for name, g in grads(model).items():
        assert torch.equal(g, grads_b[name]), name


def _spy_add_noise(monkeypatch):
    calls = []
    real = noise_module.ops.add_noise

    def spy(embeds, sigma, **kw):
        calls.append({"embeds": embeds, "sigma": sigma, **kw})
        return real(embeds, sigma, **kw)

    monkeypatch.setattr(noise_module.ops, "add_noise", spy)
    return calls


def test_rs_rp_noise_is_masked_and_scaled(monkeypatch):
    calls = _spy_add_noise(monkeypatch)
    model, batch = tiny_model("bert"), _batch("bert")
    method = build_method(NoiseConfig(sigma=0.5, sigma_mode="relative", distribution="uniform"))
    method.setup(model)
    loss = method.training_step(model, batch, lambda l: l.backward())
    assert torch.isfinite(loss)
    (call,) = calls
    assert call["sigma"] == pytest.approx(0.5 * embedding_rms(model))
    assert call["distribution"] == "uniform"
    assert torch.equal(call["mask"], batch["attention_mask"])


def test_neftune_uses_real_lengths(monkeypatch):
    calls = _spy_add_noise(monkeypatch)
    model, batch = tiny_model("xlmr"), _batch("xlmr", length=12)
    method = build_method(NoiseConfig(sigma=5.0, sigma_mode="neftune"))
    method.setup(model)
    method.training_step(model, batch, lambda l: None)
    sigma = calls[0]["sigma"]
    real = batch["attention_mask"].sum(1).float()  # 12, 9, 6, 3 — not the padded 12
    assert torch.allclose(sigma, 5.0 / torch.sqrt(real * 32))
    assert sigma.shape == (4,) and len(set(sigma.tolist())) == 4


# --------------------------------------------------------------------------- all methods


def _all_methods():
    return [
        BaselineConfig(),
        AdversarialConfig(kind="pgd", steps=2, epsilon=1.0, step_size=0.5, adv_weight=0.5),
        AdversarialConfig(kind="freelb", steps=2, epsilon=1.0, step_size=0.5, init_magnitude=0.5),
        NoiseConfig(sigma=0.5),
        NoiseConfig(sigma=5.0, sigma_mode="neftune"),
        SynonymConfig(),
    ]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("wrap", [False, True], ids=["model", "engine"])
def test_every_method_trains_in_fp32_bf16_and_under_an_engine(arch, dtype, wrap):
    for cfg in _all_methods():
        model = tiny_model(arch).to(dtype).train()
        target = EngineLike(model) if wrap else model
        method = build_method(cfg, task_synonyms={"x": ["y"]})
        method.setup(target)
        timer = SectionTimer()
        loss = method.training_step(target, _batch(arch), lambda l: l.backward(), timer)
        assert loss.dim() == 0 and not loss.requires_grad and torch.isfinite(loss), cfg.kind
        gs = [p.grad for p in model.parameters() if p.grad is not None]
        assert gs and all(g.dtype == dtype and torch.isfinite(g).all() for g in gs), cfg.kind
        assert timer.totals["forward"] > 0 and timer.totals["backward"] > 0, cfg.kind
        if cfg.kind in ("pgd", "freelb", "rs-rp"):
            assert timer.totals["perturbation"] > 0, cfg.kind
