"""The GPU benchmark machinery that can be checked without a GPU: bytes floors, the case grid,
the target verdicts of the summaries, and the DeepSpeed check's material (model, tokenizer, data,
config), which must load through fastrobust exactly as ``fastrobust train`` loads it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "speed"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

import _ops_calls as calls  # noqa: E402
import _ops_cases as grid  # noqa: E402
import _ops_summary as summary  # noqa: E402
import _train_grid as train_grid  # noqa: E402

FEATURES = grid.Features(init_next=False, ref_init_next=False, step_from_zero=False, ref_step_from_zero=False)
NEXT = grid.Features(init_next=True, ref_init_next=False, step_from_zero=True, ref_step_from_zero=False)


def _case(op, shape=(4, 8, 16), dtype="fp32", mask="full"):
    return grid.Case(op, shape, dtype, mask)


@pytest.mark.parametrize(
    "op, features, elements",
    [
        ("copy", FEATURES, 2.0),
        ("add_noise", FEATURES, 2.0),
        ("noisy_copies_n4", FEATURES, 5.0),
        ("noisy_copies_n32", FEATURES, 33.0),
        ("pgd_init", FEATURES, 1.0),
        ("pgd_init", NEXT, 3.0),
        ("pgd_step_l2+e", FEATURES, 5.0),  # the 5 N floor, not the kernel's 7 N
        ("pgd_step_linf+e", FEATURES, 5.0),
        ("pgd_step_l2", FEATURES, 3.0),
        ("pgd_step_l2+e_from0", NEXT, 4.0),
    ],
)
def test_bytes_floor_with_every_token_real(op, features, elements):
    case = _case(op, dtype="bf16")
    mask = grid.make_mask(case.shape, "full", "cpu")
    n_bytes = 4 * 8 * 16 * 2
    mask_bytes = 0 if op == "copy" else mask.numel() * mask.element_size()
    assert grid.bytes_floor(case, mask, features) == int(elements * n_bytes + mask_bytes)


def test_padded_floor_skips_d_and_g_of_padding_but_not_embeds():
    case = _case("pgd_step_l2+e", shape=(4, 8, 16), mask="padded")
    mask = grid.make_mask(case.shape, "padded", "cpu")
    f = float(mask.float().mean())
    assert 0.5 <= f < 1.0  # lengths uniform in [L/2, L], right padding
    assert bool((mask[:, :-1] >= mask[:, 1:]).all())  # right padding: ones, then zeros
    n_bytes = 4 * 8 * 16 * 4
    expected = (3 + 2 * f) * n_bytes + mask.numel() * 8
    assert grid.bytes_floor(case, mask, FEATURES) == int(expected)


def test_grid_puts_the_target_rows_first_and_drops_unsupported_ops():
    cases = grid.gpu_cases(grid.GPU_SHAPES, grid.GPU_DTYPES, list(grid.GPU_OPS), grid.MASKS, FEATURES)
    first = {(c.op, c.mask) for c in cases[:24]}
    assert first == {(op, "full") for op in ("copy", "add_noise", "pgd_step_l2+e", "pgd_step_linf+e")}
    assert not any(c.op == "copy" and c.mask == "padded" for c in cases)
    assert not any(c.op.endswith("_from0") for c in cases)  # delta=None not in this API
    with_zero = grid.gpu_cases(grid.GPU_SHAPES, ["fp32"], list(grid.GPU_OPS), ["full"], NEXT)
    assert any(c.op.endswith("_from0") for c in with_zero)
    assert len({c.key for c in cases}) == len(cases)


def test_providers_compute_the_same_step_on_cpu():
    """eager and the (uncompiled) triton-provider call path agree where both run: here the
    triton provider goes through fastrobust.ops with the torch backend."""
    case = _case("pgd_step_l2+e", mask="padded")
    (inp,) = grid.make_inputs(case, torch.device("cpu"))
    eager = calls.op_call(case, "eager", FEATURES, "off")(inp)
    from fastrobust import ops

    with ops.use_backend("torch"):
        fused = calls.op_call(case, "triton", FEATURES, "off")(inp)
    for a, b in zip(eager, fused):
        torch.testing.assert_close(a, b)


def test_compile_formulation_is_the_reference_step_on_cpu():
    """The compile provider's PGD step (elementwise ops and per-example sums, what inductor fuses)
    equals the reference: masks, zero and non-finite gradients, zero start, both norms, dtypes."""
    from fastrobust import reference

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        d = (0.05 * torch.randn(4, 6, 8, generator=gen)).to(dtype)
        g = torch.randn(4, 6, 8, generator=gen).to(dtype)
        e = torch.randn(4, 6, 8, generator=gen).to(dtype)
        g[0] = 0.0
        g[1, 2, 2], g[2, 1, 1], g[3, 5, 0] = float("nan"), float("inf"), float("nan")  # [3, 5] is padding
        mask = torch.ones(4, 6, dtype=torch.long)
        mask[1, 4:], mask[3, 3:] = 0, 0
        for norm in ("l2", "linf"):
            for delta in (d, None):
                for embeds in (e, None):
                    kw = dict(step_size=0.01, epsilon=0.1, norm=norm, mask=mask, embeds=embeds)
                    want = reference.pgd_step(delta, g, **kw)
                    got = calls.step_math(delta, g, mask, embeds, norm)
                    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
                    for a, b in zip(got, want):
                        assert a.dtype == b.dtype
                        torch.testing.assert_close(a, b, equal_nan=True)


def test_the_gpu_runs_plan_is_what_its_budget_states():
    """benchmarks/gpu/run.sh sizes the ops stage from these counts (its comment states them)."""
    import _ops_grid

    cases = grid.gpu_cases(grid.GPU_SHAPES, grid.GPU_DTYPES, list(grid.GPU_OPS), grid.MASKS, NEXT)
    graphs = calls.compile_graphs(cases, "all")
    assert len(cases) == 126 and len(graphs) == 28 and sum(g[0] == "static" for g in graphs) == 12
    run = _ops_grid.Run(device=torch.device("cpu"), features=NEXT, compile_mode="all", triton=True)
    plan = _ops_grid.plan_counts(cases, run, ["events", "graph"])
    assert plan["timings"] == {"events": 366, "graph": 60}
    script = (ROOT / "benchmarks" / "gpu" / "run.sh").read_text()
    assert "126 cases: 366 events timings" in script and "60 CUDA-graph timings" in script
    assert "builds 28 graphs (12 static" in script


def test_sweep_adopts_only_clear_wins_slower_for_no_dtype():
    import _ops_sweep as sweep

    ratios = {
        ("pgd_max_split", 32): [0.90, 0.95],  # a win in both dtypes
        ("pgd_max_split", 16): [0.80, 1.01],  # slower for one dtype: never
        ("pgd_reduce_tile", 2048): [0.99, 0.99],  # inside the 2 % margin
        ("noise_warps", 8): [0.7, float("inf")],  # failed for one dtype
    }
    assert sweep.pick_winner(ratios) == {"pgd_max_split": 32}


def _rec(op, provider, ms, *, gbps=None, mask="full", check=None, timer="events"):
    r = {
        "kind": "result",
        "op": op,
        "shape": "8x128x768",
        "dtype": "bf16",
        "mask": mask,
        "provider": provider,
        "timer": timer,
        "median_ms": ms,
        "gbps": gbps if gbps is not None else 1.0 / ms,
        "floor_bytes": 1000,
    }
    if check is not None:
        r["check"] = check
    return r


def _records(*rows):
    return [{"kind": "meta", "timers": ["events", "graph"]}, _rec("copy", "torch", 0.01, gbps=1000.0), *rows]


def test_noise_target_needs_85_percent_of_copy_and_3x_eager():
    met = summary.evaluate_targets(
        _records(_rec("add_noise", "eager", 0.10), _rec("add_noise", "triton", 0.02, gbps=900.0, check="ok"))
    )
    assert [e["met"] for e in met] == [True]
    slow = summary.evaluate_targets(
        _records(_rec("add_noise", "eager", 0.10), _rec("add_noise", "triton", 0.02, gbps=800.0, check="ok"))
    )
    assert slow[0]["met"] is False and slow[0]["conds"]["copy>=85%"] is False
    weak = summary.evaluate_targets(
        _records(_rec("add_noise", "eager", 0.05), _rec("add_noise", "triton", 0.02, gbps=900.0, check="ok"))
    )
    assert weak[0]["met"] is False and weak[0]["conds"]["eager>=3x"] is False


def test_step_target_needs_floor_eager_and_compile_and_a_correct_result():
    rows = [
        _rec("pgd_step_l2+e", "eager", 0.10),
        _rec("pgd_step_l2+e", "compile", 0.03),
        _rec("pgd_step_l2+e", "triton", 0.04, gbps=800.0, check="ok"),
    ]
    (e,) = summary.evaluate_targets(_records(*rows))
    assert e["conds"] == {"floor>=75%": True, "eager>=2x": True, ">=compile": False} and not e["met"]
    rows[1] = _rec("pgd_step_l2+e", "compile", 0.05)
    assert summary.evaluate_targets(_records(*rows))[0]["met"]
    rows[2] = _rec("pgd_step_l2+e", "triton", 0.04, gbps=800.0, check="MISMATCH rel.err 1e-1")
    (bad,) = summary.evaluate_targets(_records(*rows))
    assert not bad["met"] and bad["conds"]["correct"] is False
    (missing,) = summary.evaluate_targets(_records(rows[0]))
    assert not missing["met"] and "not measured" in missing["why"]


def test_targets_use_the_events_timer_and_the_summary_renders():
    rows = [
        _rec("pgd_step_linf+e", "eager", 0.10),
        _rec("pgd_step_linf+e", "triton", 0.04, gbps=800.0, check="ok"),
        _rec("pgd_step_linf+e", "triton", 0.001, gbps=1e6, timer="graph"),  # not the targets' timer
    ]
    (e,) = summary.evaluate_targets(_records(*rows))
    assert e["vs_eager"] == pytest.approx(2.5) and e["frac_copy"] == pytest.approx(0.8)
    text = summary.summarize_gpu(_records(*rows))
    assert "| pgd_step_linf+e | bf16 | full | 0/1 NO |" in text  # no compile provider measured
    assert "CUDA graph" in text and "CUDA events" in text


def test_train_summary_marks_targets():
    def row(method, ratio):
        return {
            "kind": "row",
            "model": "xlmr-base",
            "hidden": 768,
            "layers": 12,
            "precision": "bf16",
            "batch": 32,
            "seq": 128,
            "method": method,
            "step_ms": 10.0 * ratio,
            "step_ms_min": 9.0,
            "step_ms_max": 11.0,
            "samples_per_s": 100.0,
            "ratio": ratio,
            "ratio_min": ratio - 0.01,
            "ratio_max": ratio + 0.01,
            "rounds": 5,
            "target": train_grid.target(method),
            "split": {"forward": 0.4, "backward": 0.5, "perturbation": 0.05, "other": 0.05},
            "peak_gib": 5.0,
            "peak_extra_gib": 1.0,
        }

    assert train_grid.target("pgd-k3") == pytest.approx(4.2)
    assert train_grid.target("freelb-k2") == pytest.approx(2.1)
    text = train_grid.summarize([row("baseline", 1.0), row("rs-rp", 1.04), row("pgd-k2", 3.3)])
    assert "| rs-rp |" in text and "| <= 1.05 | yes |" in text
    assert "| <= 3.15 | NO |" in text


def test_ds_check_material_loads_like_fastrobust_train_does(tmp_path: Path) -> None:
    import ds_check
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastrobust.config import load_config
    from fastrobust.data import load_task

    assert ds_check.main(["prepare", "--root", str(tmp_path), "--size", "tiny", "--steps", "2"]) == 0
    cfg = load_config(tmp_path / "ds_check.yaml")
    assert cfg.methods[0].kind == "pgd" and cfg.methods[0].steps == 2 and cfg.model.precision == "bf16"
    task = load_task(cfg.task)
    assert len(task.train) == 64 and set(task.test) == {"en", "de", "fr"}
    tok = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    rows = task.train[:8]
    enc = tok(rows["sentence1"], rows["sentence2"], truncation="longest_first", max_length=128)
    assert all(len(ids) == 128 for ids in enc["input_ids"])  # every pair fills the window
    ids = enc["input_ids"][0]
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3  # <s> A </s></s> B </s>
    assert "token_type_ids" not in enc and tok.pad_token_id == 1
    model = AutoModelForSequenceClassification.from_pretrained(cfg.model.name_or_path, num_labels=2)
    assert model.config.model_type == "xlm-roberta" and model.config.pad_token_id == 1
    out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    assert out.logits.shape == (1, 2)


def test_ds_check_report_says_when_a_launch_left_nothing(tmp_path: Path) -> None:
    import ds_check

    assert ds_check.main(["report", "--root", str(tmp_path), "--out", str(tmp_path / "r.json"), "zero2"]) == 1
    assert "launch failed or timed out" in (tmp_path / "r.json").read_text()


def test_compile_only_where_a_target_needs_it_static_where_it_decides():
    assert calls.compile_kind("pgd_step_l2+e", "targets") == "static"
    assert calls.compile_kind("pgd_step_linf", "targets") == "dynamic"
    assert calls.compile_kind("add_noise", "targets") is None
    assert calls.compile_kind("add_noise", "all") == "dynamic"
    assert calls.compile_kind("copy", "static") is None and calls.compile_kind("pgd_init", "off") is None
    noise = _case("add_noise")
    assert calls.providers_for(noise, compile_mode="targets", triton=True) == ["eager", "triton"]
    assert calls.providers_for(_case("pgd_step_l2"), compile_mode="targets", triton=False) == [
        "eager",
        "compile",
    ]


def test_pytest_benchmark_json_of_a_gpu_run_is_summarised_from_its_records(tmp_path: Path) -> None:
    rows = [
        _rec("pgd_step_linf+e", "eager", 0.10),
        _rec("pgd_step_linf+e", "compile", 0.05),
        _rec("pgd_step_linf+e", "triton", 0.04, gbps=800.0, check="ok"),
    ]
    recs = _records(*rows)[1:]
    bench = {"benchmarks": [{"extra_info": {"records": recs, "device": "NVIDIA H200"}}]}
    path = tmp_path / "ops.json"
    path.write_text(json.dumps(bench))
    text = summary.summarize_file(path)
    assert "NVIDIA H200" in text and "| pgd_step_linf+e | bf16 | full | 1/1 yes |" in text


def test_pytest_benchmark_json_of_a_cpu_run_is_one_table_and_jsonl_is_the_grid(tmp_path: Path) -> None:
    def bench(op, provider, median, floor=8e6):
        info = {"op": op, "shape": "8x128x768", "dtype": "fp32", "provider": provider, "bytes_floor": floor}
        return {"extra_info": info, "stats": {"median": median}}

    data = {"benchmarks": [bench("copy", "torch", 1e-3), bench("add_noise", "torch", 4e-3)]}
    data["benchmarks"].append(bench("add_noise", "torch_compile", 2e-3))
    path = tmp_path / "ops.json"
    path.write_text(json.dumps(data))
    text = summary.summarize_file(path)
    # copy: 8 MB / 1 ms = 8 GB/s; eager 4 ms (2 GB/s); compiled 2 ms (4 GB/s), 2x the eager time
    assert "| add_noise | 8x128x768 | fp32 | 8.0 | 8.0 | 4.000 (2.0) | 2.000 (4.0) | 2.00x |" in text
    lines = tmp_path / "ops.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in _records(_rec("add_noise", "triton", 0.04))) + "\n")
    assert summary.summarize_file(lines, short=True) == summary.summarize_gpu(
        summary.load_records(lines), short=True
    )


def test_an_aborted_run_is_summarised_with_its_errors():
    failed = {**_rec("pgd_step_l2", "triton", 0.04), "error": "CUDA error"}
    abort = {"kind": "abort", "case": "pgd_step_l2 8x128x768", "timer": "events", "error": "out of memory"}
    text = summary.summarize_gpu(_records(_rec("pgd_step_l2", "eager", 0.1), failed, abort))
    assert "**Run aborted at pgd_step_l2 8x128x768: out of memory**" in text
    assert "- pgd_step_l2 8x128x768 bf16 full triton (events): CUDA error" in text


def test_training_step_benchmarks_step_the_trainers_engine() -> None:
    # a benchmark that wrote its own step (a method's training_step, an optimizer step, clipping)
    # would measure that copy, not the product: they all go through _train_grid.engine_step
    import re

    copies = re.compile(r"\.training_step\(|\b(opt|optimizer)\.step\(|clip_grad_norm_\(")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "benchmarks").rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if copies.search(line)
    ]
    assert not found, found
    cfg = train_grid.METHODS["pgd-k1"][0]
    setup = train_grid.build("tiny", torch.device("cpu"), 2, 16)
    before = [p.detach().clone() for p in setup.model.parameters()]
    step = train_grid.engine_step(setup.model, setup.batch, cfg, "fp32", torch.device("cpu"))
    step()
    assert any(not torch.equal(a, p) for a, p in zip(before, setup.model.parameters()))
