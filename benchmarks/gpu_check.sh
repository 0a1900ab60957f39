#!/usr/bin/env bash
# The GPU check, as one command (make gpu-check; on a bare GPU machine: bash benchmarks/gpu_check.sh):
#   tests  the GPU test lane (NST_TEST_DEVICE=cuda): every test that performs a transfer, on the GPU
#   sweep  experiments/lr_sweep.yaml at its shipped settings into a fresh store, then `nst report`
#   bench  benchmarks.bench on the GPU (overhead, roofline, precision, memory, determinism)
# Those three are the check (on an H100, 2026-11-26, in one call: tests 143 s, sweep + report 69 s,
# bench 163 s: 399 s in all). The rest of `make bench` runs when
# named: batch, levers, peer (benchmarks.batch 216 s on that H100, before its "A batch into a tracking server" (~60 s
# with a server there); levers and peer not yet timed
# there), e.g. `gpu_check.sh tests sweep bench batch` or, within one 10-minute call,
#   LIMIT_tests=255 LIMIT_batch=300 bash benchmarks/gpu_check.sh tests batch     (~450 s)
# batch's "tracking server" row needs an MLflow server there: bash benchmarks/gpu_server_wheels.sh
# adds its wheels to .whl/ first (54 MB in all); without them the row says it was not measured.
#   ray    tests/test_cluster.py on the GPU (--executor ray, two batches sharing the GPU): Ray from
#          .ray/site.tar.xz (bash benchmarks/gpu_ray_site.sh, 28 MB), unpacked into $RAY_SITE
#          (default /tmp/site, where .whl/env.sh installs). .whl and .ray together are over one
#          call's 64 MiB carry: after a call that sourced .whl/env.sh, a second call on the warm
#          machine carries .ray and runs `export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_check.sh ray`.
#   graphs tests/test_graphs.py on the GPU and benchmarks.batch --graphs: nst's runs with `cuda_graph:
#          true` against op by op (its lr sweep included; about 2-3 min, not yet timed on a GPU).
#   profile benchmarks.step_profile: where a step's device time goes, by operator, at 3 × 128 and
#          8 × 512 px, each case's floor (benchmarks.floor: its kernels' bytes and FLOPs at this GPU's
#          copy bandwidth and matmul peak), and each case under 7 switches (TF32, cuDNN autotuning,
#          layouts, fp32 against bf16, the Gram from fp32 copies; not yet timed on a GPU: about a
#          minute expected).
#   host   benchmarks.host: a step's host work apart from its losses (the losses replaced by one cheap
#          operation), bare, tracked, and tracked with checkpoints, at B = 3 and 64 (about 3 min on the
#          2-core CPU; not yet timed on a GPU).
#   startup benchmarks.startup: what a tracked fit of the lr sweep's shape pays once, apart from its
#          steps, first and second fit in a process, and how soon a writer process is ready; then
#          the first fit of a fresh process under cProfile (startup_profile.log names where it goes).
#          On the H100 (2026-11-27, 95 s) it found ~8 s a fit waiting for a writer process still
#          starting (BENCHMARKS-cuda.md), since made to start before the loop needs it.
#   writers benchmarks.batch --writers: a tracked batch's step (3 × 128, 64 × 256 px) with its runs
#          written by a thread against by a process, the lr sweep's 60,000 rows written by 1, 2 and 3
#          writer processes, and 8 short runs one at a time with a thread, a process per batch, the
#          sweep's kept processes (not yet timed on a GPU; about 3 min expected).
#   spy    the lr sweep at its shipped settings under py-spy (bash benchmarks/gpu_spy_wheel.sh adds its
#          wheel to .whl/, 3 MB): spy_sweep.txt, the loop thread's wall time by function inside its fit
#          (benchmarks/spy.py), and spy.log, the fit's own breakdown (pipelines.tracking.fit_times);
#          about a minute (not yet timed on a GPU).
# Under a time limit that may cut it off, the pytest lane is stopped with SIGINT, so that it still
# prints its failures.
# TESTS="tests/test_batches.py ..." runs only those test files or ids in the tests phase, WORKERS=N that
# many pytest workers (default: one per core);
# LIMIT_<phase>=SECONDS changes that phase's time limit (e.g. LIMIT_tests=200 to fit a short lease).
# Phases run in that order (name some to run only those: `gpu_check.sh tests sweep`), each under its
# own time limit; a failing phase is reported and the next one still runs. Results go to $OUT
# (default reports/gpu_check/): one log per phase, the report, BENCHMARKS-cuda.md and summary.md
# (PACK=1: the logs and the report in one results.tar.gz beside the last two).
# The benchmarks write $OUT/BENCHMARKS-cuda.md, not the checkout's: copy it over to commit it.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# A bare GPU machine with the wheels carried (../shared/gpu/wheels.sh): installed here, so that the one
# command is the whole check (sourced in a pipeline, env.sh's PYTHONPATH would be lost to a subshell).
if [ -f .whl/env.sh ] && ! "$PYTHON" -c 'import mlflow' 2>/dev/null; then
  # shellcheck disable=SC1091
  source .whl/env.sh || exit 2
fi
OUT=${OUT:-reports/gpu_check}
mkdir -p "$OUT"
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(tests sweep bench)
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
  local override="LIMIT_$name"
  limit=${!override:-$limit}
  local start=$SECONDS
  echo "== $name (limit ${limit} s)"
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$? took=$((SECONDS - start))
  tail -n 25 "$OUT/$name.log"
  [ $rc -ne 0 ] && status=1
  echo "- $name: exit $rc in ${took} s$([ $rc -eq 124 ] && echo ' (time limit)')" | tee -a "$summary"
}

for p in "${phases[@]}"; do
  case $p in
    tests)
      # One worker per core, tests (not files) dealt out, a file that asks for one worker excepted
      # (xdist_group): dealt by file, test_bench's slow subprocess tests kept one worker busy for a
      # minute after the rest were done. One thread each: 16 workers with 16 threads apiece fought
      # over 16 cores for the CPU-side work.
      # Under pytest >= 9.2, pytest-xdist 3.8 keeps no xdist_group together (pytest-dev/pytest-xdist#1386,
      # tests/test_lane.py): there the files are dealt out whole, which keeps test_cluster's on one worker.
      dist=$("$PYTHON" -c 'import pytest; v = tuple(int(x) for x in pytest.__version__.split(".")[:2]); print("loadfile" if v >= (9, 2) else "loadgroup")' 2>/dev/null)
      workers=$("$PYTHON" -c 'import xdist' 2>/dev/null && echo "-n ${WORKERS:-auto} --dist ${dist:-loadgroup}")
      # A line per test as it ends (-v), and every test over 2 s with its time: a lane cut off by its time
      # limit then says which tests never ended, and how its workers' time was spent
      # (2026-11-28: cut at 232 s with 292 passed, and nothing said which ~70 were left).
      # shellcheck disable=SC2086  # word splitting wanted: several test paths
      # Every 5 s, the machine's load and the GPU's use: whether a slow lane waits for the cores or the GPU
      # (16 workers' tests each start nst commands, and those their writer processes).
      (while sleep 5; do echo "$(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg) gpu $(nvidia-smi \
        --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"; done) >"$OUT/lane_load.log" 2>&1 &
      sampler=$!
      phase tests 300 env NST_TEST_DEVICE=cuda OMP_NUM_THREADS=1 "$PYTHON" -m pytest -v -rfEs --durations=0 --durations-min=2 \
        -p no:benchmark $workers ${TESTS:-tests}
      kill "$sampler" 2>/dev/null
      grep -E '^=+ .*(passed|failed)' "$OUT/tests.log" | tail -n 1 >>"$summary"
      # The slowest tests, and the machine's highest load meanwhile (summary.md comes back on its own).
      { echo "slowest tests:"; grep -E '^[0-9.]+s (call|setup|teardown) ' "$OUT/tests.log" | head -n 10
        echo "highest 1-minute load: $(awk '{print $3}' "$OUT/lane_load.log" | sort -g | tail -n 1)"; } >>"$summary" ;;
    sweep)
      store="sqlite:///$(mktemp -d)/mlflow.db"  # not under $OUT: only the report's files come back
      phase sweep 180 "$PYTHON" -m pipelines.cli experiment lr_sweep.yaml --tracking-uri "$store" --quiet
      phase report 90 "$PYTHON" -m pipelines.cli report lr_sweep --tracking-uri "$store" --out "$OUT/lr_sweep" --dpi 60
      grep -E '\*\*(PASS|FAIL)\*\*' "$OUT/lr_sweep/report.md" | head -n 3 >>"$summary" ;;
    graphs)
      # nst's runs with cuda_graph: true: its tests on the GPU, then benchmarks.batch's "CUDA graphs" section.
      phase graph_tests 120 env NST_TEST_DEVICE=cuda "$PYTHON" -m pytest -q -rfEs -p no:benchmark tests/test_graphs.py
      grep -E '^=+ .*(passed|failed|skipped)' "$OUT/graph_tests.log" | tail -n 1 >>"$summary"
      [ -f "$OUT/BENCHMARKS-cuda.md" ] || cp BENCHMARKS-cuda.md "$OUT/" 2>/dev/null
      phase graphs 200 "$PYTHON" -m benchmarks.batch --graphs --device cuda --out "$OUT/BENCHMARKS-cuda.md" ;;
    startup)
      [ -f "$OUT/BENCHMARKS-cuda.md" ] || cp BENCHMARKS-cuda.md "$OUT/" 2>/dev/null
      phase startup 150 "$PYTHON" -m benchmarks.startup --device cuda --out "$OUT/BENCHMARKS-cuda.md"
      phase startup_profile 90 "$PYTHON" -m benchmarks.startup --profile --device cuda --out "$OUT/BENCHMARKS-cuda.md" ;;
    writers)
      [ -f "$OUT/BENCHMARKS-cuda.md" ] || cp BENCHMARKS-cuda.md "$OUT/" 2>/dev/null
      phase writers 240 "$PYTHON" -m benchmarks.batch --writers --device cuda --out "$OUT/BENCHMARKS-cuda.md" ;;
    host)
      [ -f "$OUT/BENCHMARKS-cuda.md" ] || cp BENCHMARKS-cuda.md "$OUT/" 2>/dev/null
      phase host 150 "$PYTHON" -m benchmarks.host --device cuda --out "$OUT/BENCHMARKS-cuda.md" ;;
    profile)
      [ -f "$OUT/BENCHMARKS-cuda.md" ] || cp BENCHMARKS-cuda.md "$OUT/" 2>/dev/null
      phase profile 150 "$PYTHON" -m benchmarks.step_profile --device cuda --out "$OUT/BENCHMARKS-cuda.md" ;;
    spy)
      # The lr sweep's fit and its own breakdown (pipelines.tracking.fit_times) in spy.log, under py-spy when
      # it is here and can sample (--idle: the loop's waits count too, so its samples are its wall time;
      # --nonblocking: not paused to sample); without it, the breakdown alone.
      spy=$(command -v py-spy || echo /tmp/site/bin/py-spy)
      sweep=("$PYTHON" -m benchmarks.spy --sweep experiments/lr_sweep.yaml)
      if [ -x "$spy" ]; then
        phase spy 180 "$spy" record --idle --threads --nonblocking -r 200 -f raw -o "$OUT/spy_sweep.raw" -- "${sweep[@]}"
      else
        echo "- spy: no py-spy here (bash benchmarks/gpu_spy_wheel.sh adds it to .whl/); the fit's breakdown alone" |
          tee -a "$summary"
      fi
      if [ -s "$OUT/spy_sweep.raw" ]; then
        "$PYTHON" -m benchmarks.spy "$OUT/spy_sweep.raw" --top 20 >"$OUT/spy_sweep.txt" 2>&1
      else  # no py-spy, or it could not sample here: the sweep without it
        phase spy 150 "${sweep[@]}"
      fi
      { grep "of the fit's" "$OUT/spy.log"; cat "$OUT/spy_sweep.txt" 2>/dev/null; } | tee -a "$summary" ;;
    ray)
      if [ -f .ray/site.tar.xz ]; then tar -xJf .ray/site.tar.xz -C "${RAY_SITE:-/tmp/site}"; fi
      phase ray 200 env NST_TEST_DEVICE=cuda "$PYTHON" -m pytest -q -rfEs -p no:benchmark tests/test_cluster.py
      grep -E '^=+ .*(passed|failed|skipped)' "$OUT/ray.log" | tail -n 1 >>"$summary" ;;
    bench|peer|levers|batch)
      # Written in $OUT as it goes (a check cut off keeps every table it finished); copy it back to commit it.
      [ -f "$OUT/BENCHMARKS-cuda.md" ] || cp BENCHMARKS-cuda.md "$OUT/" 2>/dev/null
      phase "$p" 240 "$PYTHON" -m "benchmarks.$p" --device cuda --out "$OUT/BENCHMARKS-cuda.md" ;;
    *) echo "gpu_check: unknown phase $p (tests, sweep, bench, peer, levers, batch, graphs, writers, startup, host, profile, spy, ray)" >&2; exit 2 ;;
  esac
done
cat "$summary"
# PACK=1: everything but the summary and BENCHMARKS-cuda.md in one results.tar.gz (a device machine hands
# back at most 8 files from $OUT; the tests, startup, graphs and profile phases alone write 8).
if [ -n "${PACK:-}" ]; then
  (cd "$OUT" && find . -type f ! -name summary.md ! -name BENCHMARKS-cuda.md ! -name results.tar.gz -print0 |
    tar -czf results.tar.gz --null -T - --remove-files)
fi
exit $status
