"""The embedded demo (configs/demo.yaml) end to end, on a reduced synthetic benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_demo_runs_all_methods_and_writes_tables(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fastrobust.config import load_config, method_label
    from fastrobust.train import train

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
    labels = [method_label(m) for m in load_config().methods]
    assert {load_config().methods[i].kind for i in range(len(labels))} >= {
        "baseline",
        "rs-rp",
        "rs-da",
        "pgd",
    }
    out = tmp_path / "demo"
    printed = capsys.readouterr().out
    assert "XLT accuracy" in printed and "G-XLT accuracy" in printed and "vs baseline" in printed
    for label in labels:
        assert label in printed
        s = json.loads((out / label / "summary.json").read_text())
        assert s["throughput"]["samples_per_s"] > 0 and s["averages"]["gxlt_avg"] is not None
        assert (out / label / "model" / "model.safetensors").is_file()
        assert (out / label / "report" / "gxlt_heatmap.png").is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(labels) <= set(json.dumps(comparison).replace('"', " ").split())
    assert (out / "comparison.md").read_text().strip() == result["comparison"].strip()
    assert set(result["methods"]) == set(labels)
