#!/usr/bin/env bash
# The kernel tests a second time on the AVX2 side, on any x86 machine: our
# kernels capped at AVX2 (SEQCLS_FAST_CPU_ISA=avx2: the AVX2 persistent
# recurrence and pointwise kernels) and ATen, MKL and oneDNN held to their
# AVX2 code paths, as on an AVX2-only CPU (not its caches or clocks). CI runs
# it after the README's test command, so both ISA paths run wherever CI does.
#
#   scripts/test_avx2.sh [PYTHON] [pytest args...]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
shift || true
export SEQCLS_FAST_CPU_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
  ONEDNN_MAX_CPU_ISA=AVX2
# Inductor's on-disk cache does not key on ATEN_CPU_CAPABILITY: kernels it
# compiled in a default-ISA run would be reused here (and give garbage).
TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)"
export TORCHINDUCTOR_CACHE_DIR
trap 'rm -rf "$TORCHINDUCTOR_CACHE_DIR"' EXIT
# Fails unless the run really takes the AVX2 paths (a typo above, or a CPU
# without AVX2, would otherwise test the default paths a second time).
"$PY" - <<'PYCHECK'
import torch
import seqcls_fast._C as C
paths = C.cpu_kernel_paths()
aten = torch.backends.cpu.get_cpu_capability()
print(f"scripts/test_avx2.sh: our kernels {paths}, ATen {aten}")
assert paths == {"isa": "avx2", "recurrence": "avx2"}, paths
assert aten == "AVX2", aten
PYCHECK
"$PY" -m pytest -q -p no:cacheprovider "$@" \
  tests/test_cpu_recurrence.py tests/test_lstm.py tests/test_ops.py tests/test_pooling.py \
  tests/test_classifier.py tests/test_streaming.py tests/test_double_backward.py \
  tests/test_gru.py tests/test_rnn.py
