"""The CUDA kernels under the sanitizers, and proof that each checker can fail.

tests/cuda_emu/kernel_checks.cpp launches every __global__ kernel of
csrc/cuda/ on the CPU emulator over exact-size arrays and checks the results
against a double-precision reference. Here it is built with ASan + UBSan and
with TSan and must pass ("N passed, 0 failed", no sanitizer report), ASan +
UBSan in every block order. Then copies of csrc/ with one planted bug each (a mutation of the
real kernel source, applied at test time so it follows the kernels as they
change) must make their checker fail: an off-by-one index (ASan), an index
past an inner array dimension that stays inside the array (UBSan), a deleted
__syncthreads (TSan), a __syncthreads inside a branch (the emulator's barrier
check), a shuffle by half a warp (the deadlock check), lengths read from the
wrong row (the value checks).

Needs a C++17 compiler with the sanitizer runtimes (g++ or clang++; the one
that builds the extension). No GPU, no torch.
"""
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.cuda_emu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
DRIVER = os.path.join(ROOT, "tests", "cuda_emu", "kernel_checks.cpp")
CXX = os.environ.get("CXX", "c++")

SANITIZERS = {
    "plain": [],
    "asan_ubsan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "tsan": ["-fsanitize=thread"],
}
BLOCK_ORDERS = ["forward", "reverse", "shuffled:7"]


def _build(csrc, sanitizer, out_dir):
    """The driver built against the kernels under `csrc`: its path."""
    exe = os.path.join(out_dir, f"kernel_checks_{sanitizer}")
    # -O0: a quarter of -O1's build time under ASan + UBSan, and exact lines in reports.
    cmd = [CXX, "-std=c++17", "-O0", "-g", "-fno-omit-frame-pointer", "-pthread",
           "-DSEQCLS_CUDA_EMULATED", "-I", csrc, *SANITIZERS[sanitizer], DRIVER,
           os.path.join(csrc, "cuda_emu", "emulator.cpp"), "-o", exe]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-4000:]}"
    return exe


def _run(exe, block_order="forward"):
    env = dict(os.environ, SEQCLS_CUDA_EMU_BLOCK_ORDER=block_order,
               # a deadlock is the emulator's to report, long before this
               SEQCLS_CUDA_EMU_WATCHDOG_S="120")
    return subprocess.run([exe], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def real_builds(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("kernel_checks"))
    return {name: _build(CSRC, name, out) for name in ("asan_ubsan", "tsan")}


# TSan judges the happens-before order of accesses, which the block order does
# not change: one order (5 s a run); ASan and UBSan see different addresses in each.
@pytest.mark.parametrize("sanitizer,block_order",
                         [("asan_ubsan", order) for order in BLOCK_ORDERS] + [("tsan", "shuffled:7")])
def test_real_kernels_pass_under_the_sanitizers(real_builds, sanitizer, block_order):
    result = _run(real_builds[sanitizer], block_order)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and summary.endswith(" passed, 0 failed"), (
        f"{summary}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    assert int(summary.split()[0]) >= 90  # every case ran
    assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr


# (name, file under csrc/cuda/, text of the real kernel, planted bug,
#  build, what the failing run must say)
MUTATIONS = [
    ("off_by_one_index", "cell_cuda.cuh",
     "if (idx >= static_cast<int32_t>(p.rows) * H) return;",
     "if (idx > static_cast<int32_t>(p.rows) * H) return;",
     "asan_ubsan", "ERROR: AddressSanitizer: heap-buffer-overflow"),
    ("inner_dimension_overflow", "attention_pool_cuda_kernels.cuh",
     "for (int w = 1; w < kPoolWarps; ++w) sum += tile[w][lane];",
     "for (int w = 1; w < kPoolWarps; ++w) sum += tile[w][lane + 1];",
     "asan_ubsan", "runtime error: index 32 out of bounds"),
    ("deleted_syncthreads", "attention_pool_cuda_kernels.cuh",
     "tile[warp][lane] = acc;\n    __syncthreads();",
     "tile[warp][lane] = acc;",
     "tsan", "WARNING: ThreadSanitizer: data race"),
    ("syncthreads_in_a_branch", "attention_pool_cuda_kernels.cuh",
     "if (lane == 0) shared[warp] = v;\n  __syncthreads();",
     "if (lane == 0) {\n    shared[warp] = v;\n    __syncthreads();\n  }",
     "plain", "divergent __syncthreads"),
    ("half_warp_shuffle", "cell_cuda.cuh",
     "for (int offset = 16; offset > 0; offset /= 2) dot +=",
     "if (threadIdx.x % 32 < 16) for (int offset = 16; offset > 0; offset /= 2) dot +=",
     "plain", "emulator: deadlock: threads 0-15: a warp shuffle at cell_cuda.cuh"),
    ("lengths_from_the_wrong_row", "attention_pool_cuda_kernels.cuh",
     "return lengths != nullptr ? lengths[b] : steps;",
     "return lengths != nullptr ? lengths[(b + 1) % gridDim.x] : steps;",
     "plain", "FAIL attention forward"),
]


@pytest.mark.parametrize("name,file,real,bug,sanitizer,report", MUTATIONS,
                         ids=[m[0] for m in MUTATIONS])
def test_a_planted_bug_fails_its_checker(tmp_path, name, file, real, bug, sanitizer, report):
    copy = tmp_path / "csrc"
    shutil.copytree(CSRC, copy, ignore=shutil.ignore_patterns("cpu"))
    path = copy / "cuda" / file
    source = path.read_text()
    assert real in source, f"the kernel no longer contains {real!r}: update this mutation"
    path.write_text(source.replace(real, bug, 1))
    result = _run(_build(str(copy), sanitizer, str(tmp_path)))
    assert result.returncode != 0, f"{name} went unnoticed:\n{result.stdout[-2000:]}"
    assert report in result.stdout + result.stderr, (
        f"{name}: expected {report!r}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
