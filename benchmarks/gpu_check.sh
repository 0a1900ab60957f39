#!/usr/bin/env bash
# The GPU check, as one command (make gpu-check; on a bare GPU machine: bash benchmarks/gpu_check.sh):
#   tests  the GPU test lane (NST_TEST_DEVICE=cuda): every test that performs a transfer, on the GPU
#   sweep  experiments/lr_sweep.yaml at its shipped settings into a fresh store, then `nst report`
#   bench, peer, levers, batch  make bench on the GPU: benchmarks.bench, .peer, .levers, .batch -> BENCHMARKS-cuda.md
# TESTS="tests/test_batches.py ..." runs only those test files or ids in the tests phase.
# Phases run in that order (name some to run only those: `gpu_check.sh tests sweep`), each under its
# own time limit; a failing phase is reported and the next one still runs. Results go to $OUT
# (default reports/gpu_check/): one log per phase, the report, BENCHMARKS-cuda.md and summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-reports/gpu_check}
mkdir -p "$OUT"
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(tests sweep bench peer levers batch)
export PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
summary="$OUT/summary.md"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)' 2>/dev/null; then
  echo "gpu_check: no CUDA GPU is visible here; this check needs one (make test runs the CPU lane)" >&2
  exit 2
fi
gpu=$("$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")')
echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M') UTC: $gpu" | tee "$summary"
status=0

phase() {  # phase NAME LIMIT_SECONDS COMMAND...: run, time, log, note the outcome
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$? took=$((SECONDS - start))
  tail -n 25 "$OUT/$name.log"
  [ $rc -ne 0 ] && status=1
  echo "- $name: exit $rc in ${took} s$([ $rc -eq 124 ] && echo ' (time limit)')" | tee -a "$summary"
}

for p in "${phases[@]}"; do
  case $p in
    tests)
      workers=$("$PYTHON" -c 'import xdist' 2>/dev/null && echo "-n 12 --dist loadfile")
      # shellcheck disable=SC2086  # word splitting wanted: several test paths
      phase tests 300 env NST_TEST_DEVICE=cuda "$PYTHON" -m pytest -q -rs $workers ${TESTS:-tests} ;;
    sweep)
      store="sqlite:///$(mktemp -d)/mlflow.db"  # not under $OUT: only the report's files come back
      phase sweep 180 "$PYTHON" -m pipelines.cli experiment lr_sweep.yaml --tracking-uri "$store" --quiet
      phase report 90 "$PYTHON" -m pipelines.cli report lr_sweep --tracking-uri "$store" --out "$OUT/lr_sweep" --dpi 60
      grep -E '^\| (lr|run)|PASS|FAIL' "$OUT/lr_sweep/report.md" | head -n 12 >>"$summary" ;;
    bench|peer|levers|batch)
      phase "$p" 240 "$PYTHON" -m "benchmarks.$p" --device cuda
      cp BENCHMARKS-cuda.md "$OUT/" 2>/dev/null ;;
    *) echo "gpu_check: unknown phase $p (tests, sweep, bench, peer, levers, batch)" >&2; exit 2 ;;
  esac
done
cat "$summary"
exit $status
