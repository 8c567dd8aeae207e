"""Builds seqcls_fast._C: the CPU kernels always, the CUDA kernels too when the
torch in use is a CUDA build and a CUDA toolkit of the same major version is
found (no GPU is needed to build).

Environment:
  SEQCLS_FAST_CUDA=0          build the CPU kernels only, even where CUDA could build
  SEQCLS_FAST_CUDA_EMU=0      leave out the CUDA emulator (csrc/cuda_emu/: the CUDA
                              backend compiled for CPU threads, registered as
                              seqcls_fast_cuda_emu::*; the tests run it; built by
                              default, with or without a CUDA toolkit)
  SEQCLS_FAST_REQUIRE_CUDA=1  fail unless the CUDA kernels are built (CI sets it
                              where a toolkit is present, so a CPU-only build
                              cannot pass unnoticed)
  CUDA_HOME                   the toolkit (default: /usr/local/cuda, else nvcc on PATH)
  TORCH_CUDA_ARCH_LIST        architectures (default: the visible GPU's, else 9.0)
  MAX_JOBS                    parallel compile jobs (ninja)

Headers: the toolkit's own include directory comes first (-I), so nvcc reads the
CCCL and runtime headers it ships with. torch's pip wheels also install CUDA
headers (site-packages/nvidia/cuXX/include) of torch's CUDA version, which may
be newer than the toolkit's: nvcc 13.0 stops on CCCL 13.3 headers. That
directory is given as a system include (-isystem, searched after every -I), so
it only supplies the library headers the toolkit lacks (cublas_v2.h, ...).

What was built, against which torch and CUDA, is recorded in _build_info.json
next to the extension; seqcls_fast refuses to load an extension built against
another torch.
"""
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
WAY_OUT = "build the CPU kernels only with SEQCLS_FAST_CUDA=0"


def _say(message):
    print(f"seqcls_fast: {message}", file=sys.stderr, flush=True)


def _fail(message):
    """A one-line reason instead of a compiler traceback."""
    raise SystemExit(f"seqcls_fast: error: {message}")


def _flag(name):
    return os.environ.get(name, "").strip()


def _nvcc_version(nvcc):
    """(major, minor) of nvcc, or None if it does not run."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _find_toolkit():
    """(cuda_home, nvcc, source) of the toolkit to use, or (None, None, why).

    An explicit CUDA_HOME is trusted: if it has no nvcc, that is an error, not
    a reason to look elsewhere or to fall back to a CPU-only build."""
    if _flag("CUDA_HOME"):
        home = os.environ["CUDA_HOME"]
        nvcc = os.path.join(home, "bin", "nvcc")
        if not os.access(nvcc, os.X_OK):
            _fail(f"CUDA_HOME={home} has no bin/nvcc: point CUDA_HOME at a CUDA toolkit, "
                  f"or {WAY_OUT}")
        return home, nvcc, "CUDA_HOME"
    if os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
        return "/usr/local/cuda", "/usr/local/cuda/bin/nvcc", "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        nvcc = os.path.realpath(nvcc)
        return os.path.dirname(os.path.dirname(nvcc)), nvcc, "nvcc on PATH"
    return None, None, "no CUDA toolkit found (no CUDA_HOME, /usr/local/cuda or nvcc on PATH)"


def _pip_cuda_include_dirs(torch_cuda_major):
    """Header directories of torch's pip CUDA packages for torch's CUDA major."""
    found = []
    for site in sys.path:
        path = os.path.join(site, "nvidia", f"cu{torch_cuda_major}", "include")
        if os.path.isdir(path) and path not in found:
            found.append(path)
    return found


def _plan(torch):
    """Decides the build: a dict with `cuda` (bool) and `reason`, plus the
    toolkit's details when CUDA is built. Fails with one line where the user's
    request or the toolchain makes the build impossible."""
    require = _flag("SEQCLS_FAST_REQUIRE_CUDA") == "1"
    plan = {"cuda": False, "torch": torch.__version__, "torch_cuda": torch.version.cuda}

    def cpu_only(reason):
        if require:
            _fail(f"SEQCLS_FAST_REQUIRE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
        plan["reason"] = reason
        _say(f"building the CPU kernels only ({reason}); torch {torch.__version__}")
        return plan

    if _flag("SEQCLS_FAST_CUDA") == "0":
        return cpu_only("SEQCLS_FAST_CUDA=0")
    if not glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        return cpu_only("no CUDA sources")
    if torch.version.cuda is None:
        return cpu_only(f"torch {torch.__version__} is a CPU build")
    home, nvcc, source = _find_toolkit()
    if home is None:
        return cpu_only(source)
    version = _nvcc_version(nvcc)
    if version is None:
        _fail(f"{nvcc} does not run or does not print its version: fix the toolkit "
              f"(CUDA_HOME={home}), or {WAY_OUT}")
    nvcc_str = "%d.%d" % version
    torch_major, torch_minor = (int(v) for v in torch.version.cuda.split(".")[:2])
    if version[0] != torch_major:
        _fail(f"nvcc {nvcc_str} ({nvcc}) cannot build for torch {torch.__version__}, "
              f"which uses CUDA {torch.version.cuda}: the major versions differ. Install a "
              f"CUDA {torch_major}.x toolkit and set CUDA_HOME to it, install a torch built "
              f"for CUDA {version[0]}, or {WAY_OUT}")
    plan.update(cuda=True, reason=f"nvcc {nvcc_str} from {source}", cuda_home=home,
                nvcc=nvcc_str, system_includes=_pip_cuda_include_dirs(torch_major))
    if not _flag("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # no GPU to ask
    if _flag("TORCH_CUDA_ARCH_LIST"):
        plan["cuda_arch_list"] = os.environ["TORCH_CUDA_ARCH_LIST"]
    os.environ["CUDA_HOME"] = home  # read once when torch.utils.cpp_extension is imported
    minor_note = "" if version == (torch_major, torch_minor) else \
        " (minor versions differ: the toolkit's headers come first)"
    _say(f"building CPU + CUDA kernels: nvcc {nvcc_str} at {home}, torch {torch.__version__} "
         f"with CUDA {torch.version.cuda}{minor_note}, arch {plan.get('cuda_arch_list', 'auto')}")
    return plan


def _torch_uses_openmp():
    """Whether torch's intra-op threads are OpenMP's (its Linux wheels), and
    the compiler here takes -fopenmp."""
    import torch

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return False
    return platform.system() == "Linux"


def _extension(plan):
    from torch.utils import cpp_extension  # after CUDA_HOME is settled

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = []
    cxx_flags = ["-O3", "-fvisibility=hidden"]
    link_flags = []
    # at::parallel_for is inline: it only runs threads in code compiled with
    # OpenMP (else every CPU kernel here runs on one thread). The runtime is
    # torch's own libgomp, already loaded by libtorch_cpu under the same soname.
    if _torch_uses_openmp():
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    # The AVX2 and AVX-512 builds of the CPU kernels (chosen at run time).
    if platform.machine() in ("x86_64", "AMD64"):
        define_macros.append(("SEQCLS_WITH_X86_KERNELS", None))
    else:
        sources = [s for s in sources if not s.endswith(("_avx2.cpp", "_avx512.cpp"))]
    plan["cuda_emu"] = _flag("SEQCLS_FAST_CUDA_EMU") != "0"
    if plan["cuda_emu"]:
        sources += sorted(glob.glob("csrc/cuda_emu/*.cpp"))
        define_macros.append(("SEQCLS_WITH_CUDA_EMU", None))
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not plan["cuda"]:
        return cpp_extension.CppExtension(
            "seqcls_fast._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)

    system_includes = []
    for path in plan["system_includes"]:
        system_includes += ["-isystem", path]
    # .cu: kernels (nvcc); .cpp: host-only CUDA registrations, e.g. autocast.
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    return cpp_extension.CUDAExtension(
        "seqcls_fast._C", sources, include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags + system_includes,
                            "nvcc": ["-O3", "-lineinfo"] + system_includes},
        extra_link_args=link_flags)


# A CUDA source that includes what the kernels include from torch and the
# toolkit; compiled before the build so a toolkit that cannot read torch's
# headers is reported in one line, not in one traceback per object.
_PROBE = """
#include <c10/cuda/CUDAStream.h>
#include <ATen/core/Tensor.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
__global__ void seqcls_fast_probe(float* x) { x[threadIdx.x] += 1.0f; }
"""


def _probe_cuda_headers(ext, plan):
    from torch.utils import cpp_extension
    nvcc = os.path.join(plan["cuda_home"], "bin", "nvcc")
    includes = [f"-I{d}" for d in ext.include_dirs]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        with open(src, "w") as f:
            f.write(_PROBE)
        # torch's headers need C++17 (older) or C++20 (newer); nvcc 12+ has both.
        std = "-std=c++20" if int(plan["nvcc"].split(".")[0]) >= 12 else "-std=c++17"
        cmd = [nvcc, "-c", src, "-o", os.path.join(tmp, "probe.o"), std,
               *includes, *[f for f in ext.extra_compile_args["nvcc"] if f != "-lineinfo"],
               *[f for f in cpp_extension.COMMON_NVCC_FLAGS if f.startswith("-D")]]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr + result.stdout).splitlines()
        first = next((ln for ln in lines if "error" in ln), lines[0] if lines else "?")
        _fail(f"nvcc {plan['nvcc']} at {plan['cuda_home']} cannot compile against the "
              f"headers of torch {plan['torch']} (CUDA {plan['torch_cuda']}): "
              f"{first.strip()}. Use a toolkit of CUDA {plan['torch_cuda']} or newer "
              f"(CUDA_HOME), or {WAY_OUT}")


def _build_ext(plan):
    from torch.utils.cpp_extension import BuildExtension
    base = BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)

    class build_ext(base):
        """Probes the CUDA headers first; records what was built in
        _build_info.json next to the extension (seqcls_fast/_build.py reads it
        on import, tests/test_build.py checks it)."""

        def build_extension(self, ext):
            if plan["cuda"]:
                _probe_cuda_headers(ext, plan)
            super().build_extension(ext)
            self._write_build_info(ext)

        def copy_extensions_to_source(self):  # --inplace and editable installs
            super().copy_extensions_to_source()
            for ext in self.extensions:
                self._write_build_info(ext)

        def _write_build_info(self, ext):
            record = {k: plan[k] for k in ("cuda", "cuda_emu", "reason", "torch", "torch_cuda",
                                           "nvcc", "cuda_arch_list") if k in plan}
            path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)),
                                "_build_info.json")
            with open(path, "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)

    return build_ext


def main():
    try:
        import torch
    except ImportError:
        _fail("torch is not installed: run `pip install -r requirements.txt` first, then "
              "`pip install --no-build-isolation -e .` so the extension builds against it")
    plan = _plan(torch)
    setup(ext_modules=[_extension(plan)], cmdclass={"build_ext": _build_ext(plan)})


main()
