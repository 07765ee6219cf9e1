#!/usr/bin/env bash
# Everything the GPU machine is for, in one call: build the extension, run the tests
# (CUDA ones included), run the benchmarks. Logs and results go to $OUT (default ./out).
#
#   bash scripts/gpu_run.sh                       # build, test, bench
#   STAGES="build bench" bash scripts/gpu_run.sh  # a subset; "demo" runs examples/char_lm.py
#   BENCH_ARGS="--kernels lstm" TEST_ARGS="tests/ops" bash scripts/gpu_run.sh
#
# The machine has no network: nothing is installed from a registry here; without
# matplotlib the benchmarks write CSV and Markdown only. Each stage has a time limit so
# that the whole run fits in one 10-minute call; a failing stage is recorded in
# $OUT/summary.txt and the next stage still runs. The exit status is that of the first
# failing stage (0 when all pass).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
PYTHON=${PYTHON:-python}
STAGES=${STAGES:-"build test bench"}
BUILD_LIMIT_S=${BUILD_LIMIT_S:-200}
TEST_LIMIT_S=${TEST_LIMIT_S:-190}
BENCH_LIMIT_S=${BENCH_LIMIT_S:-170}
TEST_ARGS=${TEST_ARGS:-"-m 'not slow'"}
BENCH_ARGS=${BENCH_ARGS:-}
mkdir -p "$OUT/bench"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0

note() { echo "$*" | tee -a "$SUMMARY"; }

# stage NAME LIMIT_S COMMAND...: runs COMMAND under a time limit, logs to $OUT/NAME.log.
stage() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=20 "$limit" bash -c "$*" > "$OUT/$name.log" 2>&1
  local rc=$?
  note "$name: exit $rc after $((SECONDS - start))s (log: $name.log)"
  tail -n 15 "$OUT/$name.log"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
  "$PYTHON" -c "import triton; print('triton', triton.__version__)" 2>&1
  "$PYTHON" -c "import matplotlib; print('matplotlib', matplotlib.__version__)" 2>&1 | tail -n 1
  nvcc --version 2>&1 | tail -n 1
} > "$OUT/environment.txt"
cat "$OUT/environment.txt"

for s in $STAGES; do
  case $s in
    build)
      # In place, without pip: nothing to fetch, and the later stages import fastrnn from
      # this folder (python -m puts it on sys.path). build/ is kept between calls.
      stage build "$BUILD_LIMIT_S" "MAX_JOBS=\${MAX_JOBS:-16} $PYTHON setup.py build_ext --inplace" ;;
    test)
      stage test "$TEST_LIMIT_S" "$PYTHON -m pytest -q -rs $TEST_ARGS --junitxml='$OUT/tests.xml'" ;;
    bench)
      # The committed results are copied first, so $OUT/bench/results.csv is the repository's
      # file with this run's rows appended and results.md covers every device: copy the
      # folder back over benchmarks/results/ to commit them.
      cp benchmarks/results/results.csv benchmarks/results/not_measured_*.txt "$OUT/bench/" 2>/dev/null || true
      stage bench "$BENCH_LIMIT_S" "$PYTHON -m benchmarks.run --out '$OUT/bench' --time-limit-s $((BENCH_LIMIT_S - 40)) $BENCH_ARGS"
      # Rows are written as they are measured; render again in case the run was killed (a hung kernel).
      timeout 60 "$PYTHON" -m benchmarks.run --render-only --out "$OUT/bench" >> "$OUT/bench.log" 2>&1 ;;
    demo)
      stage demo "${DEMO_LIMIT_S:-240}" "PYTHONPATH='$PWD' $PYTHON examples/char_lm.py ${DEMO_ARGS:-}" ;;
    *) note "unknown stage $s"; status=2 ;;
  esac
done
note "overall: exit $status"
exit "$status"
