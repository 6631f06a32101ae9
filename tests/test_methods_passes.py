"""The adversarial methods launch no (B, L, H) elementwise pass that a fused op could write.

Every aten op that runs during a PGD / FreeLB step is recorded (a TorchDispatchMode), except
inside the model (forward, loss, backward, the embedding lookup) and inside the fused ops
themselves. What is left is the methods' own tensor work: it must not touch a (B, L, H)
tensor except through views (detach, aliases), i.e. no ``zeros_like`` start, no
``embeds + delta``, no copy.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_methods_util import tiny_batch, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

from fastrobust import ops
from fastrobust.methods import adversarial

FREE = {"detach", "alias", "view", "_unsafe_view", "t", "expand", "lift_fresh", "lift_fresh_copy"}


class _Recorder(TorchDispatchMode):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)
        self.depth = 0  # > 0 inside the model or a fused op
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.depth == 0:
            name = func.overloadpacket.__name__
            outs = out if isinstance(out, (tuple, list)) else (out,)
            big = any(isinstance(o, torch.Tensor) and tuple(o.shape) == self.shape for o in outs)
            if big and name not in FREE:
                self.seen.append(name)
        return out

    @contextlib.contextmanager
    def quiet(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


def _wrap(recorder, fn):
    def wrapped(*args, **kwargs):
        with recorder.quiet():
            return fn(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("method", ["pgd", "freelb"])
@pytest.mark.parametrize("init_mag", [0.0, 0.3])
def test_no_elementwise_pass_outside_the_ops(monkeypatch, method, init_mag):
    model = tiny_model("bert", hidden=32).train()
    batch = tiny_batch(3, 9)
    shape = (3, 9, 32)
    rec = _Recorder(shape)
    for name in ("forward_from_embeds", "embed_inputs", "classification_loss"):
        monkeypatch.setattr(adversarial, name, _wrap(rec, getattr(adversarial, name)))
    for name in ("pgd_init", "pgd_step"):
        monkeypatch.setattr(ops, name, _wrap(rec, getattr(ops, name)))
    monkeypatch.setattr(torch.autograd, "grad", _wrap(rec, torch.autograd.grad))
    backward = _wrap(rec, lambda loss: loss.backward())
    step = adversarial.adversarial_step if method == "pgd" else adversarial.freelb_step
    with rec:
        loss = step(model, batch, backward, steps=3, epsilon=0.5, step_size=0.2, init_magnitude=init_mag)
    assert torch.isfinite(loss)
    assert rec.seen == [], f"{method}: elementwise (B, L, H) work outside the fused ops: {rec.seen}"
