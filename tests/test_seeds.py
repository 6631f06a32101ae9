"""Multi-seed runs: one folder per (method, seed), predictions saved, a comparison with intervals,
--resume at the unfinished seed/method, merging with methods already in the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_run import check_exit

from fastrobust.errors import ConfigError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pawsx"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny model: one torch thread


def overrides(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "seeds=null",  # the demo config underneath lists seeds; these tests choose their own
        "parallel=1",
        "task.name=pawsx",
        "task.source=local",
        f"task.path={FIXTURE}",
        "task.languages=[en, de, ja]",
        f"model.name_or_path={model}",
        "model.max_length=32",
        "methods=[{kind: baseline}, {kind: rs-rp, sigma: 0.5}]",
        "optim.batch_size=4",
        "optim.max_steps=3",
        "optim.learning_rate=1e-3",
        "eval.every_steps=3",
        "output.tensorboard=false",
        "output.save_model=false",
        f"output.dir={out}",
        *extra,
    ]


def test_seeds_train_every_method_per_seed_and_compare(fixture_model: Path, tmp_path: Path, capsys) -> None:
    from fastrobust.evaluate import TaskPredictions
    from fastrobust.training import train

    out = tmp_path / "multi"
    result = train(None, overrides(fixture_model, out, "seeds=[0, 1]"))
    printed = capsys.readouterr().out
    assert "seeds 0, 1;" in printed  # the banner
    assert (
        "XLT accuracy: difference to baseline (points) [95% CI]" in printed
        and "mean ± sd over seeds" in printed
    )
    assert "Throughput" in printed and "/<method>/seed-<k>/" in printed and "model/" not in printed
    for label in ("baseline", "rs-rp"):
        for seed in (0, 1):
            d = out / label / f"seed-{seed}"
            s = json.loads((d / "summary.json").read_text())
            assert s["seed"] == seed and s["label"] == label and s["steps"] == 3
            preds = TaskPredictions.load(d / "report" / "predictions.npz")
            assert set(preds.xlt) == {"en", "de", "ja"} and len(preds.gxlt) == 9
            assert preds.report().xlt == pytest.approx(s["xlt"])
        assert set(result["methods"][label]) == {0, 1}
    # different seeds: different data order and head init, so different losses
    b0, b1 = (result["methods"]["baseline"][k]["losses"] for k in (0, 1))
    assert b0 != b1
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["methods"]["baseline"]["seeds"] == [0, 1] and comp["methods"]["rs-rp"]["seeds"] == [0, 1]
    diff = comp["methods"]["rs-rp"]["cells"]["xlt:de"]["difference"]
    assert diff["scope"] == "test examples and seeds" and diff["paired_seeds"] and diff["low"] <= diff["high"]
    top = json.loads((out / "summary.json").read_text())
    assert top["seeds"] == [0, 1] and set(top["methods"]["rs-rp"]) == {"0", "1"}
    # seed 1 of a multi-seed run is the single-seed run with seed 1
    single = train(
        None, overrides(fixture_model, tmp_path / "single", "seed=1", "methods=[{kind: baseline}]")
    )
    assert single["methods"]["baseline"]["losses"] == pytest.approx(b1, abs=0, rel=0)
    assert (tmp_path / "single" / "baseline" / "report" / "predictions.npz").is_file()


def test_resume_skips_finished_runs_and_continues_the_unfinished(fixture_model: Path, tmp_path: Path, capsys):
    from fastrobust.training import train

    out = tmp_path / "r"
    extra = ("seeds=[0, 1]", "output.checkpoint_every=1", "output.keep_finished_checkpoints=true")
    first = train(None, overrides(fixture_model, out, *extra))
    # as if killed after rs-rp / seed 1 checkpointed its last step but before its report
    unfinished = out / "rs-rp" / "seed-1"
    (unfinished / "summary.json").unlink()
    capsys.readouterr()
    again = train(None, overrides(fixture_model, out, *extra), resume=True)
    printed = capsys.readouterr().out
    assert printed.count("skipped (--resume)") == 3
    assert "[rs-rp] resumed from" in printed and "step-000003" in printed
    assert again["methods"]["rs-rp"][1]["losses"] == first["methods"]["rs-rp"][1]["losses"]
    assert again["methods"]["baseline"][0].get("skipped") is True
    comp = json.loads((out / "comparison.json").read_text())
    assert all(comp["methods"][m]["seeds"] == [0, 1] for m in ("baseline", "rs-rp"))


def test_methods_already_reported_in_the_folder_stay_in_the_comparison(fixture_model: Path, tmp_path: Path):
    from fastrobust.training import train

    out = tmp_path / "merge"
    train(None, overrides(fixture_model, out), methods=["baseline"])
    # a second call for the other method, into the same folder
    result = train(None, overrides(fixture_model, out), methods=["rs-rp"], resume=True)
    comp = json.loads((out / "comparison.json").read_text())
    assert set(comp["methods"]) == {"baseline", "rs-rp"} and comp["baseline"] == "baseline"
    assert comp["methods"]["rs-rp"]["cells"]["xlt:en"]["difference"]["scope"] == "test examples only (1 seed)"
    assert "rs-rp" in result["comparison"] and "| baseline |" in result["comparison"]
    # a run of the same label trained with another config is not merged into it
    train(None, overrides(fixture_model, out, "optim.learning_rate=5e-4"), methods=["rs-rp"], overwrite=True)
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["methods"]["rs-rp"]["seeds"] == [0]
    # --resume over a run that finished with another config refuses instead of training over it
    before = (out / "rs-rp" / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match=r"rs-rp holds a run finished with a different optim.*--overwrite"):
        train(None, overrides(fixture_model, out), methods=["rs-rp"], resume=True)
    assert (out / "rs-rp" / "summary.json").read_bytes() == before


def test_seed_and_seeds_errors(fixture_model: Path, tmp_path: Path, capsys) -> None:
    from fastrobust.cli import main
    from fastrobust.config import load_config

    with pytest.raises(ConfigError, match="seeds"):
        load_config(None, ["seeds=[1, 1]"])
    assert load_config(None, ["seeds=[3, 4]", "seed=5"]).run_seeds == [3, 4]  # seeds wins (banner says)
    with pytest.raises(ConfigError, match="seeds"):
        load_config(None, ["seeds=[]"])
    assert load_config(None, ["seeds=null", "seed=2"]).run_seeds == [2]
    assert main(["train", "--seeds", "0,x", "--set", f"output.dir={tmp_path}"]) == 2
    assert "--seeds '0,x'" in capsys.readouterr().err
    assert main(["train", "--parallel", "0", "--set", f"output.dir={tmp_path}"]) == 2
    assert "--parallel: must be >= 1" in capsys.readouterr().err


@pytest.mark.distributed
@pytest.mark.slow
def test_seeds_under_torchrun_match_single_process_and_resume(tiny_pawsx, tmp_path: Path) -> None:
    """2 ranks (DeepSpeed ZeRO-2, torchrun): every seed's losses equal the single-process run's,
    and --resume skips the finished runs on every rank (rank 0 decides, the others follow)."""
    import os
    import subprocess
    import sys

    from fastrobust.training.distributed import free_port

    data, model = tiny_pawsx
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", FASTROBUST_BACKEND="torch")
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(root))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "fastrobust" / "torch_extensions"))
    sets = [
        f"model.name_or_path={model}", "model.max_length=32", "task.name=pawsx", "task.source=local",
        f"task.path={data}", "task.languages=[en, de]", "task.gxlt=false", "methods=[{kind: baseline}]",
        "optim.batch_size=8", "optim.micro_batch_size=4", "optim.max_steps=3", "eval.every_steps=3",
        "output.tensorboard=false", "output.save_model=false",
    ]  # fmt: skip
    args = ["train", "--seeds", "0,1", *(x for s in sets for x in ("--set", s))]

    def run(cmd: list[str]) -> str:
        proc = subprocess.run(cmd, env=env, cwd=root, timeout=900, capture_output=True, text=True)
        check_exit(proc, " ".join(cmd[:4]))
        return proc.stdout

    single, dist = tmp_path / "single", tmp_path / "dist"
    run([sys.executable, "-m", "fastrobust", *args, "--set", f"output.dir={single}"])
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2"]
    launch = [*torchrun, "--master_port", str(free_port()), "-m", "fastrobust", *args]
    ds = ["--deepspeed", "configs/ds/zero2.json", "--set", f"output.dir={dist}"]
    run([*launch, *ds])
    for seed in (0, 1):
        a = json.loads((single / "baseline" / f"seed-{seed}" / "summary.json").read_text())
        b = json.loads((dist / "baseline" / f"seed-{seed}" / "summary.json").read_text())
        assert b["world_size"] == 2 and b["seed"] == seed
        assert b["losses"] == pytest.approx(a["losses"], abs=1e-5)
    out = run([*torchrun, "--master_port", str(free_port()), "-m", "fastrobust", *args, *ds, "--resume"])
    assert out.count("skipped (--resume)") == 2


@pytest.mark.slow
def test_parallel_runs_equal_the_sequential_ones(fixture_model: Path, tmp_path: Path, capsys) -> None:
    """--parallel 2: the same runs (same losses, same predictions) in the same folders, and one
    comparison over all of them."""
    from fastrobust.evaluate import TaskPredictions
    from fastrobust.training import train

    seq = train(None, overrides(fixture_model, tmp_path / "seq", "seeds=[0, 1]"))
    capsys.readouterr()
    par = train(None, overrides(fixture_model, tmp_path / "par", "seeds=[0, 1]"), parallel=2)
    printed = capsys.readouterr().out
    assert "4 run(s) on 2 worker processes" in printed and printed.count("[parallel]") == 4
    for label in ("baseline", "rs-rp"):
        for seed in (0, 1):
            assert par["methods"][label][seed]["losses"] == seq["methods"][label][seed]["losses"]
            a, b = (
                TaskPredictions.load(tmp_path / d / label / f"seed-{seed}" / "report" / "predictions.npz")
                for d in ("seq", "par")
            )
            assert a.report() == b.report()
    comp = json.loads((tmp_path / "par" / "comparison.json").read_text())
    assert all(comp["methods"][m]["seeds"] == [0, 1] for m in ("baseline", "rs-rp"))


def test_parallel_falls_back_to_one_by_one_where_it_cannot_apply() -> None:
    from types import SimpleNamespace

    from fastrobust.config import load_config
    from fastrobust.training.parallel import parallel_workers

    cpu = SimpleNamespace(world_size=1, device=torch.device("cpu"))
    assert parallel_workers(load_config(None, ["parallel=2"]), cpu) == (2, "")
    assert parallel_workers(load_config(None, ["parallel=1"]), cpu) == (1, "")
    gpu = SimpleNamespace(world_size=1, device=torch.device("cuda", 0))
    workers, note = parallel_workers(load_config(None, ["parallel=2"]), gpu)
    assert workers == 1 and "on cuda:0 the runs go one by one" in note
    ranks = SimpleNamespace(world_size=2, device=torch.device("cpu"))
    workers, note = parallel_workers(load_config(None, ["parallel=2"]), ranks)
    assert workers == 1 and "under DeepSpeed/torchrun" in note
    ds = load_config(None, ["parallel=2", "deepspeed.config=configs/ds/zero2.json"])
    assert parallel_workers(ds, cpu)[0] == 1
