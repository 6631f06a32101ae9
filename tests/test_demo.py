"""The embedded demo (configs/demo.yaml) end to end, on a reduced synthetic benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_demo_runs_all_methods_and_writes_tables(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fastrobust.config import load_config, method_label
    from fastrobust.training import train

    small = [
        "task.synthetic.train_size=256",
        "task.synthetic.dev_size=64",
        "task.synthetic.test_size=64",
        "task.synthetic.pretrain_steps=20",
        f"task.synthetic.cache_dir={tmp_path / 'cache'}",
        f"output.dir={tmp_path / 'demo'}",
        "optim.epochs=1",
    ]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model; a second thread only costs on a shared machine
    try:
        result = train(None, small)
    finally:
        torch.set_num_threads(n)
    demo = load_config()
    labels = [method_label(m) for m in demo.methods]
    assert {m.kind for m in demo.methods} >= {"baseline", "rs-rp", "rs-da", "pgd"}
    assert demo.seeds is not None and len(demo.seeds) >= 3  # the demo compares over seeds
    out = tmp_path / "demo"
    printed = capsys.readouterr().out
    assert "XLT accuracy" in printed and "G-XLT accuracy" in printed and "vs baseline" in printed
    assert "difference to baseline (points) [95% CI]" in printed and "mean ± sd over seeds" in printed
    for label in labels:
        assert label in printed
        for seed in demo.seeds:
            d = out / label / f"seed-{seed}"
            s = json.loads((d / "summary.json").read_text())
            assert s["seed"] == seed and s["throughput"]["samples_per_s"] > 0
            assert s["averages"]["gxlt_avg"] is not None
            assert (d / "model" / "model.safetensors").is_file()
            assert (d / "report" / "gxlt_heatmap.png").is_file() and (
                d / "report" / "predictions.npz"
            ).is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["methods"]) == set(labels)
    assert all(comparison["methods"][k]["seeds"] == demo.seeds for k in labels)
    assert (out / "comparison.md").read_text().strip() == result["comparison"].strip()
    assert set(result["methods"]) == set(labels)
