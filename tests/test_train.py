"""End-to-end training on a tiny BERT and the PAWS-X fixture; data order, seeds and checkpoint files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastrobust.errors import ConfigError
from fastrobust.training import checkpoint as ckpt
from fastrobust.training.batches import GlobalBatchSampler, micro_seed

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pawsx"


pytestmark = pytest.mark.usefixtures("one_thread")


def _fixture_overrides(model: Path, out: Path) -> list[str]:
    return [
        "seeds=null",  # one run per method (the demo config underneath lists 3 seeds)
        "parallel=1",
        "task.name=pawsx",
        "task.source=local",
        f"task.path={FIXTURE}",
        "task.languages=[en, de, fr, ja]",
        f"model.name_or_path={model}",
        "model.max_length=32",
        "methods=[{kind: baseline}, {kind: rs-rp, sigma: 0.5}]",
        "optim.batch_size=4",
        "optim.micro_batch_size=2",
        "optim.epochs=2",
        "optim.learning_rate=1e-3",
        "optim.warmup_ratio=0.25",
        "eval.every_steps=1",
        "output.checkpoint_every=1",
        "output.keep_checkpoints=2",
        "output.keep_finished_checkpoints=true",
        "output.log_every=1",
        f"output.dir={out}",
    ]


def test_train_end_to_end_writes_model_report_summary(
    fixture_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastrobust.data import load_task
    from fastrobust.evaluate import evaluate_dev
    from fastrobust.training import train

    out = tmp_path / "run"
    result = train(None, _fixture_overrides(fixture_model, out))
    printed = capsys.readouterr().out
    assert "XLT accuracy" in printed and "G-XLT accuracy" in printed and "Throughput" in printed
    assert set(result["methods"]) == {"baseline", "rs-rp"}
    for name in ("comparison.md", "comparison.json", "summary.json"):
        assert (out / name).is_file()
    for label in ("baseline", "rs-rp"):
        d = out / label
        s = json.loads((d / "summary.json").read_text())
        # 8 training pairs / batch 4 = 2 steps per epoch, 2 epochs; 2 micro-batches of 2 per step
        assert s["steps"] == 4 and s["grad_accum"] == 2 and len(s["losses"]) == 4
        assert all(0 < x < 5 for x in s["losses"])
        assert [h[0] for h in s["dev_history"]] == [1, 2, 3, 4]
        t = s["throughput"]
        assert t["samples"] == 16 and t["tokens"] > 16 and t["samples_per_s"] > 0 and t["peak_memory_mb"] > 0
        assert set(t["time_split"]) == {
            f"{k}_s_per_step" for k in ("forward", "backward", "perturbation", "other")
        }
        assert t["time_split"]["forward_s_per_step"] > 0
        if label == "rs-rp":
            assert t["time_split"]["perturbation_s_per_step"] > 0
        assert (d / "report" / "report.json").is_file() and (d / "report" / "xlt.csv").is_file()
        assert list((d / "tb").glob("events.out.tfevents.*"))
        # the last two complete checkpoints are kept, nothing half-written is left
        assert [p.name for _, p in ckpt.complete_checkpoints(d / "checkpoints")] == [
            "step-000003",
            "step-000004",
        ]
        assert not list((d / "checkpoints").glob("*.tmp"))
        meta = json.loads((d / "model" / "fastrobust.json").read_text())
        assert meta["max_length"] == 32 and meta["task"]["name"] == "pawsx"
        assert (d / "model" / "model.safetensors").is_file()
        # the saved model is the best-on-dev one: its English dev accuracy is the recorded best
        model = AutoModelForSequenceClassification.from_pretrained(d / "model")
        tok = AutoTokenizer.from_pretrained(d / "model")
        from fastrobust.config import TaskConfig

        task = load_task(TaskConfig(**meta["task"]))
        acc = evaluate_dev(model, tok, task.dev["en"], max_length=32, batch_size=8, device="cpu")
        assert acc == pytest.approx(s["best_dev_accuracy"])
        assert s["best_step"] == max(s["dev_history"], key=lambda h: (h[1], -h[0]))[0]
    # both methods started from the same initial model and saw the same data: the first loss
    # differs only by the RS-RP noise, which is small at the start
    b, r = (json.loads((out / m / "summary.json").read_text()) for m in ("baseline", "rs-rp"))
    assert b["losses"][0] != r["losses"][0] and abs(b["losses"][0] - r["losses"][0]) < 0.5


def test_unknown_method_label_and_tiny_train_set(fixture_model: Path, tmp_path: Path) -> None:
    from fastrobust.training import train

    with pytest.raises(ConfigError, match="--method pgd: no such method section"):
        train(None, _fixture_overrides(fixture_model, tmp_path), methods=["pgd"])
    with pytest.raises(ConfigError, match=r"optim.batch_size \(16\) is larger than the training set \(8"):
        train(None, [*_fixture_overrides(fixture_model, tmp_path), "optim.batch_size=16"])


@pytest.mark.parametrize(("world", "accum"), [(2, 1), (2, 2), (4, 1)])
def test_micro_batches_do_not_depend_on_world_size(world: int, accum: int) -> None:
    n, batch = 50, 8
    micro = batch // (world * accum)
    single = list(
        GlobalBatchSampler(n, global_batch=batch, micro_batch=micro, world_size=1, rank=0, seed=3, epoch=1)
    )
    per_rank = [
        list(
            GlobalBatchSampler(
                n, global_batch=batch, micro_batch=micro, world_size=world, rank=r, seed=3, epoch=1
            )
        )
        for r in range(world)
    ]
    steps = n // batch
    assert len(single) == steps * batch and sorted(single) == sorted(set(single))
    for s in range(steps):
        for k in range(accum):
            for r in range(world):
                q = k * world + r  # the global micro-batch index this rank runs at accumulation step k
                mine = per_rank[r][(s * accum + k) * micro : (s * accum + k + 1) * micro]
                assert mine == single[s * batch + q * micro : s * batch + (q + 1) * micro]
    other_epoch = list(
        GlobalBatchSampler(n, global_batch=batch, micro_batch=batch, world_size=1, rank=0, seed=3, epoch=2)
    )
    assert other_epoch != single
    resumed = list(
        GlobalBatchSampler(
            n, global_batch=batch, micro_batch=micro, world_size=1, rank=0, seed=3, epoch=1, start_step=2
        )
    )
    assert resumed == single[2 * batch :]
    assert micro_seed(0, 5, 1) == micro_seed(0, 5, 1) != micro_seed(0, 5, 2) != micro_seed(0, 6, 1)


def test_checkpoint_commit_prune_and_half_written(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        tmp = ckpt.begin(root, step)
        ckpt.save_state(tmp / ckpt.STATE_FILE, {"step": step, "rng": ckpt.rng_state()})
        ckpt.commit(tmp, keep=2)
    assert [s for s, _ in ckpt.complete_checkpoints(root)] == [2, 3]
    # a newer folder without COMPLETE (killed mid-write) and a .tmp folder are never picked up
    half = ckpt.step_dir(root, 9)
    half.mkdir()
    (half / ckpt.STATE_FILE).write_bytes(b"garbage")
    ckpt.begin(root, 10)
    assert ckpt.latest(root) == ckpt.step_dir(root, 3)
    state = ckpt.load_state(ckpt.latest(root) / ckpt.STATE_FILE)
    assert state["step"] == 3
    import random

    import numpy as np

    saved = ckpt.rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load_state(ckpt.latest(root) / ckpt.STATE_FILE)["rng"])
    ckpt.set_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
