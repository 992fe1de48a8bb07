#!/usr/bin/env bash
# One prepared check for a CUDA machine, at most 8 minutes (GPU_CHECK_BUDGET=480 s) on one GPU:
#
#   1. environment     nvidia-smi; torch, CUDA and the packages dmat needs
#   2. full-path smoke tests/test_full_path.py, slow tests included, on the GPU in bf16 autocast and
#                      channels-last with the presets' own batch sizes (DMAT_SMOKE_DEVICE=cuda
#                      DMAT_SMOKE_AMP=bf16 DMAT_SMOKE_CHANNELS_LAST=1 DMAT_SMOKE_FULL_BATCH=1)
#   2b. the CUDA-only unit tests (sampling, toy-trainer resume, crop-and-flip, checkpointed RNG state)
#   3. the GPU rows of the benchmarks: bench/preset_time.py --device cuda for each full-mode preset
#      (train-at colab-small and paper-wrn28-10, train-dm colab-small and paper), bench/train_at.py,
#      bench/generate.py, bench/attacks.py, each cut short by its own options (bench/toy_dm.py is a
#      CPU benchmark, one thread per library, with no GPU row: listed as skipped)
#
# Every step runs under a time limit, cut to what is left of the budget; a failing step is recorded
# and the next one runs; the exit status is 1 when any step failed, 2 when there is no CUDA device
# at all. One report, gpu_check_report.md, in $OUT when that is set, else in bench/: the date, the
# commit, the device (nvidia-smi), and each step's command, status, seconds and output (the whole
# output of each step is also kept in gpu_check_logs/ beside the report).
#
#   bash bench/gpu_check.sh              # on the GPU machine, from anywhere
#   bash bench/gpu_check.sh --dry-run    # any machine: every step's script with --help, the smoke
#                                        # tests collected on the CPU (checks the commands, the
#                                        # report and the failure accounting; measures nothing)
#
# Python: $PYTHON, else .venv/bin/python, else python3 (the repository is put on PYTHONPATH, so an
# environment with torch and dmat's dependencies but without dmat installed works too). Nothing is
# downloaded: bench/attacks.py needs torchattacks (the `bench` extra) and is SKIPPED without it.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg TQDM_DISABLE=1 PYTHONUNBUFFERED=1

OUTDIR=${OUT:-$ROOT/bench}
mkdir -p "$OUTDIR/gpu_check_logs"
REPORT=$OUTDIR/gpu_check_report.md
LOGS=$OUTDIR/gpu_check_logs
START=$(date +%s)
FAILED=()
SKIPPED=()
PASSED=()
N=0

gpu_name() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 4
  else
    echo "no nvidia-smi on this machine"
  fi
}

{
  echo "# GPU check report"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- host: $(hostname)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "- device (nvidia-smi): $(gpu_name | paste -sd ';' -)"
  echo "- python: $PY ($("$PY" --version 2>&1))"
  echo "- mode: $([ $DRY = 1 ] && echo 'dry run (--help and collection only; nothing measured)' || echo 'full check')"
  echo
} > "$REPORT"

# step NAME LIMIT_SECONDS COMMAND...: run it, time it, record its status and output. The limit is cut
# to what is left of the whole check's budget (GPU_CHECK_BUDGET seconds, default 480); a step that
# would get less than 20 s is not run, and counts as failed.
BUDGET=${GPU_CHECK_BUDGET:-480}
[ $DRY = 1 ] && BUDGET=${GPU_CHECK_BUDGET:-3600}   # a dry run measures nothing: a busy CPU may take its time
step() {
  local name=$1 limit=$2; shift 2
  [ $DRY = 1 ] && limit=600
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ $left -lt 20 ]; then                 # not run: counts as failed
    N=$((N + 1)); FAILED+=("$name")
    echo "== [$N] $name: FAIL (not run: out of the check's time budget, GPU_CHECK_BUDGET=$BUDGET s)" >&2
    printf '## %s. %s: FAIL (not run: out of the time budget, GPU_CHECK_BUDGET=%s s)\n\n' "$N" "$name" "$BUDGET" >> "$REPORT"
    return
  fi
  [ $limit -gt $left ] && limit=$left
  N=$((N + 1))
  local log
  log=$LOGS/$(printf '%02d' $N)-$(printf '%s' "$name" | tr -cs 'A-Za-z0-9.-' '_' | sed 's/_$//').log
  local shown; shown=$(printf '%q ' "$@")
  local t0=$SECONDS
  echo "== [$N] $name (limit ${limit} s): $shown" >&2
  timeout --kill-after=20 "$limit" "$@" >"$log" 2>&1
  local rc=$? secs=$((SECONDS - t0)) status
  if [ $rc = 0 ]; then status=PASS; PASSED+=("$name")
  elif [ $rc = 124 ] || [ $rc = 137 ]; then status="FAIL (timed out after ${limit} s)"; FAILED+=("$name")
  else status="FAIL (exit $rc)"; FAILED+=("$name")
  fi
  echo "   -> $status, ${secs} s" >&2
  {
    echo "## $N. $name: $status, ${secs} s"
    echo
    echo "\`${shown% }\`"
    echo
    echo '```'
    if [ "$(wc -l <"$log")" -gt 300 ]; then
      head -n 60 "$log"; echo "... ($(wc -l <"$log") lines; the whole output: $(basename "$log")) ..."; tail -n 200 "$log"
    else
      cat "$log"
    fi
    echo '```'
    echo
  } >> "$REPORT"
}

skip() {
  N=$((N + 1)); SKIPPED+=("$1")
  echo "== [$N] $1: SKIPPED ($2)" >&2
  printf '## %s. %s: SKIPPED\n\n%s\n\n' "$N" "$1" "$2" >> "$REPORT"
}

joined() {   # the arguments separated by "; ", or "none"
  [ $# = 0 ] && { echo none; return; }
  local out=$1; shift
  for x in "$@"; do out="$out; $x"; done
  echo "$out"
}

finish() {
  local total=$(( $(date +%s) - START ))
  {
    echo "## Summary"
    echo
    echo "- total: ${total} s"
    echo "- passed (${#PASSED[@]}): $(joined ${PASSED[@]+"${PASSED[@]}"})"
    echo "- failed (${#FAILED[@]}): $(joined ${FAILED[@]+"${FAILED[@]}"})"
    echo "- skipped (${#SKIPPED[@]}): $(joined ${SKIPPED[@]+"${SKIPPED[@]}"})"
  } >> "$REPORT"
  echo "report: $REPORT (${total} s; ${#PASSED[@]} passed, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped)" >&2
  [ ${#FAILED[@]} = 0 ] || exit 1
  exit 0
}

# -- 1. environment: CUDA must be there (except in a dry run)
cat > "$LOGS/env_check.py" <<'EOF'
import importlib, sys
import torch
print("torch", torch.__version__, "| CUDA build", torch.version.cuda, "| cuda available", torch.cuda.is_available())
if sys.argv[1] == "gpu" and not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch: this check needs one (--dry-run checks the script on a CPU)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"{p.total_memory / 2**30:.0f} GiB", "capability", f"{p.major}.{p.minor}",
          "bf16", torch.cuda.is_bf16_supported())
missing = []
for m in ("numpy", "scipy", "sklearn", "tqdm", "matplotlib", "pyautoattack", "pydantic", "torchvision", "pytest",
          "dmat_core"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", ""), getattr(mod, "__file__", ""))
    except Exception as e:
        missing.append(f"{m} ({type(e).__name__}: {e})")
if missing:
    sys.exit("missing: " + "; ".join(missing))
EOF
if command -v nvidia-smi >/dev/null 2>&1; then
  step "nvidia-smi" 30 nvidia-smi
elif [ $DRY = 1 ]; then
  skip "nvidia-smi" "not found (a dry run does not need it)"
else
  step "nvidia-smi" 30 nvidia-smi           # recorded as failed: no NVIDIA driver here
fi
step "python environment" 120 "$PY" "$LOGS/env_check.py" "$([ $DRY = 1 ] && echo cpu || echo gpu)"
if [ $DRY = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1; then
  echo "no CUDA device here (torch.cuda.is_available() is False or torch is missing): nothing to check" >&2
  echo "**Stopped: no CUDA device** (torch.cuda.is_available() is False, or torch is missing)." >> "$REPORT"
  echo "report: $REPORT" >&2
  exit 2
fi

# -- 2. the full-path smoke, GPU, bf16, channels-last, the presets' batch sizes (slow tests included)
if [ $DRY = 1 ]; then
  step "full-path smoke (collection only, CPU)" 300 \
    env DMAT_SMOKE_DEVICE=cpu "$PY" -m pytest -q -p no:cacheprovider -m "slow or not slow" --collect-only tests/test_full_path.py
else
  step "full-path smoke (GPU, bf16, channels-last, preset batches)" 240 \
    env DMAT_SMOKE_DEVICE=cuda DMAT_SMOKE_AMP=bf16 DMAT_SMOKE_CHANNELS_LAST=1 DMAT_SMOKE_FULL_BATCH=1 \
    "$PY" -m pytest -q -s -p no:cacheprovider -m "slow or not slow" --durations=0 tests/test_full_path.py
fi

# -- 2b. the unit tests that run only where CUDA is (skipped on CI's CPU machine): sampling on the GPU,
#        bitwise resume of a toy trainer on cuda, crop-and-flip on cuda equal to the CPU, the CUDA RNG
#        state in checkpoints
CUDA_TESTS=(tests/test_samplers.py::test_cuda tests/test_toy_train.py::test_checkpoint_resume_is_exact
            tests/test_data.py::test_crop_flip_on_cuda_matches_cpu tests/test_checkpoint.py)
if [ $DRY = 1 ]; then
  step "CUDA-only unit tests (collection only, CPU)" 120 "$PY" -m pytest -q -p no:cacheprovider --collect-only "${CUDA_TESTS[@]}"
else
  step "CUDA-only unit tests" 90 "$PY" -m pytest -q -p no:cacheprovider -rs "${CUDA_TESTS[@]}"
fi

# -- 3. the GPU rows of the benchmarks (each cut short by its own options), the preset claims first
H=(); [ $DRY = 1 ] && H=(--help)
GPU_LABEL="$(gpu_name | head -n 1 | cut -d, -f1), bf16"
for job_preset in train-at:colab-small train-dm:colab-small train-at:paper-wrn28-10 train-dm:paper; do
  job=${job_preset%%:*}; preset=${job_preset#*:}
  step "bench/preset_time.py $job --preset $preset" 120 \
    "$PY" bench/preset_time.py --job "$job" --preset "$preset" --device cuda --timed-steps 3 ${H[@]+"${H[@]}"}
done
step "bench/train_at.py (TRADES-10 step, dmat vs reference)" 120 \
  "$PY" bench/train_at.py --device cuda --amp bf16 --batch-wrn 512 --batch-small 512 --steps 3 ${H[@]+"${H[@]}"}
step "bench/generate.py (Heun-20, tiny/small/large U-Net)" 90 \
  "$PY" bench/generate.py --device cuda --amp bf16 --batch 256,256,128 --repeats 2 ${H[@]+"${H[@]}"}
if [ $DRY = 1 ] || "$PY" -c 'import torchattacks' >/dev/null 2>&1; then
  step "bench/attacks.py (PGD-10, dmat vs torchattacks)" 90 \
    "$PY" bench/attacks.py --device cuda --amp bf16 --batch 256 --repeats 3 --markdown "$GPU_LABEL" ${H[@]+"${H[@]}"}
else
  skip "bench/attacks.py (PGD-10, dmat vs torchattacks)" \
    "torchattacks is not installed (pip install torchattacks, or the bench extra: pip install -e '.[bench]')"
fi
skip "bench/toy_dm.py" "a CPU benchmark (2D toy, one thread per library): it has no GPU row"

finish
