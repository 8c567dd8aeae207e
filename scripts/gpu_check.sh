#!/usr/bin/env bash
# One command for a GPU machine: build, CUDA tests, the emulator against the
# GPU on the same inputs, compute-sanitizer, benchmark. No CPU-only tests: the
# CPU suite (the emulated CUDA tests included) runs in CI without a GPU, and
# the GPU's minutes go to what needs it. Sized for a 15-minute device lease
# (machine start included): about 10 minutes on 16 cores.
#
#   scripts/gpu_check.sh [OUTDIR]      (default: $OUT, else ./out/gpu_check)
#
# Writes one log per step, env.txt, pytest JUnit XML, bench_cuda.json and
# summary.txt under OUTDIR. Every step runs even when an earlier one failed
# (except that nothing runs after a failed build); the exit status is non-zero
# if any step failed. Environment: PYTHON (default python3),
# TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 16), and STEPS: a
# space-separated subset of "build wheels registration tests_cuda emu_vs_gpu
# memcheck racecheck synccheck bench bench_persistent bench_per_step
# bench_flashrnn_shape" (default: all), to split the run across calls
# that each have a time limit (the in-place build persists between them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-$PWD/out/gpu_check}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="${PYTHON:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
[ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export CUDA_HOME=/usr/local/cuda
SANITIZER="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"

failed=()
: > "$OUTDIR/summary.txt"

# step NAME CMD...: runs CMD with its output in OUTDIR/NAME.log, records the result.
step() {
  local name=$1 start rc=0
  shift
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then
    echo "=== $name: skipped (not in STEPS)"
    return 0
  fi
  echo "=== $name: $*"
  start=$(date +%s)
  "$@" > "$OUTDIR/$name.log" 2>&1 || rc=$?
  local line="$name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $(( $(date +%s) - start ))s"
  echo "=== $line"
  echo "$line" >> "$OUTDIR/summary.txt"
  if [ $rc -ne 0 ]; then
    failed+=("$name")
    tail -n 30 "$OUTDIR/$name.log" | sed 's/^/    /'
  fi
  return 0
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --verify -q HEAD || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS CUDA_HOME=${CUDA_HOME:-}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
  "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>&1 | tail -n 2 || true
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} > "$OUTDIR/env.txt" 2>&1 || true
cat "$OUTDIR/env.txt"

step build "$PY" -m pip install --no-build-isolation --no-deps -v -e .
if [ ${#failed[@]} -ne 0 ]; then
  echo "gpu_check: the build failed; see $OUTDIR/build.log" >&2
  exit 1
fi

# Wheels brought along (no network there): scripts/gpu_wheels.sh fills
# .gpu_wheels/ on the CPU machine.
if compgen -G ".gpu_wheels/*.whl" > /dev/null; then
  step wheels "$PY" -m pip install --no-deps --no-index .gpu_wheels/*.whl
fi

step registration "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda_registration.py
step tests_cuda "$PY" -m pytest -v -rs -p no:cacheprovider -m cuda tests \
  --junitxml="$OUTDIR/pytest_cuda.xml"
# The same host code and kernels on the CPU emulator and on the GPU, same inputs.
step emu_vs_gpu "$PY" scripts/compare_emulated_cuda.py "$OUTDIR/compare_emulated_cuda.json"

# No caching allocator under the sanitizer, so out-of-bounds accesses inside a
# cached block are caught too.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
step memcheck "$SANITIZER" --tool memcheck --leak-check no --error-exitcode 1 \
  "$PY" scripts/cuda_sanitize_case.py
step racecheck "$SANITIZER" --tool racecheck --racecheck-report all --error-exitcode 1 \
  "$PY" scripts/cuda_sanitize_case.py
step synccheck "$SANITIZER" --tool synccheck --error-exitcode 1 \
  "$PY" scripts/cuda_sanitize_case.py
unset PYTORCH_NO_CUDA_MEMORY_CACHING

step bench "$PY" -m seqcls_fast bench --device cuda --json "$OUTDIR/bench_cuda.json"
# Issue 29's shapes: the persistent kernels against cuDNN padded and packed
# (B64 T512 I256 H256, lengths uniform in [T/4, T]), the per-step path on the
# same cases, and FlashRNN's shape on full-length batches (bf16 inference
# beside FlashRNN's when its wheel is installed).
step bench_persistent "$PY" -m seqcls_fast bench --device cuda --batch 64 --seq-len 512 \
  --input-size 256 --hidden-size 256 --lengths uniform --repeats 7 \
  --json "$OUTDIR/bench_persistent.json"
step bench_per_step env SEQCLS_FAST_CUDA_RECURRENCE=steps "$PY" -m seqcls_fast bench \
  --device cuda --batch 64 --seq-len 512 --input-size 256 --hidden-size 256 --lengths uniform \
  --repeats 7 --json "$OUTDIR/bench_per_step.json"
step bench_flashrnn_shape "$PY" -m seqcls_fast bench --device cuda --batch 16 --seq-len 1024 \
  --input-size 768 --hidden-size 768 --lengths full --dtype bfloat16 --mode inference \
  --repeats 7 --json "$OUTDIR/bench_flashrnn_shape.json"

echo "--- summary ($OUTDIR)"
cat "$OUTDIR/summary.txt"
if [ ${#failed[@]} -ne 0 ]; then
  echo "gpu_check: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "gpu_check: all steps passed"
