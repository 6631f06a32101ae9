"""``model.compile`` in ``fastrobust train``: every method trains through one compiled forward that
serves every padded length (no recompile after the first step), computes what the eager forward
computes, and works with LoRA and DeepSpeed.

The fast tests use the ``aot_eager`` backend (Dynamo + AOTAutograd, no C++ code generation):
recompiles are Dynamo's decision, the same whatever backend compiles the graph. A backend that
counts its calls checks the count the run reports; the inductor run is marked slow.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_run import check_exit

from fastrobust.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
METHODS = [
    {"kind": "baseline"},
    {"kind": "pgd", "steps": 2, "epsilon": 1.0, "step_size": 0.5, "init_magnitude": 0.2},
    {"kind": "freelb", "steps": 2, "epsilon": 1.0, "step_size": 0.5, "init_magnitude": 0.2},
    {"kind": "rs-rp", "sigma": 0.5},
    {"kind": "rs-da"},
]

# graphs handed to the counting backend: one entry per compile, in order
COMPILED: list[int] = []
COUNTING = "fastrobust_test_counting"


def _register_counting_backend() -> None:
    from torch._dynamo import list_backends, lookup_backend, register_backend

    if COUNTING in list_backends(exclude_tags=()):
        return

    def counting(gm, example_inputs):
        COMPILED.append(len(gm.graph.nodes))
        return lookup_backend("aot_eager")(gm, example_inputs)

    register_backend(compiler_fn=counting, name=COUNTING)


def _overrides(data: Path, model: Path, out: Path, *extra: str, methods=METHODS) -> list[str]:
    return [
        "task.name=pawsx", "task.source=local", f"task.path={data}", "task.languages=[en, de]",
        "task.gxlt=false", f"task.synonyms={data / 'synonyms.json'}",
        f"model.name_or_path={model}", "model.max_length=32",
        f"methods={json.dumps(methods)}",
        "optim.batch_size=8", "optim.micro_batch_size=4", "optim.max_steps=6", "optim.learning_rate=2e-3",
        "eval.every_steps=3", "output.save_model=false", "output.tensorboard=false", f"output.dir={out}",
        "seed=1", "seeds=null", "parallel=1", *extra,
    ]  # fmt: skip


@pytest.fixture
def lengths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The padded length L of every call of the compiled training forward."""
    from fastrobust.training import compiled

    seen: list[int] = []
    mark = compiled.mark_length_dynamic

    def spy(kwargs):
        seen.append(next(v.shape[1] for v in kwargs.values() if isinstance(v, torch.Tensor)))
        mark(kwargs)

    monkeypatch.setattr(compiled, "mark_length_dynamic", spy)
    return seen


def test_every_method_compiles_once_for_every_padded_length(tiny_pawsx, tmp_path: Path, lengths) -> None:
    from fastrobust.training import train

    _register_counting_backend()
    torch._dynamo.reset()  # this test counts the graphs of its own runs
    COMPILED.clear()
    data, model = tiny_pawsx
    sets = _overrides(
        data,
        model,
        tmp_path / "run",
        "model.compile=true",
        f"model.compile_backend={COUNTING}",
        "optim.micro_batch_size=2",  # 4 micro-batches a step: more padded lengths
        "optim.max_steps=4",
        "eval.every_steps=4",
    )
    result = train(None, sets)
    graphs = 0
    for label, summary in result["methods"].items():
        c = summary["compile"]
        assert c["backend"] == COUNTING and c["recompiles"] == 0, (label, c)
        graphs += c["graphs"]
        assert all(math.isfinite(x) for x in summary["losses"]) and len(summary["losses"]) == 4
    # the counter the runs report is the backend's own count, and small: one graph per call
    # signature (input_ids / inputs_embeds), shared by the methods (same forward code)
    assert graphs == len(COMPILED) and 1 <= len(COMPILED) <= 3
    # the training batches had several padded lengths, and no later one compiled anything
    assert len(set(lengths)) >= 4, sorted(set(lengths))


def test_compiled_forward_computes_the_eager_losses(tiny_pawsx, tmp_path: Path) -> None:
    """Without dropout (compiled dropout draws another random stream), PGD and FreeLB give the
    eager run's losses and dev history; LoRA compiles too."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastrobust.training import train

    data, model_path = tiny_pawsx
    folder = tmp_path / "no-dropout"
    AutoModelForSequenceClassification.from_pretrained(
        str(model_path), num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(model_path)).save_pretrained(folder)
    methods = METHODS[1:3]
    runs = {}
    for name, extra in (
        ("eager", []),
        ("compiled", ["model.compile=true", "model.compile_backend=aot_eager"]),
        ("lora-eager", ["model.lora={r: 4, dropout: 0.0}"]),
        (
            "lora-compiled",
            ["model.lora={r: 4, dropout: 0.0}", "model.compile=true", "model.compile_backend=aot_eager"],
        ),
    ):
        out = tmp_path / name
        sets = _overrides(
            data, folder, out, *extra, "optim.max_steps=4", "eval.every_steps=4", methods=methods
        )
        runs[name] = train(None, sets)["methods"]
    for label in ("pgd", "freelb"):
        for eager, compiled in (("eager", "compiled"), ("lora-eager", "lora-compiled")):
            a, b = runs[eager][label], runs[compiled][label]
            assert b["compile"]["recompiles"] == 0
            assert b["losses"] == pytest.approx(a["losses"], abs=1e-5, rel=0), (label, compiled)
            assert b["dev_history"] == a["dev_history"]
        assert runs["lora-compiled"][label]["lora"]["trainable_parameters"] > 0


def test_compile_settings_are_checked_and_do_not_block_a_resume(tiny_pawsx, tmp_path: Path) -> None:
    from cli_run import run_cli

    from fastrobust.config import load_config
    from fastrobust.training.run import fingerprint

    data, model = tiny_pawsx
    sets = _overrides(
        data, model, tmp_path / "a", "model.compile=true", "model.compile_backend=no-such-backend"
    )
    res = run_cli("train", *(x for o in sets for x in ("--set", o)))
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = res.stderr.strip().splitlines()
    assert "model.compile_backend: unknown torch.compile backend 'no-such-backend'" in line, line
    with pytest.raises(ConfigError, match="compile_mode: 'max-autotune' is a mode of the inductor backend"):
        load_config(None, ["model.compile_mode=max-autotune", "model.compile_backend=aot_eager"])
    # compiling changes how the forward runs, not what it computes: a checkpoint resumes either way;
    # LoRA changes what trains: it does not
    eager = load_config(None, [])
    method = eager.methods[0]
    compiled = load_config(None, ["model.compile=true", "model.compile_mode=max-autotune"])
    lora = load_config(None, ["model.lora={r: 4}"])
    assert fingerprint(compiled, method, 1) == fingerprint(eager, method, 1)
    assert fingerprint(lora, method, 1)["model"] != fingerprint(eager, method, 1)["model"]


@pytest.mark.slow
def test_inductor_compiles_lora_pgd_without_recompiles(tiny_pawsx, tmp_path: Path, lengths) -> None:
    """The default backend (inductor, C++ code generation on the CPU): LoRA + PGD."""
    from fastrobust.training import train

    data, model = tiny_pawsx
    sets = _overrides(
        data,
        model,
        tmp_path / "run",
        "model.compile=true",
        "model.lora={r: 4}",
        "optim.micro_batch_size=2",
        "optim.max_steps=4",
        "eval.every_steps=4",
        methods=[METHODS[1]],
    )
    c = train(None, sets)["methods"]["pgd"]["compile"]
    assert c["backend"] == "inductor" and c["graphs"] >= 1 and c["recompiles"] == 0, c
    assert len(set(lengths)) >= 4


@pytest.mark.distributed
@pytest.mark.slow
def test_deepspeed_engine_compiles_lora_without_recompiles(tiny_pawsx, tmp_path: Path) -> None:
    """``--deepspeed`` (ZeRO-2, one CPU process) with ``model.compile`` and LoRA: DeepSpeed's own
    ``engine.compile``; evaluation runs eager, so no graph is compiled after the first step."""
    from cli_run import distributed_env

    data, model = tiny_pawsx
    out = tmp_path / "ds"
    sets = _overrides(
        data,
        model,
        out,
        "model.compile=true",
        "model.compile_backend=aot_eager",
        "model.lora={r: 4}",
        "optim.max_steps=4",
        methods=METHODS[1:3],
    )
    env = {
        k: v
        for k, v in distributed_env().items()
        if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastrobust",
            "train",
            "--deepspeed",
            "ds/zero2.json",
            *(x for o in sets for x in ("--set", o)),
        ],
        env=env,
        cwd=tmp_path,
        timeout=600,
        capture_output=True,
        text=True,
    )
    check_exit(proc, "fastrobust train --deepspeed ds/zero2.json")
    for label in ("pgd", "freelb"):
        s = json.loads((out / label / "summary.json").read_text())
        assert s["deepspeed"]["zero_stage"] == 2 and s["lora"]["r"] == 4
        assert s["compile"]["recompiles"] == 0, s["compile"]


SLOW_COMPILER = "fastrobust_test_slow_compiler"


def test_compile_time_is_left_out_of_the_throughput_and_reported_apart(
    tiny_pawsx, tmp_path: Path, capsys
) -> None:
    """A backend that takes 1 s per graph: the run (compiled in its first step) must not look slow."""
    import time

    from torch._dynamo import list_backends, lookup_backend, register_backend

    from fastrobust.training import train

    if SLOW_COMPILER not in list_backends(exclude_tags=()):

        def slow(gm, example_inputs):
            time.sleep(1.0)
            return lookup_backend("aot_eager")(gm, example_inputs)

        register_backend(compiler_fn=slow, name=SLOW_COMPILER)
    torch._dynamo.reset()
    data, model = tiny_pawsx
    methods = [{"kind": "baseline"}]
    sets = _overrides(
        data, model, tmp_path / "run", "model.compile=true", f"model.compile_backend={SLOW_COMPILER}",
        "optim.max_steps=4", "eval.every_steps=4", "output.log_every=1", methods=methods,
    )  # fmt: skip
    result = train(None, sets)
    base = result["methods"]["baseline"]
    assert base["compile"]["first_step_seconds"] >= 1.0
    assert base["throughput"]["compile_warmup_seconds"] == base["compile"]["first_step_seconds"]
    assert base["throughput"]["steps_measured"] == 3 and base["throughput"]["train_seconds"] < 1.0
    assert sum(base["throughput"]["time_split"].values()) < 1.0  # the section split leaves it out too
    printed = capsys.readouterr().out
    assert (
        "Compiling (the first step of a run, left out of the throughput; mean over runs): baseline" in printed
    )
