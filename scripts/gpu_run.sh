#!/usr/bin/env bash
# Everything a GPU run is for, in one call of at most 10 minutes (TOTAL_LIMIT_S; sized for a
# lent machine whose start-up takes a minute or two of a 15-minute budget). It stops at once
# without a CUDA GPU. The stages run in this order, the first three within about 5 minutes
# (on the H200, 2026-12-04: check 106 s, headline 33-40 s):
#
#   environment  GPU, driver, torch / Triton / CUDA versions, date, commit -> environment.txt
#   check        python -m fastrnn.check: every backend against torch, TF32 off and on
#   headline     LSTM and GRU B=16 T=1024 H=768 in fp16, bf16, fp32, forward and
#                forward+backward, fastrnn-triton against cuDNN's nn.LSTM / nn.GRU, one run
#   probe        benchmarks.gpu_probe: a step's barrier and exchange alone, and the forward
#                in each plan mode, per step (where the headline's 6.5 us goes) -> probe.md
#   grid         the tests marked grid: the sm_90 planner's multi-program plans (headline
#                included) compiled, against torch.nn in fp64, and two streams at once
#   build        the CUDA extension fastrnn._C for sm_90 only, in place (no pip, no network)
#   check-ext    python -m fastrnn.check --backends ext (the extension did not exist before)
#   cuda-tests   the tests marked cuda (Triton kernels and the extension on the GPU)
#   tests        the rest of the suite
#   sweep        the benchmark sweep, for whatever time is left
#
# Not in the default list: build-start / build-wait (the build in the background, beside
# stages that time nothing), step-latency (benchmarks.step_latency on the GPU) and demo.
#
#   bash scripts/gpu_run.sh
#   STAGES="check headline" bash scripts/gpu_run.sh        # a subset, in the order given
#   CUDA_TEST_ARGS="tests/test_generate.py tests/ops" STAGES=cuda-tests bash scripts/gpu_run.sh
#   COMMIT=$(git rev-parse --short HEAD) OUT=/tmp/out bash scripts/gpu_run.sh
#
# Everything goes to $OUT as it happens: environment.txt, one log per stage (<stage>.log),
# check.json, junit XML of the tests, bench/ (results.csv with this run's rows appended to
# the committed ones, results.md, PNGs when matplotlib is there), and summary.txt, which
# gets one line per stage as soon as the stage ends. Each stage has its own time limit
# (`timeout`), and no stage runs past TOTAL_LIMIT_S from the start, so a 10-minute call
# returns what finished. A failing stage does not stop the next; the exit status is that
# of the first failing stage (0 when all pass). The machine has no network: nothing is
# installed here.
set -uo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then   # the comment above
  sed -n '2,/^set -uo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
PYTHON=${PYTHON:-python}
STAGES=${STAGES:-"check headline probe grid build check-ext cuda-tests tests sweep"}
TOTAL_LIMIT_S=${TOTAL_LIMIT_S:-570}
TEST_ARGS=${TEST_ARGS:-"-m 'not cuda'"}
BENCH_ARGS=${BENCH_ARGS:-}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1 FASTRNN_COMMIT=$COMMIT
mkdir -p "$OUT/bench"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0

note() { echo "$*" | tee -a "$SUMMARY"; }

# Seconds left before TOTAL_LIMIT_S, less the 20 s `timeout` may wait before it kills.
remaining() { echo $((TOTAL_LIMIT_S - SECONDS - 20)); }

# stage NAME LIMIT_S COMMAND: runs COMMAND (a string for bash -c, which sees the limit as
# $LIMIT) under min(LIMIT_S, time left), logs to $OUT/NAME.log, and appends its outcome and
# the log's last line to the summary.
stage() {
  local name=$1 limit=$2 cmd=$3
  local left
  left=$(remaining)
  if [ "$left" -lt 30 ]; then
    note "$name: not run, $left s left of TOTAL_LIMIT_S=$TOTAL_LIMIT_S"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  echo "=== $name (limit ${limit}s): $cmd"
  LIMIT=$limit timeout --signal=INT --kill-after=20 "$limit" bash -c "$cmd" > "$OUT/$name.log" 2>&1
  local rc=$?
  local what="exit $rc"
  [ "$rc" -eq 124 ] && what="time limit of ${limit}s reached (exit 124)"
  note "$name: $what after $((SECONDS - start))s (log: $name.log) | $(tail -n 1 "$OUT/$name.log")"
  tail -n 15 "$OUT/$name.log"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

# The bench stages append to a copy of the committed results, so $OUT/bench/results.csv is
# the repository's file plus this run's rows and results.md covers every device: copy the
# folder back over benchmarks/results/ to commit the figures.
cp benchmarks/results/results.csv benchmarks/results/not_measured_*.txt "$OUT/bench/" 2>/dev/null || true
bench() {  # bench NAME LIMIT_S ARGS...: one benchmarks.run stage, then render (also after a kill)
  local name=$1 limit=$2; shift 2
  # No new case in the last 40 s: the one under way finishes before the limit.
  stage "$name" "$limit" "$PYTHON -m benchmarks.run --out '$OUT/bench' --time-limit-s \$((LIMIT > 80 ? LIMIT - 40 : LIMIT / 2)) $*"
  timeout 60 "$PYTHON" -m benchmarks.run --render-only --out "$OUT/bench" >> "$OUT/$name.log" 2>&1
}

{
  echo "date: $(date -u +"%Y-%m-%dT%H:%M:%SZ")"
  echo "commit: $COMMIT"
  echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
  "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu available', torch.cuda.is_available())"
  "$PYTHON" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -n 1
  "$PYTHON" -c "import matplotlib; print('matplotlib', matplotlib.__version__)" 2>&1 | tail -n 1
  echo "nvcc: $(nvcc --version 2>&1 | tail -n 1)"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
note "environment: written after ${SECONDS}s (environment.txt)"
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  note "no CUDA GPU here: gpu_run.sh is for a GPU machine (make test covers the CPU)"
  exit 2
fi

for s in $STAGES; do
  case $s in
    # check (140 s), headline (90 s) and probe (90 s) after the environment: done within about
    # 5.5 minutes even if all run to their limits (Triton compiles each kernel variant on first use).
    check)
      stage check 140 "$PYTHON -m fastrnn.check --json '$OUT/check.json'" ;;
    headline)
      bench headline 90 --kernels lstm,gru --shapes B16-T1024-H768 --modes forward,forward+backward \
        --providers nn,fastrnn-triton ;;
    probe)
      stage probe 90 "$PYTHON -m benchmarks.gpu_probe --out '$OUT/probe.md'" ;;
    grid)
      stage grid 120 "$PYTHON -m pytest -q -rs -m grid --junitxml='$OUT/grid.xml'" ;;
    build)
      # In place, without pip: nothing to fetch, and the later stages import fastrnn from this
      # folder. sm_90 only (the H200): one architecture halves the nvcc time.
      stage build 240 "TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=\${MAX_JOBS:-16} $PYTHON setup.py build_ext --inplace" ;;
    check-ext)
      stage check-ext 90 "$PYTHON -m fastrnn.check --backends ext --json '$OUT/check-ext.json'" ;;
    cuda-tests)
      stage cuda-tests "${CUDA_TESTS_LIMIT_S:-150}" "$PYTHON -m pytest -q -rs -m cuda --junitxml='$OUT/cuda-tests.xml' ${CUDA_TEST_ARGS:-}" ;;
    tests)
      stage tests 240 "$PYTHON -m pytest -q -rs $TEST_ARGS --junitxml='$OUT/tests.xml'" ;;
    sweep)
      bench sweep 600 $BENCH_ARGS ;;
    build-start)
      # The extension builds on the CPUs in the background while GPU stages that time nothing
      # (grid) run; build-wait joins it. Its log is build.log, its outcome the log's last line.
      (TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-12} timeout 300 $PYTHON setup.py build_ext --inplace \
        > "$OUT/build.log" 2>&1; echo "build exit $?" >> "$OUT/build.log") &
      BUILD_PID=$!
      note "build-start: building fastrnn._C in the background (build.log)" ;;
    build-wait)
      wait "${BUILD_PID:-}" 2>/dev/null
      note "build-wait: after ${SECONDS}s | $(tail -n 1 "$OUT/build.log" 2>/dev/null)"
      tail -n 15 "$OUT/build.log" 2>/dev/null ;;
    step-latency)
      stage step-latency 120 "$PYTHON -m benchmarks.step_latency --device cuda --repeats 5 --out '$OUT/step_latency_cuda.md'" ;;
    demo)
      stage demo "${DEMO_LIMIT_S:-240}" "PYTHONPATH='$PWD' $PYTHON examples/char_lm.py ${DEMO_ARGS:-}" ;;
    *) note "unknown stage $s"; status=2 ;;
  esac
done
note "overall: exit $status after ${SECONDS}s"
exit "$status"
