#!/usr/bin/env bash
# Downloads, on a machine with network, the wheels scripts/gpu_check.sh
# installs on the GPU machine (which has none): FlashRNN, the pure-Python
# peer the CUDA bench compares with (it JIT-builds its kernels with the
# torch, triton and ninja already there). Into .gpu_wheels/ (ignored by git):
# hand that folder to the GPU run along with the tree (the device tool's
# `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m pip download --no-deps -d .gpu_wheels "flashrnn==1.0.8"
ls -l .gpu_wheels
