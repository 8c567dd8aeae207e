"""The LSTM operators' CPU results are bitwise what main computed before the
driver's refactor (issue 27), per kernel path, float32 and float64: see
tests/golden/lstm_golden.py for what is recorded and how the libraries below
us are held to reproducible bits. Each path runs in its own process (the
environment fixes MKL's, ATen's and our code paths at load). A path this CPU
lacks (AVX-512 on an AVX2 CPU) is skipped, said so; test_cpu_recurrence checks
that the library's choice of path matches the CPU."""
import os
import subprocess
import sys

import pytest

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "lstm_golden.py")
sys.path.insert(0, os.path.dirname(GOLDEN))
from lstm_golden import ENV, SKIPPED  # noqa: E402


@pytest.mark.parametrize("path", ["avx512", "avx2", "baseline"])
def test_lstm_results_are_bitwise_the_recorded_ones(path):
    env = dict(os.environ, **ENV, SEQCLS_FAST_CPU_ISA=path)
    env.pop("SEQCLS_FAST_CPU_RECURRENCE", None)
    result = subprocess.run([sys.executable, GOLDEN, "check"], capture_output=True, text=True,
                            env=env, timeout=600)
    if result.returncode == SKIPPED:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
