"""Runs on the CPU: the extension belongs to the torch in use, an extension
built against another torch is refused with a rebuild message, and setup.py
reports an impossible toolchain in one line."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import seqcls_fast
from seqcls_fast._build import (ExtensionBuildMismatch, build_record_path,
                                check_build_record, read_build_record)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, "setup.py")


def test_build_record_names_the_torch_in_use():
    record = read_build_record()
    assert record is not None, f"no build record at {build_record_path()}: rebuild with setup.py"
    assert record["torch"] == torch.__version__
    assert record["torch_cuda"] == torch.version.cuda


def test_check_build_record_refuses_another_torch_or_cuda():
    same = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    check_build_record(same)  # does not raise
    with pytest.raises(ExtensionBuildMismatch, match=r"built against torch 2\.4\.0.*rebuild"):
        check_build_record(dict(same, torch="2.4.0"))
    with pytest.raises(ImportError, match=r"\(CUDA 11\.8\).*rebuild"):
        check_build_record(dict(same, torch_cuda="11.8"))


def _env(**overrides):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEQCLS_FAST_REQUIRE_CUDA", "SEQCLS_FAST_CUDA", "CUDA_HOME")}
    env.update(overrides)
    return env


def test_import_of_an_extension_built_for_another_torch_says_rebuild(tmp_path):
    """A copy of the installed package whose record names another torch: the
    import fails with the rebuild message, before the shared object loads."""
    package = os.path.dirname(seqcls_fast.__file__)
    copy = tmp_path / "seqcls_fast"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "_build_info.json").write_text(
        '{"cuda": false, "reason": "test", "torch": "2.4.0", "torch_cuda": "12.1"}')
    result = subprocess.run([sys.executable, "-c", "import seqcls_fast"], cwd=tmp_path,
                            env=_env(PYTHONPATH=str(tmp_path)), capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "ExtensionBuildMismatch" in last, result.stderr
    assert f"built against torch 2.4.0 (CUDA 12.1), but torch {torch.__version__}" in last
    assert "pip install --no-build-isolation --no-deps -e ." in last


def _our_lines(stderr):
    """setup.py's own messages (torch and setuptools may add warnings)."""
    return [line for line in stderr.splitlines() if line.startswith("seqcls_fast")]


def _run_setup(**env):
    if not os.path.exists(SETUP):
        pytest.skip("not a source tree (no setup.py)")
    return subprocess.run([sys.executable, SETUP, "--name"], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True)


def test_setup_names_a_cuda_home_without_nvcc_in_one_line(tmp_path):
    if torch.version.cuda is None:
        pytest.skip("a CPU torch never looks for a CUDA toolkit")
    result = _run_setup(CUDA_HOME=str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"seqcls_fast: error: CUDA_HOME={tmp_path} has no bin/nvcc: point CUDA_HOME at a "
        "CUDA toolkit, or build the CPU kernels only with SEQCLS_FAST_CUDA=0"]


def test_setup_refuses_a_cpu_only_build_when_cuda_is_required():
    result = _run_setup(SEQCLS_FAST_CUDA="0", SEQCLS_FAST_REQUIRE_CUDA="1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "seqcls_fast: error: SEQCLS_FAST_REQUIRE_CUDA=1 but the CUDA kernels cannot be "
        "built: SEQCLS_FAST_CUDA=0"]


def test_setup_says_when_it_builds_cpu_only():
    result = _run_setup(SEQCLS_FAST_CUDA="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "seqcls_fast"
    assert _our_lines(result.stderr) == [
        f"seqcls_fast: building the CPU kernels only (SEQCLS_FAST_CUDA=0); "
        f"torch {torch.__version__}"]
