"""``model.precision: bf16`` on a CPU (the CPU speed option): forwards run under bf16 autocast in
training and in the dev/test evaluation, while the master weights (and so the saved model) stay fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(data, model, out, precision):
    return [
        "task.name=pawsx", "task.source=local", f"task.path={data}", "task.languages=[en, de]",
        f"model.name_or_path={model}", "model.max_length=32", f"model.precision={precision}",
        'methods=[{"kind": "pgd", "steps": 1, "epsilon": 1.0, "step_size": 0.5}]',
        "optim.batch_size=8", "optim.max_steps=6", "optim.learning_rate=1e-3", "eval.every_steps=3",
        "eval.batch_size=16", "output.save_model=true", "output.tensorboard=false", f"output.dir={out}",
        "seed=1", "seeds=null", "parallel=1",
    ]  # fmt: skip


def test_bf16_autocast_trains_and_evaluates_with_fp32_master_weights(tiny_pawsx, tmp_path, monkeypatch):
    from transformers.models.bert import modeling_bert

    from fastrobust.training import train

    seen: list[tuple[bool, torch.dtype]] = []  # (grad enabled, dtype of the classifier's input)
    orig = modeling_bert.BertForSequenceClassification.forward

    def spy(self, *args, **kwargs):
        handle = self.classifier.register_forward_hook(
            lambda _m, inp, _out: seen.append((torch.is_grad_enabled(), inp[0].dtype))
        )
        try:
            return orig(self, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(modeling_bert.BertForSequenceClassification, "forward", spy)
    data, model = tiny_pawsx
    got = next(iter(train(None, _overrides(data, model, tmp_path / "bf16", "bf16"))["methods"].values()))
    train_dtypes = {d for grad, d in seen if grad}
    eval_dtypes = {d for grad, d in seen if not grad}
    assert train_dtypes == {torch.bfloat16} and eval_dtypes == {torch.bfloat16}
    seen.clear()
    ref = next(iter(train(None, _overrides(data, model, tmp_path / "fp32", "fp32"))["methods"].values()))
    assert {d for _, d in seen} == {torch.float32}
    # bf16 really changed the arithmetic, and by a bf16-sized amount
    assert not np.allclose(got["losses"], ref["losses"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=5e-2)
    weights = next((tmp_path / "bf16").rglob("model.safetensors"))
    with safe_open(str(weights), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # noqa: SIM118 (not a dict)
    card = next((tmp_path / "bf16").rglob("model/README.md")).read_text()
    assert "| precision | bf16 |" in card  # the model card says how it was trained


def test_fp16_on_a_cpu_says_that_bf16_is_the_cpu_format(tiny_pawsx, tmp_path, capsys):
    from fastrobust.training import train

    data, model = tiny_pawsx
    sets = _overrides(data, model, tmp_path / "fp16", "fp16")
    train(None, [*sets, "optim.max_steps=1", "output.save_model=false", "task.gxlt=false"])
    printed = capsys.readouterr().out
    assert printed.count("warning: model.precision: fp16 on a CPU") == 1
    assert "set model.precision: bf16" in printed
