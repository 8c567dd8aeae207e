"""Runs on the CPU: a build that includes the CUDA kernels registers one for
every operator, and a build that should have included them did.

Whether the loaded extension is a CUDA build is read from the extension file
itself (a CUDAExtension links libc10_cuda; a CppExtension does not), so a
CUDA build can never pass the registration test vacuously. setup.py also
records what it built and why in _build_info.json next to the extension. A
CPU-only build is a failure under SEQCLS_FAST_REQUIRE_CUDA=1 (CI sets it where
a toolkit is present), and otherwise accepted only when it was asked for
(SEQCLS_FAST_CUDA=0) or no toolkit / a CPU torch made it unavoidable.
"""
import os
import subprocess
import sys

import pytest
import torch

import seqcls_fast  # noqa: F401  (loads the operators)
from seqcls_fast import _C
from seqcls_fast._build import read_build_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPERATORS = ("lstm_layer_forward", "lstm_layer_backward", "lstm_layer_backward_recompute",
             "lstm_layer_pooled_forward", "gru_layer_forward", "gru_layer_backward",
             "gru_layer_backward_recompute", "gru_layer_pooled_forward", "rnn_layer_forward",
             "rnn_layer_backward", "rnn_layer_backward_recompute",
             "masked_attention_pool_forward", "masked_attention_pool_backward")
AUTOCAST_OPERATORS = ("lstm_layer_forward", "lstm_layer_pooled_forward", "gru_layer_forward",
                      "gru_layer_pooled_forward", "rnn_layer_forward",
                      "masked_attention_pool_forward")
# Host-only work, one kernel for every device.
HOST_OPERATORS = ("length_plan",)


def _registered_operators():
    return sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("seqcls_fast::"))


def _built_with_cuda():
    """True when the loaded _C shared object needs libc10_cuda (a dynamic
    dependency name is a NUL-terminated string in the file's .dynstr)."""
    with open(_C.__file__, "rb") as f:
        return b"\0libc10_cuda.so" in f.read()


def test_operator_list_is_known():
    # A new operator must be added here (and get a CUDA kernel).
    assert tuple(_registered_operators()) == tuple(sorted(OPERATORS + HOST_OPERATORS))
    for op in HOST_OPERATORS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"seqcls_fast::{op}",
                                                              "CompositeExplicitAutograd"), op


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


def test_build_includes_cuda_when_required():
    """CI sets SEQCLS_FAST_REQUIRE_CUDA=1 where a CUDA toolkit is present: a
    CPU-only extension must then fail the suite, whatever setup.py said."""
    if os.environ.get("SEQCLS_FAST_REQUIRE_CUDA", "").strip() != "1":
        pytest.skip("SEQCLS_FAST_REQUIRE_CUDA is not set")
    assert _built_with_cuda(), (
        f"{_C.__file__} is a CPU-only build but SEQCLS_FAST_REQUIRE_CUDA=1: rebuild with "
        "`pip install --no-build-isolation --no-deps -e .` where nvcc is found")


def test_build_record_matches_the_extension():
    record = read_build_record()
    assert record is not None, f"no build record next to {_C.__file__}: rebuild with setup.py"
    assert record["cuda"] == _built_with_cuda(), (record, _C.__file__)


def test_cpu_only_build_was_asked_for_or_unavoidable():
    """setup.py builds CPU-only when asked (SEQCLS_FAST_CUDA=0), for a CPU torch
    or without any toolkit; if setup.py's own rule would build the CUDA kernels
    here now, a CPU-only extension is stale."""
    record = read_build_record()
    if record is None or record["cuda"]:
        pytest.skip("not a CPU-only build with a record")
    if record["reason"] == "SEQCLS_FAST_CUDA=0":
        pytest.skip("CPU-only as asked (SEQCLS_FAST_CUDA=0)")
    setup = os.path.join(ROOT, "setup.py")
    if not os.path.exists(setup):
        pytest.skip("not a source tree (no setup.py)")
    env = {k: v for k, v in os.environ.items() if k != "SEQCLS_FAST_REQUIRE_CUDA"}
    result = subprocess.run([sys.executable, setup, "--name"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    decision = [line for line in result.stderr.splitlines() if line.startswith("seqcls_fast")]
    if any("building CPU + CUDA kernels" in line for line in decision):
        pytest.fail(f"{_C.__file__} was built CPU-only ({record['reason']}), but setup.py "
                    f"would build the CUDA kernels here now ({decision[0]}): rebuild with "
                    "`pip install --no-build-isolation --no-deps -e .`")
