#!/usr/bin/env bash
# The one script to run on the GPU machine: it returns every figure of BENCHMARKS.md's GPU rows in
# one call (~8 minutes): kernel lowering and tests, ops grid and tile sweep, training step, DeepSpeed.
#
#   benchmarks/gpu/run.sh [tests] [ops] [train] [ds]     # no argument: all four, in this order
#   DRY_RUN=1 benchmarks/gpu/run.sh                      # the CPU rehearsal (CI): every stage, tiny
#   FASTROBUST_COMMIT=<sha> BUDGET_S=560 benchmarks/gpu/run.sh real   # a second call: real study, seeds 6-10
#
# Stages (each with its own timeout and log under $OUT; a failing stage does not stop the next):
#   tests  every kernel variant lowered with the machine's Triton and checked (tests/kernel_lowering.py),
#          copy bandwidth, then the kernel and op tests natively on CUDA: every test file with a
#          `kernels` marker and tests/test_ops_*.py, pytest -n 8 (xdist), -p no:cacheprovider,
#          --continue-on-collection-errors (a module whose import fails, e.g. datasets/pyarrow,
#          costs its own tests only)
#   ops    benchmarks/speed/bench_ops.py: the CUDA grid (events timer everywhere, CUDA-graph timer on
#          the primary rows), torch.compile of every op (--compile-mode all), the tile sweep at the
#          largest shape (--sweep; its winner is a "sweep_winner" record)              -> ops.jsonl
#   train  benchmarks/speed/bench_train_step.py: XLM-R base/large, bf16/fp32, 8 methods -> train.jsonl
#   ds     benchmarks/gpu/ds_check.py + `deepspeed` launches of `python -m fastrobust train`, PGD K=2,
#          XLM-R-large-sized, ZeRO-2 and ZeRO-3 (configs/ds as shipped; DS_COMPILE=1 adds ZeRO-2 with
#          model.compile), 16 steps logged every 4th (a logged step synchronises; steady samples/s
#          between the first and the last logged step)                                  -> ds.json
#   real   (only when named) the real benchmark's confirmatory study, seeds 6-10 (REAL_SEEDS), on
#          CUDA with REAL_WORKERS processes (default 8): `.real/` must be carried, made here by
#          `python -m benchmarks.real.pack pack`; runs already in benchmarks/real/results are skipped,
#          the finished ones come back as real-results.tar.gz (unpack it into benchmarks/real/results)
# At the end: $OUT/summary.md (all tables) and a compact summary on stdout.
#
# Environment:
#   OUT        output folder (the device tool sets it; default /tmp/fastrobust_gpu_out). 8 files land
#              there: tests.log ops.log ops.jsonl train.log train.jsonl ds.log ds.json summary.md
#   BUDGET_S   wall seconds from the start to the end of the last stage (default 470); a stage gets
#              min(its own cap, what is left - 15 s) and is skipped with less than 20 s left
#   DRY_RUN=1  the CPU rehearsal of a GPU run (CI runs it: tests/test_benchmarks_smoke.py): every
#              stage's own entry point in its cheapest form (lowering listed not compiled, tests
#              collected not run, the ops grid's passes at tiny shapes with one host-timed call per
#              timer, Triton through the interpreter, torch.compile traced by dynamo and not
#              compiled, the tile sweep, a tiny training-step group, the DeepSpeed stage's material
#              and report with stand-in launches) into the same files and summary
#   RUN_CPU=1  DRY_RUN=1, and the `real` stage's plumbing check (a tiny study on CPU)
#   PYTHON     interpreter (default python3)
# Carried wheels in .whl/ (benchmarks/gpu/fetch_wheels.sh) are installed into /tmp/site first.
set -u
cd "$(dirname "$0")/../.."
REPO=$PWD
export OUT=${OUT:-/tmp/fastrobust_gpu_out}
export PY=${PYTHON:-python3}
export RUN_CPU=${RUN_CPU:-0}
export DRY_RUN=${DRY_RUN:-$RUN_CPU}
BUDGET_S=${BUDGET_S:-470}
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
mkdir -p "$OUT"
STAGES_FILE=${TMPDIR:-/tmp}/fastrobust_gpu_$$_stages.tsv
ENV_FILE=${TMPDIR:-/tmp}/fastrobust_gpu_$$_env.txt
: >"$STAGES_FILE"

# ------------------------------------------------------------------------------ setup (always)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/fastrobust_torch_ext}
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl; then
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
      export PATH=/tmp/site/bin:$PATH
      echo "wheels: installed $(ls .whl/*.whl | wc -l) from .whl/ into /tmp/site"
    else
      echo "wheels: INSTALL FAILED (stages that need deepspeed/datasets/pydantic will fail)"
    fi
  else
    echo "wheels: .whl/ holds CPython 3.12 wheels; $("$PY" -V) is not 3.12: not installed"
  fi
else
  echo "wheels: no .whl/ folder: using what the image has"
fi
# fastrobust from this checkout without installing it: the package maps kernels/ and configs/
# into fastrobust.kernels / fastrobust.configs (setup.py package_dir); links do the same here.
[ -e fastrobust/kernels ] || ln -s ../kernels fastrobust/kernels
[ -e fastrobust/configs ] || ln -s ../configs fastrobust/configs
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
if [ "$DRY_RUN" = 1 ]; then export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi

{
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  cpus: $(nproc)  stages: ${*:-tests ops train ds}"
  [ "$DRY_RUN" = 1 ] && echo "DRY RUN: a CPU rehearsal; no figure below is a measurement"
  command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
      --format=csv,noheader 2>&1
  "$PY" - <<'EOF' 2>&1
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "triton", "transformers", "tokenizers", "deepspeed", "datasets", "pydantic",
             "pyarrow", "fsspec", "huggingface_hub", "xdist", "pytest"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}  ({mod.__file__.rsplit('/', 2)[0]})")
    except Exception as exc:
        print(f"{name} MISSING ({type(exc).__name__}: {exc})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import fastrobust.kernels, fastrobust.ops  # the checkout imports (kernels through the link)
print("fastrobust from", fastrobust.ops.__file__)
EOF
} 2>&1 | tee "$ENV_FILE"

# ------------------------------------------------------------------------------ stages
stage_tests() {
  # Lowering first: with this machine's Triton every variant must compile without spills (~15 s).
  if [ "$DRY_RUN" = 1 ]; then
    env -u TRITON_INTERPRET "$PY" tests/kernel_lowering.py --dry-run
  else
    env -u TRITON_INTERPRET timeout 120 "$PY" tests/kernel_lowering.py
    "$PY" - <<'EOF'
import torch
n = 2**30  # bytes per buffer: 2 GiB moved per copy
src = torch.empty(n // 4, device="cuda").uniform_()
dst = torch.empty_like(src)
for _ in range(3):
    dst.copy_(src)
times = []
for _ in range(10):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); dst.copy_(src); b.record(); b.synchronize()
    times.append(a.elapsed_time(b) / 1e3)
times.sort()
print(f"copy bandwidth: {2 * n / times[len(times) // 2] / 1e9:.0f} GB/s (2 GiB read + written, median of 10)")
EOF
  fi
  local files
  files=$({ ls tests/test_ops_*.py; grep -l "mark.kernels" tests/test_*.py; } 2>/dev/null | sort -u | tr '\n' ' ')
  echo "test files: $files"
  local par=()
  "$PY" -c "import xdist" 2>/dev/null && par=(-n 8)
  if [ "$DRY_RUN" = 1 ]; then
    "$PY" -m pytest $files -p no:cacheprovider -q --collect-only --continue-on-collection-errors
  else
    "$PY" -m pytest $files "${par[@]}" -p no:cacheprovider -q -rfE --timeout 60 --continue-on-collection-errors
  fi
}

stage_ops() {
  if [ "$DRY_RUN" = 1 ]; then # bf16 only and a subset of the ops: the interpreter pays per op
    TRITON_INTERPRET=1 "$PY" benchmarks/speed/bench_ops.py --dry-run --device cpu --compile-mode all --sweep \
      --dtypes bf16 --ops copy,add_noise,add_noise_uniform,noisy_copies_n4,pgd_init,pgd_step_l2+e,pgd_step_linf+e,pgd_step_l2 \
      --out "$OUT/ops.jsonl" --budget-s 60
  else
    "$PY" benchmarks/speed/bench_ops.py --out "$OUT/ops.jsonl" --budget-s "${OPS_BUDGET_S:-140}" \
      --compile-mode all --sweep
  fi
}

stage_train() {
  if [ "$DRY_RUN" = 1 ]; then
    FASTROBUST_BACKEND=torch "$PY" benchmarks/speed/bench_train_step.py --smoke --no-rsda-epoch \
      --methods baseline,rs-rp,pgd-k1,freelb-k2 --out "$OUT/train.jsonl"
  else
    "$PY" benchmarks/speed/bench_train_step.py --out "$OUT/train.jsonl" --budget-s "${TRAIN_BUDGET_S:-55}" \
      --rounds-s "${TRAIN_ROUNDS_S:-5}"
  fi
}

ds_launch() { # name zero-stage timeout [extra --set ...]
  local name=$1 zero=$2 limit=$3
  shift 3
  local root=$DS_ROOT left=$((STAGE_END - $(date +%s) - 25)) # 25 s kept for the report
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "--- launch $name: SKIPPED (the stage's time is spent)"
    return
  fi
  echo "--- launch $name: ZeRO-$zero (timeout ${limit}s)"
  local t0=$SECONDS
  if [ "$DRY_RUN" = 1 ]; then # a stand-in: what a launch leaves in its run folder
    "$PY" benchmarks/gpu/ds_check.py dry-launch --root "$root" --steps 8 "$name"
    echo "--- launch $name: exit $? after $((SECONDS - t0)) s (dry run: stand-in)"
    return
  fi
  timeout -k 10 "$limit" "$PY" -m deepspeed.launcher.runner --num_gpus 1 --master_port $((29500 + zero)) \
    --module fastrobust train --config "$root/ds_check.yaml" --deepspeed "configs/ds/zero$zero.json" \
    --set "output.dir=$root/$name" "$@"
  echo "--- launch $name: exit $? after $((SECONDS - t0)) s"
  rm -rf "$root/$name"/*/checkpoints # a ZeRO checkpoint of XLM-R-large is ~8 GB
}

stage_ds() {
  local root=$DS_ROOT size=large extra=() launch_s=${DS_LAUNCH_S:-50}
  if [ "$DRY_RUN" = 1 ]; then
    size=tiny
    extra=(--precision fp32 --steps 8 --dry-run)
    launch_s=30
  fi
  rm -rf "$root"
  timeout 60 "$PY" benchmarks/gpu/ds_check.py prepare --root "$root" --size "$size" "${extra[@]}" || return 1
  local runs=(zero2 zero3)
  ds_launch zero2 2 "$launch_s"
  ds_launch zero3 3 "$launch_s"
  # A compiled XLM-R-large under DeepSpeed compiles for longer than a launch's share of the stage:
  # only on request (DS_COMPILE=1, with DS_CAP_S raised by one launch).
  if [ "${DS_COMPILE:-0}" = 1 ]; then
    ds_launch zero2_compile 2 "$launch_s" --set model.compile=true
    runs+=(zero2_compile)
  fi
  "$PY" benchmarks/gpu/ds_check.py report --root "$root" --out "$OUT/ds.json" "${runs[@]}"
}
stage_real() {
  local root=/tmp/fastrobust_real dev=cuda extra=()
  [ -n "${FASTROBUST_COMMIT:-}" ] || echo "real: FASTROBUST_COMMIT unset: the runs' provenance will name no commit"
  if [ ! -f .real/manifest.json ]; then
    echo "real: no .real/manifest.json: run \`python -m benchmarks.real.pack pack\` here and carry .real"
    return 2
  fi
  rm -rf "$root" && mkdir -p "$root"
  "$PY" -m benchmarks.real.pack unpack .real --out "$root" || return 1
  cp -r benchmarks/real/results "$root/results" # what git holds: the precision decision, finished runs
  if [ "$DRY_RUN" = 1 ]; then # plumbing only: two steps, eight examples a set, one seed
    dev=cpu
    extra=(--set optim.max_steps=2 --set eval.every_steps=2 --set task.max_eval_examples=8)
  fi
  local left=$((STAGE_END - $(date +%s) - 20)) # 20 s kept to pack what finished
  timeout -k 10 "$left" "$PY" -m benchmarks.real.study run --config "$root/real.yaml" --results "$root/results" \
    --scratch "$root/scratch" --device "$dev" --workers "${REAL_WORKERS:-8}" --threads "${REAL_THREADS:-1}" \
    --seeds "${REAL_SEEDS:-6,7,8,9,10}" "${extra[@]}"
  local rc=$? runs
  runs=$(cd "$root/results" && for d in */seed-*; do
    case ",${REAL_SEEDS:-6,7,8,9,10}," in *",${d##*seed-},"*) [ -f "$d/summary.json" ] && echo "$d" ;; esac
  done)
  echo "real: $(echo "$runs" | grep -c .) finished runs of seeds ${REAL_SEEDS:-6,7,8,9,10} -> real-results.tar.gz"
  [ -n "$runs" ] && (cd "$root/results" && tar czf "$OUT/real-results.tar.gz" $runs)
  return $rc
}
export DS_ROOT=${DS_ROOT:-/tmp/fastrobust_ds$([ "$DRY_RUN" = 1 ] && echo "_dry_$$")}
export -f stage_tests stage_ops stage_train stage_ds stage_real ds_launch

# Caps sum to 455 s: with ~15 s of setup, one call of about 7.8 minutes runs everything (BUDGET_S
# 470), two minutes inside the ten a command may take. How they were sized:
#   tests 90   lowering of 36 variants (18 s on 2 busy CPU cores here) + the native tests (pytest -n 8)
#   ops  160   from the counts the dry run reports ("plan" and "compile" records, _ops_grid.plan_counts):
#              the GPU grid is 126 cases: 366 events timings (~0.08 s each: do_bench's warm-up and 40 ms
#              of repeats) + 60 CUDA-graph timings (~0.3 s: input sets > L2, capture) = ~50 s;
#              torch.compile builds 28 graphs (12 static target steps + 16 dynamic: the other steps,
#              noise, init) at an assumed ~2.5 s each (inductor + Triton; each graph's first call is
#              recorded, so the next run can resize this) = ~70 s; the tile sweep, 30 timings and ~10
#              Triton variants = ~15 s. OPS_BUDGET_S=140: no new case after it (primary rows and sweep first)
#   train 80   4 groups x 8 methods, rounds of 5 s, no new group after 55 s
#   ds   125   preparing the 560M-parameter model (~15 s) + two launches of <= 50 s (16 steps each)
# Override a cap with TESTS_CAP_S / OPS_CAP_S / TRAIN_CAP_S / DS_CAP_S; inside the stages
# OPS_BUDGET_S, TRAIN_BUDGET_S (no new case / group after it) and DS_LAUNCH_S apply.
declare -A CAP=([tests]=${TESTS_CAP_S:-90} [ops]=${OPS_CAP_S:-160} [train]=${TRAIN_CAP_S:-80} [ds]=${DS_CAP_S:-125}
  [real]=${REAL_CAP_S:-540})
if [ "$DRY_RUN" = 1 ]; then CAP=([tests]=120 [ops]=120 [train]=120 [ds]=120 [real]=900); fi

# Runs "$@" in a new session for at most $1 seconds (log in $2). On expiry every process of
# that session gets SIGTERM, then SIGKILL 10 s later: this also reaches the process groups that
# inner `timeout`s and launchers make, which a plain outer `timeout` would miss. Whatever is
# left in the session at the end is killed too (a new session would outlive this command on
# the device machine). Returns the command's status, or 124 on expiry.
run_limited() {
  local limit=$1 log=$2
  shift 2
  setsid "$@" >"$log" 2>&1 </dev/null &
  local sid=$! waited=0 rc
  while kill -0 "$sid" 2>/dev/null && [ "$waited" -lt "$limit" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$sid" 2>/dev/null; then
    pkill -TERM -s "$sid"
    sleep 10
    pkill -KILL -s "$sid"
    wait "$sid" 2>/dev/null
    rc=124
  else
    wait "$sid"
    rc=$?
  fi
  pkill -KILL -s "$sid" 2>/dev/null
  return "$rc"
}

run_stage() {
  local name=$1 cap=${CAP[$1]:-}
  if [ -z "$cap" ]; then
    echo "unknown stage '$name' (tests ops train ds real)"
    printf '%s\tunknown stage\t0\n' "$name" >>"$STAGES_FILE"
    return
  fi
  local left=$((DEADLINE - $(date +%s) - 15))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 20 ]; then
    echo "[$name] SKIPPED: the time budget (BUDGET_S=$BUDGET_S) is spent"
    printf '%s\tskipped (budget)\t0\n' "$name" >>"$STAGES_FILE"
    return
  fi
  echo "[$name] start $(date -u +%T), timeout ${limit}s, log $OUT/$name.log"
  export STAGE_END=$(($(date +%s) + limit))
  local t0=$SECONDS
  run_limited "$limit" "$OUT/$name.log" bash -c "stage_$name"
  local rc=$? dt=$((SECONDS - t0)) status
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT after ${limit}s" ;;
    *) status="FAILED rc=$rc" ;;
  esac
  echo "[$name] $status (${dt}s)"
  if [ "$rc" != 0 ]; then
    echo "----- last lines of $name.log"
    tail -n 15 "$OUT/$name.log" | cut -c1-200
    echo "-----"
  fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$dt" >>"$STAGES_FILE"
}

for stage in "${@:-tests ops train ds}"; do
  for s in $stage; do run_stage "$s"; done
done

echo
echo "===== summary ($(($(date +%s) - START)) s) ====="
"$PY" benchmarks/gpu/summary.py "$OUT" --stages "$STAGES_FILE" --env "$ENV_FILE"
rm -f "$STAGES_FILE" "$ENV_FILE"
[ "$DRY_RUN" = 1 ] && rm -rf "$DS_ROOT"
exit 0
