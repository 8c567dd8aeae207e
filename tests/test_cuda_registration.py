"""Runs on the CPU: a build that includes the CUDA kernels registers one for
every operator, and a build that should have included them did.

Whether the loaded extension is a CUDA build is read from the extension file
itself (a CUDAExtension links libc10_cuda; a CppExtension does not), so a
CUDA build can never pass the registration test vacuously. setup.py also
records what it built and why in _build_info.json next to the extension; a
CPU-only build is accepted when it was asked for (SEQCLS_FAST_CUDA=0) or when
setup.py's rule (torch with CUDA, CUDA sources, an nvcc of torch's CUDA major
version) cannot build CUDA here, and is a failure otherwise.
"""
import glob
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

import seqcls_fast  # noqa: F401  (loads the operators)
from seqcls_fast import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPERATORS = ("lstm_layer_forward", "lstm_layer_backward",
             "masked_attention_pool_forward", "masked_attention_pool_backward")
AUTOCAST_OPERATORS = ("lstm_layer_forward", "masked_attention_pool_forward")


def _registered_operators():
    return sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("seqcls_fast::"))


def _built_with_cuda():
    """True when the loaded _C shared object needs libc10_cuda (a dynamic
    dependency name is a NUL-terminated string in the file's .dynstr)."""
    with open(_C.__file__, "rb") as f:
        return b"\0libc10_cuda.so" in f.read()


def _setup_would_build_cuda():
    """setup.py's rule for building the CUDA kernels here, as (bool, reason)."""
    if not glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        return False, "no CUDA sources"
    if torch.version.cuda is None:
        return False, "torch is a CPU build"
    cuda_home = os.environ.get("CUDA_HOME")
    if not cuda_home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        cuda_home = "/usr/local/cuda"
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return False, "no nvcc"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False, "nvcc does not run"
    m = re.search(r"release (\d+)\.", out)
    if not m or int(m.group(1)) != int(torch.version.cuda.split(".")[0]):
        return False, f"nvcc {m.group(1) if m else '?'} != torch CUDA {torch.version.cuda}"
    return True, nvcc


def test_operator_list_is_known():
    # A new operator must be added here (and get a CUDA kernel).
    assert tuple(_registered_operators()) == tuple(sorted(OPERATORS))


def test_every_operator_has_a_cuda_kernel():
    if not _built_with_cuda():
        pytest.skip("the loaded extension is a CPU-only build")
    missing = [op for op in OPERATORS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"seqcls_fast::{op}", "CUDA")]
    assert not missing, f"operators without a CUDA kernel: {missing}"
    for op in OPERATORS:  # and every one has its CPU kernel still
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"seqcls_fast::{op}", "CPU"), op


def test_forward_operators_have_an_autocast_kernel():
    if not _built_with_cuda():
        pytest.skip("the loaded extension is a CPU-only build")
    for op in AUTOCAST_OPERATORS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"seqcls_fast::{op}",
                                                              "AutocastCUDA"), op


def _build_record():
    """What setup.py says it built: _build_info.json next to the extension."""
    path = os.path.join(os.path.dirname(_C.__file__), "_build_info.json")
    if not os.path.exists(path):
        pytest.skip(f"no build record at {path} (the extension predates it): rebuild to check")
    with open(path) as f:
        return json.load(f)


def test_build_record_matches_the_extension():
    record = _build_record()
    assert record["cuda"] == _built_with_cuda(), (record, _C.__file__)


def test_build_includes_cuda_when_the_toolkit_allows():
    """A CPU-only build where this environment can build CUDA must be a choice
    (SEQCLS_FAST_CUDA=0), never a silent fallback."""
    record = _build_record()
    if record["cuda"] or record["reason"] == "SEQCLS_FAST_CUDA=0":
        return
    expected, why = _setup_would_build_cuda()
    if not expected:
        pytest.skip(f"a CPU-only build ({record['reason']}) where CUDA cannot be built ({why})")
    pytest.fail(f"{_C.__file__} was built CPU-only ({record['reason']}), but this environment "
                f"builds the CUDA kernels with {why}: rebuild with "
                "`pip install --no-build-isolation --no-deps -e .`")
