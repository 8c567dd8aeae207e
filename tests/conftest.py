"""Suite-wide setup: a fixed seed per test, exact float32 matmuls in CUDA
tests, and the device parametrization.

A test that takes `device` runs once per device: `cpu`, and `cuda`, which is
marked `cuda` and skipped without a GPU (so `pytest -m cuda` / `-m "not cuda"`
select the GPU / CPU halves and collection never needs a GPU). A test that
also takes `lengths_on` runs once per place its lengths can be: None (no
lengths), on the CPU, and on the GPU too when the device is CUDA.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py, tests/samples.py

from helpers import CUDA_ONLY  # noqa: E402
from samples import lengths_placements, lengths_name  # noqa: E402

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
_MARKS = {"cpu": (), "cuda": CUDA_ONLY}

DEVICES = [pytest.param(d, id=d.type, marks=_MARKS[d.type]) for d in (CPU, CUDA)]

# Every place lengths can be for inputs on each device (samples.lengths_placements).
DEVICES_AND_LENGTHS = [
    pytest.param(d, on, id=f"{d.type}-{lengths_name(on)}", marks=_MARKS[d.type])
    for d in (CPU, CUDA) for on in lengths_placements(d)]


def pytest_generate_tests(metafunc):
    if "lengths_on" in metafunc.fixturenames:
        metafunc.parametrize("device,lengths_on", DEVICES_AND_LENGTHS)
    elif "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(autouse=True)
def _exact_matmuls(request):
    """On tests marked cuda: TF32 off for cuBLAS and cuDNN, so float32 means
    float32 on both sides of a comparison."""
    if request.node.get_closest_marker("cuda") is None:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
