"""add_embedding_noise: a removable, masked, train-mode-only noise hook for any HF model."""

from __future__ import annotations

import pytest
import torch
from test_methods_util import EngineLike, tiny_batch, tiny_model

from fastrobust.errors import FastrobustError
from fastrobust.methods import add_embedding_noise, embedding_rms


def _record_embeddings(model):
    """Registers (after the noise hook) a hook that keeps what the encoder receives."""
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(
        lambda m, i, o: seen.append(o.detach().clone())
    )
    return seen, handle


def _run(model, batch, positional=False):
    with torch.no_grad():
        if positional:  # forward(input_ids, attention_mask, token_type_ids)
            return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.parametrize("arch", ["bert", "xlmr"])
@pytest.mark.parametrize("positional", [False, True], ids=["kwargs", "positional"])
def test_noise_on_real_tokens_in_train_mode_only_and_removable(arch, positional):
    model = tiny_model(arch, hidden=64)
    batch = tiny_batch(4, 12, token_types=(arch == "bert"))
    clean = model.get_input_embeddings()(batch["input_ids"]).detach()
    ref_logits = _run(model, batch)
    handle = add_embedding_noise(model, 0.2)
    seen, rec = _record_embeddings(model)

    assert torch.equal(_run(model, batch, positional), ref_logits)  # eval mode: untouched
    assert torch.equal(seen[-1], clean)

    model.train()
    _run(model, batch, positional)
    diff = seen[-1] - clean
    mask = batch["attention_mask"].bool()
    assert torch.all(diff[~mask] == 0)  # padding gets no noise
    real = diff[mask]
    assert real.std().item() == pytest.approx(0.2, rel=0.1)  # ~2000 draws
    assert abs(real.mean().item()) < 0.02

    handle.remove()
    assert not handle.active
    _run(model, batch, positional)
    assert torch.equal(seen[-1], clean)  # removed: no noise even in train mode
    rec.remove()


def test_without_a_mask_every_position_is_noised_and_the_mask_is_not_stale():
    model = tiny_model("bert").train()
    batch = tiny_batch(2, 8)
    add_embedding_noise(model, 0.1)
    seen, _ = _record_embeddings(model)
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    # a later call without attention_mask must not reuse the previous call's mask
    model(input_ids=batch["input_ids"])
    clean = model.get_input_embeddings().weight[batch["input_ids"]]
    assert torch.all((seen[-1] - clean).abs().sum(-1) > 0)


def test_relative_and_neftune_scales():
    model = tiny_model("xlmr", hidden=64).train()
    batch = tiny_batch(4, 12, token_types=False)
    rel = add_embedding_noise(model, 2.0, sigma_mode="relative")
    assert rel.sigma == pytest.approx(2.0 * embedding_rms(model))
    rel.remove()

    add_embedding_noise(model, 8.0, sigma_mode="neftune", distribution="uniform")
    seen, _ = _record_embeddings(model)
    model(**{k: v for k, v in batch.items() if k != "labels"})
    clean = model.get_input_embeddings().weight[batch["input_ids"]].detach()
    diff = seen[-1] - clean
    for b, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        bound = 8.0 / (length * 64) ** 0.5  # U(-s, s) with s = alpha / sqrt(L_real * H)
        d = diff[b, :length]
        assert d.abs().max() <= bound * (1 + 1e-5)
        assert d.abs().max() > 0.9 * bound  # the bound is reached: s uses the real length
        assert torch.all(diff[b, length:] == 0)


def test_seeded_noise_is_reproducible_and_leaves_the_global_rng_alone():
    batch = tiny_batch(2, 8)
    outs = []
    for _ in range(2):
        model = tiny_model("bert").train()
        with add_embedding_noise(model, 0.3, seed=123) as handle:
            torch.manual_seed(0)
            outs.append(_run(model, batch))
            after = torch.rand(1)
        assert not handle.active
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after)  # no draw from torch's generator


def test_works_through_an_engine_wrapper_and_with_gradients():
    model = tiny_model("bert").train()
    engine = EngineLike(model)
    handle = add_embedding_noise(engine, 0.1)
    batch = tiny_batch(2, 8)
    out = engine(**batch)
    out.loss.backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    handle.remove()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": 0.1, "sigma_mode": "huge"}, "sigma_mode"),
        ({"sigma": 0.1, "distribution": "laplace"}, "distribution"),
        ({"sigma": 0.1, "seed": -2}, "seed"),
    ],
)
def test_bad_arguments(kwargs, needle):
    with pytest.raises(FastrobustError, match=needle):
        add_embedding_noise(tiny_model("bert"), **kwargs)
    with pytest.raises(FastrobustError, match="get_input_embeddings"):
        add_embedding_noise(torch.nn.Linear(2, 2), 0.1)
