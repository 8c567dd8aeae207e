"""Builds seqcls_fast._C.

With a CUDA toolkit whose major version matches torch's CUDA build, the CUDA
kernels are compiled too (no GPU is needed to build); otherwise only the CPU
kernels. Environment:
  SEQCLS_FAST_CUDA=0        build the CPU extension even when CUDA is available
  TORCH_CUDA_ARCH_LIST      architectures to build (default: the visible GPU's,
                            else 9.0)
  MAX_JOBS                  parallel compile jobs (ninja)
"""
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """CUDA_HOME, or the toolkit nvcc belongs to; must be known before
    torch.utils.cpp_extension is imported, which reads it once."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for candidate in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _nvcc_major(cuda_home):
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+)\.", out)
    return int(m.group(1)) if m else None


def _want_cuda(torch):
    if os.environ.get("SEQCLS_FAST_CUDA", "1") == "0":
        return False, "SEQCLS_FAST_CUDA=0"
    if not glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        return False, "no CUDA sources"
    if torch.version.cuda is None:
        return False, "torch is a CPU build"
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        return False, "no CUDA toolkit (nvcc) found"
    major = _nvcc_major(cuda_home)
    if major != int(torch.version.cuda.split(".")[0]):
        return False, f"nvcc major {major} != torch CUDA {torch.version.cuda}"
    os.environ["CUDA_HOME"] = cuda_home
    return True, cuda_home


def _extension():
    import torch

    with_cuda, why = _want_cuda(torch)
    BUILD_INFO.update(cuda=with_cuda, reason=why, torch=torch.__version__,
                      torch_cuda=torch.version.cuda)
    from torch.utils import cpp_extension  # after CUDA_HOME is settled

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = []
    cxx_flags = ["-O3", "-fvisibility=hidden"]
    if platform.machine() in ("x86_64", "AMD64"):
        define_macros.append(("SEQCLS_WITH_AVX2", None))
    else:
        sources = [s for s in sources if not s.endswith("_avx2.cpp")]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not with_cuda:
        print(f"seqcls_fast: building the CPU extension only ({why})", file=sys.stderr)
        return cpp_extension.CppExtension(
            "seqcls_fast._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags})

    print(f"seqcls_fast: building CPU + CUDA kernels with the toolkit at {why}", file=sys.stderr)
    # torch's pip wheels carry the CUDA library headers (cublas_v2.h,
    # cusparse.h) that ATen's CUDA headers include; the toolkit may lack them.
    for site in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cu12/include"):
            path = os.path.join(site, sub)
            if os.path.isdir(path):
                include_dirs.append(path)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    define_macros.append(("SEQCLS_WITH_CUDA", None))
    # .cu: kernels (nvcc); .cpp: host-only CUDA registrations, e.g. autocast.
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    return cpp_extension.CUDAExtension(
        "seqcls_fast._C", sources, include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags,
                            "nvcc": ["-O3", "-lineinfo"]})


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension
    base = BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)

    class build_ext(base):
        """Also records what was built (CUDA or not, and why) in
        _build_info.json next to the extension; tests/test_cuda_registration.py
        reads it."""

        def build_extension(self, ext):
            super().build_extension(ext)
            self._write_build_info(ext)

        def copy_extensions_to_source(self):  # --inplace and editable installs
            super().copy_extensions_to_source()
            for ext in self.extensions:
                self._write_build_info(ext)

        def _write_build_info(self, ext):
            if os.environ.get("TORCH_CUDA_ARCH_LIST"):
                BUILD_INFO["cuda_arch_list"] = os.environ["TORCH_CUDA_ARCH_LIST"]
            path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)),
                                "_build_info.json")
            with open(path, "w") as f:
                json.dump(BUILD_INFO, f, indent=1, sort_keys=True)

    return build_ext


BUILD_INFO = {}  # filled by _extension(), written by build_ext
setup(ext_modules=[_extension()], cmdclass={"build_ext": _build_ext()})
