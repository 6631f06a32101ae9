"""The pure-torch path (fastrobust.reference), argument validation and backend dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_ops_support import make_mask, pgd_step_oracle

from fastrobust import ops, reference
from fastrobust.errors import FastrobustError


def test_reference_float64_equals_definition():
    """In float64 the reference (L2 identity, fused passes) equals the step's definition."""
    gen = torch.Generator().manual_seed(0)
    shape = (4, 9, 31)
    mask = make_mask(4, 9, kind="empty")
    for norm in ("l2", "linf"):
        for eps in (None, 0.01, 0.4, 10.0):
            delta = 0.2 * torch.randn(shape, generator=gen, dtype=torch.float64)
            grad = torch.randn(shape, generator=gen, dtype=torch.float64)
            grad[1] = 0.0
            got = reference.pgd_step(delta, grad, step_size=0.3, epsilon=eps, norm=norm, mask=mask)
            want = pgd_step_oracle(delta, grad, step_size=0.3, epsilon=eps, norm=norm, mask=mask)
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_reference_same_seed_same_output_and_dtype():
    x = torch.randn(2, 3, 10, dtype=torch.bfloat16)
    a = reference.add_noise(x, 0.5, seed=3, distribution="uniform")
    assert a.dtype == torch.bfloat16
    assert torch.equal(a, reference.add_noise(x, 0.5, seed=3, distribution="uniform"))
    assert torch.equal(reference.noisy_copies(x, 2, 0.5, seed=3, distribution="uniform")[0], a)
    assert torch.equal(reference.pgd_init(x, 1.0, seed=9), reference.pgd_init(x, 1.0, seed=9))
    # The reference gets the tensor's own generator: the same noise as ops on the torch backend.
    assert torch.equal(ops.add_noise(x, 0.5, seed=3, distribution="uniform"), a)


def test_reference_noise_tracks_autograd():
    x = torch.randn(2, 3, 4, requires_grad=True)
    reference.add_noise(x, 0.1, seed=1).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_pgd_step_without_embeds_returns_tensor():
    delta = torch.zeros(1, 2, 3)
    out = ops.pgd_step(delta, torch.ones(1, 2, 3), step_size=0.5, epsilon=None)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(torch.linalg.vector_norm(out), torch.tensor(0.5))


# --------------------------------------------------------------------------- validation

X = torch.zeros(2, 3, 4)
G = torch.zeros(2, 3, 4)


def _noise(**kw):
    args = dict(embeds=X, sigma=0.1) | kw
    return ops.add_noise(args.pop("embeds"), args.pop("sigma"), **args)


def _copies(**kw):
    args = dict(embeds=X, n=2, sigma=0.1) | kw
    return ops.noisy_copies(args.pop("embeds"), args.pop("n"), args.pop("sigma"), **args)


def _init(**kw):
    args = dict(embeds=X, epsilon=1.0) | kw
    return ops.pgd_init(args.pop("embeds"), args.pop("epsilon"), **args)


def _step(**kw):
    args = dict(delta=X, grad=G, step_size=0.1, epsilon=1.0) | kw
    return ops.pgd_step(args.pop("delta"), args.pop("grad"), **args)


BAD = [
    (_noise, dict(embeds=torch.zeros(2, 3, 4, dtype=torch.long)), "embeds"),
    (_noise, dict(embeds=torch.zeros(3, 4)), "embeds"),
    (_noise, dict(embeds=[[1.0]]), "embeds"),
    (_noise, dict(sigma=-0.1), "sigma"),
    (_noise, dict(sigma=float("nan")), "sigma"),
    (_noise, dict(sigma="0.1"), "sigma"),
    (_noise, dict(sigma=True), "sigma"),
    (_noise, dict(sigma=torch.tensor([0.1, -0.2])), "sigma"),
    (_noise, dict(sigma=torch.tensor([0.1, 0.2, 0.3])), "sigma"),
    (_noise, dict(sigma=torch.tensor([1, 2])), "sigma"),
    (_noise, dict(distribution="laplace"), "distribution"),
    (_noise, dict(mask=torch.ones(2, 4)), "mask"),
    (_noise, dict(mask=torch.ones(2, 3, 4)), "mask"),
    (_noise, dict(mask=[1, 1]), "mask"),
    (_noise, dict(seed=-1), "seed"),
    (_noise, dict(seed=2**31), "seed"),
    (_noise, dict(seed=1.5), "seed"),
    (_copies, dict(n=0), "n"),
    (_copies, dict(n=2.0), "n"),
    (_copies, dict(sigma=-1.0), "sigma"),
    (_init, dict(epsilon=-1.0), "epsilon"),
    (_init, dict(epsilon=None), "epsilon"),
    (_init, dict(norm="l1"), "norm"),
    (_init, dict(embeds=torch.zeros(2, 3, 4, dtype=torch.int32)), "embeds"),
    (_init, dict(mask=torch.ones(3, 3)), "mask"),
    (_step, dict(step_size=-0.1), "step_size"),
    (_step, dict(step_size=None), "step_size"),
    (_step, dict(epsilon=-1.0), "epsilon"),
    (_step, dict(epsilon=float("inf")), "epsilon"),
    (_step, dict(norm="l3"), "norm"),
    (_step, dict(grad=torch.zeros(2, 3, 5)), "grad"),
    (_step, dict(grad=torch.zeros(2, 3, 4, dtype=torch.long)), "grad"),
    (_step, dict(delta=torch.zeros(6, 4)), "delta"),
    (_step, dict(delta=torch.zeros(2, 3, 4, dtype=torch.int64)), "delta"),
    (_step, dict(embeds=torch.zeros(2, 3, 5)), "embeds"),
    (_step, dict(mask=torch.ones(3, 2)), "mask"),
]


@pytest.mark.parametrize(
    "fn, kwargs, name", BAD, ids=[f"{f.__name__}-{n}-{i}" for i, (f, _, n) in enumerate(BAD)]
)
def test_bad_arguments_raise_value_error_naming_them(fn, kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        fn(**kwargs)


def test_reference_functions_validate_too():
    with pytest.raises(FastrobustError, match="sigma"):
        reference.add_noise(X, -1.0)
    with pytest.raises(FastrobustError, match="n must"):
        reference.noisy_copies(X, 0, 1.0)
    with pytest.raises(FastrobustError, match="norm"):
        reference.pgd_init(X, 1.0, norm="l0")
    with pytest.raises(FastrobustError, match="grad"):
        reference.pgd_step(X, torch.zeros(1, 3, 4), step_size=0.1, epsilon=None)


# --------------------------------------------------------------------------- dispatch


def test_backend_env_is_read_at_each_call(monkeypatch):
    x = torch.zeros(1, 2, 3)
    monkeypatch.setenv("FASTROBUST_BACKEND", "torch")
    assert ops.backend_for(x) == "torch"
    monkeypatch.setenv("FASTROBUST_BACKEND", "bogus")
    with pytest.raises(FastrobustError, match="FASTROBUST_BACKEND"):
        ops.add_noise(x, 0.1)
    monkeypatch.setenv("FASTROBUST_BACKEND", "auto")
    from fastrobust.kernels import common

    interpreted = os.environ.get("TRITON_INTERPRET") == "1" and common.INTERPRETED
    assert ops.backend_for(x) == ("triton" if interpreted else "torch")
    with ops.use_backend("torch"):
        assert ops.backend_for(x) == "torch"
    assert os.environ["FASTROBUST_BACKEND"] == "auto"
    with pytest.raises(FastrobustError, match="backend"), ops.use_backend("cuda"):
        pass


def test_float64_takes_the_reference(monkeypatch):
    x = torch.zeros(1, 2, 3, dtype=torch.float64)
    monkeypatch.setenv("FASTROBUST_BACKEND", "auto")
    assert ops.backend_for(x) == "torch"
    assert ops.backend_for(x.float(), None, x) == "torch"
    monkeypatch.setenv("FASTROBUST_BACKEND", "triton")
    with pytest.raises(FastrobustError, match="float64"):
        ops.add_noise(x, 0.1, seed=1)


def test_cpu_without_interpreter_never_launches_triton():
    """In a fresh process without TRITON_INTERPRET: import does not load triton, auto takes
    the reference on CPU, and a forced triton backend is a clear error, not '0 active drivers'."""
    code = textwrap.dedent(
        """
        import os, sys
        import torch
        import fastrobust
        from fastrobust import ops
        from fastrobust.errors import FastrobustError
        assert "triton" not in sys.modules, "import fastrobust imported triton"
        x = torch.zeros(2, 3, 4)
        ops.add_noise(x, 0.1, seed=1)
        ops.pgd_step(x, x, step_size=0.1, epsilon=1.0)
        assert "triton" not in sys.modules, "the CPU reference path imported triton"
        os.environ["FASTROBUST_BACKEND"] = "triton"
        try:
            ops.add_noise(x, 0.1, seed=1)
        except FastrobustError as err:
            assert "TRITON_INTERPRET" in str(err), err
            print("OK")
        else:
            raise SystemExit("forced triton on CPU did not raise")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTROBUST_BACKEND")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
