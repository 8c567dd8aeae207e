"""The bench cases as a pytest-benchmark suite, one group per case and mode so
the methods sit side by side:

    pytest benchmarks/ --benchmark-only

Reuses seqcls_fast.apps.bench: the same cases (DEFAULT_SWEEP, plus the full-length
case on CUDA), methods, weights, inputs and agreement check. A method that
disagrees with ours fails instead of being timed (padded nn.LSTM on a
bidirectional case is expected to disagree and is timed anyway).
"""
import itertools

import pytest
import torch

from seqcls_fast.apps import bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.float32
CASES = bench.DEFAULT_SWEEP + (bench.CUDA_EXTRA_CASES if DEVICE.type == "cuda" else ())
# Packed nn.LSTM training takes seconds per step on a CPU: few rounds there.
ROUNDS = {"inference": 10, "train": 3 if DEVICE.type == "cpu" else 10}


def case_id(case):
    direction = "bi" if case.bidirectional else "uni"
    return f"T{case.seq_len}-{direction}-{case.lengths}"


@pytest.fixture(scope="module", params=CASES, ids=case_id)
def case(request):
    return request.param


@pytest.fixture(scope="module")
def prepared(case):
    """Per case: the built methods and the rotated batches."""
    reference = bench.Reference(case, DTYPE, DEVICE)
    batches = [bench.make_batch(case, DTYPE, DEVICE, seed)
               for seed in range(bench.ROTATED_BATCHES)]
    return bench.build_methods(reference, case), batches


def checked_model(prepared, name, mode):
    methods, batches = prepared
    model = methods[name]
    unavailable = bench.METHODS[name].unavailable_in(mode)
    if unavailable is not None:
        pytest.skip(f"{name}: {unavailable}")
    if isinstance(model, bench.Unavailable):
        pytest.skip(str(model))
    ours = methods[bench.REFERENCE_METHOD]
    for each in (ours, model):
        bench.set_mode(each, mode)
    our_logits = bench.run_step(ours, batches[0], mode)
    logits = bench.run_step(model, batches[0], mode)
    errors = bench.compare((logits, model), (our_logits, ours), mode)
    worst = max(errors.values())
    if worst > bench.TOLERANCES[DTYPE] and not model.known_wrong:
        pytest.fail(f"{name} disagrees with ours: {errors}")
    return model, batches


@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("name", list(bench.METHODS))
def test_method(benchmark, case, prepared, name, mode):
    model, batches = checked_model(prepared, name, mode)
    rotation = itertools.cycle(batches)

    def step():
        bench.run_step(model, next(rotation), mode)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    benchmark.group = f"{case.label()}, {mode}"
    benchmark.extra_info["known_wrong"] = model.known_wrong
    benchmark.pedantic(step, rounds=ROUNDS[mode], iterations=1, warmup_rounds=1)
