"""The ops under torch.compile, on meta tensors and in CUDA graphs.

* ``fullgraph=True`` (a graph break is an error) around a tiny HF BERT with
  ``add_embedding_noise`` (forward + the compiled backward), and around one PGD inner step
  and one FreeLB inner step built from the ops. On CPU the graphs are compiled with
  ``aot_eager`` (dynamo + AOTAutograd, the part that decides graph breaks and autograd;
  inductor's C++ code generation would add minutes here); the CUDA variants use inductor.
* Random ops stay random inside a compiled graph: two noise calls are never merged by the
  common-subexpression pass of the min-cut partitioner (a naive impure custom op is).
* meta tensors propagate shapes and dtypes; tensors on different devices are a clear error.
* CUDA graphs: a captured ``add_noise`` / ``pgd_init`` with ``seed=None`` draws fresh noise
  at every replay; an int seed replays the same noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from test_methods_util import tiny_batch, tiny_model
from test_ops_support import make_mask

from fastrobust import ops
from fastrobust.errors import FastrobustError
from fastrobust.methods import add_embedding_noise
from fastrobust.methods.embeddings import classification_loss, embed_inputs, forward_from_embeds

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (H100/H200 run)")


def _min_cut_backend():
    """AOTAutograd with the min-cut partitioner (which runs CSE) and no code generation."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    def nop(gm, _):
        return gm

    return aot_autograd(fw_compiler=nop, bw_compiler=nop, partition_fn=min_cut_rematerialization_partition)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --------------------------------------------------------------------------- fullgraph


def _noisy_training(model, batch, backend, steps=2):
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    losses = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        out = compiled(**batch)
        out.loss.backward()
        losses.append(out.loss.detach())
    return torch.stack(losses), model.get_input_embeddings().weight.grad.clone()


def _check_bert_with_noise_hook(device, backend):
    batch = {k: v.to(device) for k, v in tiny_batch(4, 10).items()}
    # seeded hook: the compiled run equals the eager run (same seeds k -> seed_k on the device)
    runs = []
    for compiled in (True, False):
        model = tiny_model("bert", hidden=32, layers=1).to(device).train()
        with add_embedding_noise(model, 0.5, seed=3):
            if compiled:
                runs.append(_noisy_training(model, batch, backend))
            else:
                losses = []
                for _ in range(2):
                    model.zero_grad(set_to_none=True)
                    out = model(**batch)
                    out.loss.backward()
                    losses.append(out.loss.detach())
                runs.append((torch.stack(losses), model.get_input_embeddings().weight.grad.clone()))
    (c_loss, c_grad), (e_loss, e_grad) = runs
    # aot_eager runs the same aten kernels as eager; inductor fuses and reorders reductions.
    rtol, atol = (1e-5, 1e-6) if backend == "aot_eager" else (1e-3, 1e-5)
    torch.testing.assert_close(c_loss, e_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(c_grad, e_grad, rtol=10 * rtol, atol=atol)
    assert c_loss[0] != c_loss[1]  # a new seed at every forward
    assert c_grad.abs().sum() > 0  # the embedding table is trained through the noise
    # seed=None: torch.manual_seed reproduces the compiled run, and the noise is really there
    model = tiny_model("bert", hidden=32, layers=1).to(device).train()
    clean = model(**batch).loss.detach()
    add_embedding_noise(model, 0.5)
    torch.manual_seed(11)
    a, _ = _noisy_training(model, batch, backend)
    torch.manual_seed(11)
    b, _ = _noisy_training(model, batch, backend)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], clean)


def test_compiled_bert_with_noise_hook_has_no_graph_break():
    """A compiled tiny BERT (fullgraph) with the noise hook: forward + compiled backward."""
    _check_bert_with_noise_hook(torch.device("cpu"), "aot_eager")


def _pgd_inner(model, batch, base, delta, grad, mask):
    """One PGD inner step: the fused step writes d' and e + d' (differentiable in the leaf
    ``base`` = e, so d loss / d base is the gradient w.r.t. d'), then the loss at e + d'."""
    new, x = ops.pgd_step(delta, grad, step_size=0.2, epsilon=0.5, mask=mask, embeds=base)
    loss = classification_loss(forward_from_embeds(model, batch, x), batch["labels"])
    return new, x.detach(), loss


def _freelb_perturb(model, batch, delta, grad, mask):
    """FreeLB's perturbation: the lookup, the fused step whose e + d' keeps autograd to e."""
    embeds = embed_inputs(model, batch)
    return ops.pgd_step(delta, grad, step_size=0.2, epsilon=0.5, mask=mask, embeds=embeds)


def _freelb_loss(model, batch, x):
    return classification_loss(forward_from_embeds(model, batch, x), batch["labels"]) / 2


def _init_step(embeds, mask):
    return ops.pgd_init(embeds, 0.3, mask=mask, next_input=True)


def _check_pgd_and_freelb_steps(device, backend):
    model = tiny_model("bert", hidden=32, layers=1).to(device).train()
    batch = {k: v.to(device) for k, v in tiny_batch(3, 8).items()}
    mask = batch["attention_mask"]
    embeds = embed_inputs(model, batch).detach()
    delta, x0 = torch.compile(_init_step, fullgraph=True, backend=backend)(embeds, mask)
    assert x0.shape == embeds.shape and torch.equal(delta[mask == 0], torch.zeros_like(delta[mask == 0]))
    grad = torch.randn(embeds.shape, device=device)

    pgd = torch.compile(_pgd_inner, fullgraph=True, backend=backend)
    base = embeds.detach().requires_grad_(True)
    new, x, loss = pgd(model, batch, base, delta, grad, mask)
    (g,) = torch.autograd.grad(loss, base)
    want_new, want_x = ops.pgd_step(delta, grad, step_size=0.2, epsilon=0.5, mask=mask, embeds=embeds)
    torch.testing.assert_close(new, want_new, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x, want_x, rtol=1e-5, atol=1e-6)
    assert g.abs().sum() > 0 and not new.requires_grad

    # FreeLB reads the delta gradient as x.grad of the model's input x = e + d': compiled as a
    # user would (the perturbation, and the model's forward), x is an input of the second graph.
    perturb = torch.compile(_freelb_perturb, fullgraph=True, backend=backend)
    forward = torch.compile(_freelb_loss, fullgraph=True, backend=backend)
    model.zero_grad(set_to_none=True)
    new, x = perturb(model, batch, None, grad, mask)  # zero start: reads no delta
    x.retain_grad()
    forward(model, batch, x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the next step's delta gradient
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0  # e + d' trains the table
    torch.testing.assert_close(new, ops.pgd_step(None, grad, step_size=0.2, epsilon=0.5, mask=mask))


def test_compiled_pgd_and_freelb_inner_steps_have_no_graph_break():
    _check_pgd_and_freelb_steps(torch.device("cpu"), "aot_eager")


def test_random_ops_are_not_merged_in_a_compiled_graph():
    """seed=None draws its seed inside the graph: two identical noise calls stay different
    (the partitioner's CSE merges two calls of an impure custom op with equal inputs)."""

    def two_draws(x):
        a = ops.add_noise(x, 1.0)
        b = ops.add_noise(x, 1.0)
        d1 = ops.pgd_init(x, 1.0)
        d2 = ops.pgd_init(x, 1.0)
        return (a - b).abs().sum() + (d1 - d2).abs().sum(), (d1 - d2).abs().sum()

    x = torch.zeros(2, 4, 16, requires_grad=True)
    total, init_diff = torch.compile(two_draws, fullgraph=True, backend=_min_cut_backend())(x)
    assert init_diff > 0 and total > init_diff
    total.backward()
    torch.testing.assert_close(x.grad, torch.zeros_like(x))  # d(a - b)/dx = I - I


@pytest.mark.kernels
def test_compiled_graph_runs_the_kernels(device, monkeypatch):
    """Under the interpreter (or on CUDA) the compiled graph calls the Triton kernels, and the
    backend is read when the graph runs, not when it is traced."""
    monkeypatch.setenv("FASTROBUST_BACKEND", "triton")

    def f(x, mask):
        return ops.add_noise(x, 0.5, seed=7, mask=mask)

    x = torch.randn(2, 3, 16, device=device)
    mask = make_mask(2, 3, device=device)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    tri = compiled(x, mask)
    assert torch.equal(tri, f(x, mask))
    monkeypatch.setenv("FASTROBUST_BACKEND", "torch")
    ref = compiled(x, mask)
    assert torch.equal(ref, f(x, mask)) and not torch.equal(ref, tri)


# --------------------------------------------------------------------------- meta and devices


def test_meta_tensors_propagate_shapes():
    e = torch.empty(3, 5, 8, device="meta", dtype=torch.bfloat16)
    g = torch.empty(3, 5, 8, device="meta")
    m = torch.empty(3, 5, device="meta", dtype=torch.long)
    out = ops.add_noise(e, 0.1, mask=m)
    assert out.device.type == "meta" and out.shape == e.shape and out.dtype == torch.bfloat16
    assert ops.add_noise(e, torch.empty(3, device="meta")).shape == e.shape
    assert ops.noisy_copies(e, 4, 0.1, seed=1).shape == (4, 3, 5, 8)
    delta, nxt = ops.pgd_init(e, 0.5, norm="linf", mask=m, next_input=True)
    assert delta.shape == nxt.shape == e.shape and delta.dtype == nxt.dtype == torch.bfloat16
    new, nxt = ops.pgd_step(g, g, step_size=0.1, epsilon=None, mask=m, embeds=e)
    assert (new.dtype, nxt.dtype) == (torch.float32, torch.bfloat16) and new.device.type == "meta"
    assert ops.pgd_step(None, g, step_size=0.1, epsilon=1.0, embeds=e)[0].dtype == torch.bfloat16
    assert ops.pgd_step(None, g, step_size=0.1, epsilon=1.0).dtype == torch.float32
    # autograd through meta: e + d' is differentiable in embeds
    leaf = torch.empty(3, 5, 8, device="meta", requires_grad=True)
    assert ops.pgd_step(None, g, step_size=0.1, epsilon=1.0, embeds=leaf)[1].requires_grad


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda x, m: ops.add_noise(x, 0.1, mask=m.to("meta")), "mask is on meta"),
        (lambda x, m: ops.add_noise(x, torch.ones(2, device="meta")), "sigma is on meta"),
        (lambda x, m: ops.add_noise(x, 0.1, seed=torch.tensor(3, device="meta")), "seed is on meta"),
        (lambda x, m: ops.pgd_step(x, x.to("meta"), step_size=0.1, epsilon=None), "grad is on meta"),
        (lambda x, m: ops.pgd_step(None, x, step_size=0.1, epsilon=0.1, embeds=x.to("meta")), "embeds is"),
        (lambda x, m: ops.pgd_init(x.to("meta"), 0.1, mask=m), "mask is on cpu"),
    ],
)
def test_tensors_on_different_devices_are_an_error(call, needle):
    with pytest.raises(FastrobustError, match=needle):
        call(torch.zeros(2, 3, 4), torch.ones(2, 3))


def test_unsupported_dtypes_are_named():
    fp8 = getattr(torch, "float8_e4m3fn", None)
    if fp8 is None:
        pytest.skip("this torch has no float8")
    with pytest.raises(FastrobustError, match=r"embeds: unsupported dtype torch\.float8_e4m3fn"):
        ops.add_noise(torch.zeros(2, 3, 4).to(fp8), 0.1)
    with pytest.raises(FastrobustError, match=r"grad: unsupported dtype"):
        ops.pgd_step(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4).to(fp8), step_size=0.1, epsilon=None)


# --------------------------------------------------------------------------- seed tensors


def test_seed_tensor_is_the_same_stream_as_the_int_seed(monkeypatch):
    """On the torch path a seed tensor is read on the host: same noise as the int seed."""
    x = torch.randn(2, 3, 8)
    for fn in (
        lambda s: ops.add_noise(x, 0.5, seed=s),
        lambda s: ops.noisy_copies(x, 2, 0.5, seed=s, distribution="uniform"),
        lambda s: ops.pgd_init(x, 0.5, seed=s),
    ):
        assert torch.equal(fn(9), fn(torch.tensor(9)))
        assert torch.equal(fn(9), fn(torch.tensor([9], dtype=torch.int32)))


# --------------------------------------------------------------------------- CUDA


def _distribution_ok(z: np.ndarray, law) -> bool:
    return stats.kstest(z, law.cdf).pvalue > 1e-3 and abs(z.mean()) < 5 * z.std() / np.sqrt(z.size)


@cuda_only
@pytest.mark.kernels
def test_cuda_graph_replays_draw_fresh_noise(monkeypatch):
    monkeypatch.setenv("FASTROBUST_BACKEND", "triton")
    x = torch.zeros(4, 64, 128, device="cuda")
    mask = make_mask(4, 64, device="cuda")
    for fn, law in (
        (lambda: ops.add_noise(x, 1.0), stats.norm()),
        (lambda: ops.pgd_init(x, 1.0, norm="linf"), stats.uniform(-1.0, 2.0)),
        (lambda: ops.add_noise(x, 1.0, seed=5, mask=mask), None),
    ):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # compile outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        outs = []
        for _ in range(2):
            graph.replay()
            torch.cuda.synchronize()
            outs.append(out.clone())
        if law is None:  # an int seed is a host scalar: every replay gives the same noise
            assert torch.equal(outs[0], outs[1])
            continue
        assert not torch.equal(outs[0], outs[1])
        for o in outs:
            assert _distribution_ok(o.flatten().double().cpu().numpy(), law)
    # torch.manual_seed reproduces a captured graph's draws (a replay reads the generator's
    # seed and offset at replay time)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.add_noise(x, 1.0)
    torch.manual_seed(3)
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(out, first)
    torch.manual_seed(3)
    graph.replay()
    assert torch.equal(out, first)


@cuda_only
@pytest.mark.kernels
@pytest.mark.slow
def test_cuda_compiled_bert_with_noise_hook(monkeypatch):
    monkeypatch.setenv("FASTROBUST_BACKEND", "triton")
    _check_bert_with_noise_hook(torch.device("cuda"), "inductor")


@cuda_only
@pytest.mark.kernels
def test_cuda_compiled_pgd_and_freelb_inner_steps(monkeypatch):
    monkeypatch.setenv("FASTROBUST_BACKEND", "triton")
    _check_pgd_and_freelb_steps(torch.device("cuda"), "inductor")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.kernels
def test_launch_follows_the_tensors_device(monkeypatch):
    """Tensors on cuda:1 while cuda:0 is current: the launch runs on cuda:1 (no illegal address)."""
    monkeypatch.setenv("FASTROBUST_BACKEND", "triton")
    x = torch.randn(2, 8, 64, device="cuda:1")
    with torch.cuda.device(0):
        out = ops.add_noise(x, 0.5, seed=1)
        new, nxt = ops.pgd_step(None, x, step_size=0.1, epsilon=1.0, embeds=x)
    with torch.cuda.device(1):
        want = ops.add_noise(x, 0.5, seed=1)
    torch.cuda.synchronize(1)
    assert out.device == x.device and torch.equal(out, want)
    torch.testing.assert_close(nxt - x, new)
