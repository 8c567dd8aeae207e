"""What only the CUDA backend has to show: half/bfloat16 error within twice
the error of cuDNN (nn.LSTM) and of plain PyTorch in the same dtype, autocast,
lengths checked on either device, a device mismatch, a non-default stream.
Skipped without a GPU. Parity, opcheck and gradcheck on CUDA run in the
device-parametrized tests (test_lstm, test_pooling, test_classifier, test_ops).
"""
import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

import seqcls_fast as sf
from helpers import (CUDA_ONLY, LSTM_TOL, forward_backward, make_native, random_lengths,
                     tolerance)
from seqcls_fast.reference import masked_attention_pool, packed_lstm

pytestmark = CUDA_ONLY

ops = torch.ops.seqcls_fast
CUDA = torch.device("cuda")


def _rel_err(a, ref):
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_low_precision_error_within_twice_native(dtype, bidirectional):
    """Error against a float64 reference (the same rounded weights and inputs)
    at most 2x the error of nn.LSTM (cuDNN) in the same dtype, for outputs,
    final states and every gradient."""
    T, B, I, H, layers = 40, 16, 32, 64, 2
    native_lp = make_native(I, H, layers, bidirectional, dtype=torch.float32).to(CUDA, dtype)
    native_64 = copy.deepcopy(native_lp).double()
    ours = sf.LSTM.from_native(native_lp)
    x = torch.randn(T, B, I, device=CUDA).to(dtype)
    lengths = random_lengths(B, T, low=T // 4)
    lengths[0] = T
    ref = forward_backward(native_64, x.double(), lengths, None, packed=True)
    native = forward_backward(native_lp, x, lengths, None, packed=True)
    got = forward_backward(ours, x, lengths, None, packed=False)
    for name in ref:
        assert got[name].dtype == dtype, name
        ours_err, native_err = _rel_err(got[name], ref[name]), _rel_err(native[name], ref[name])
        assert ours_err <= 2 * native_err + 1e-4, (name, ours_err, native_err)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pool_low_precision_error_within_twice_native(dtype):
    B, T, D = 16, 100, 64
    values = torch.randn(B, T, D, device=CUDA).to(dtype)
    query = (torch.randn(D, device=CUDA) / D ** 0.5).to(dtype)
    lengths = random_lengths(B, T).to(CUDA)
    gp = torch.randn(B, D, device=CUDA).to(dtype)
    results = []
    for fn, dt in ((masked_attention_pool, torch.float64), (masked_attention_pool, dtype),
                   (sf.masked_attention_pool, dtype)):
        v = values.to(dt).requires_grad_(True)
        q = query.to(dt).requires_grad_(True)
        pooled, weights = fn(v, None, q, lengths)
        gv, gq = torch.autograd.grad(pooled, (v, q), gp.to(dt))
        results.append(dict(pooled=pooled, weights=weights, grad_values=gv, grad_query=gq))
    ref, native, got = results
    for name in ref:
        ours_err, native_err = _rel_err(got[name], ref[name]), _rel_err(native[name], ref[name])
        assert ours_err <= 2 * native_err + 1e-4, (name, ours_err, native_err)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lstm_and_pooling_under_autocast(dtype):
    """sf.LSTM and the pooling with float32 parameters under autocast run in the
    autocast dtype, as nn.LSTM does, and the float32 parameters get gradients."""
    T, B, I, H = 12, 5, 8, 16
    native = make_native(I, H, 2, True, dtype=torch.float32).to(CUDA)
    ours = sf.LSTM.from_native(native)
    pool = sf.MaskedAttentionPooling(2 * H, attn_dim=8, device=CUDA)
    x = torch.randn(T, B, I, device=CUDA)
    lengths = random_lengths(B, T)
    lengths[0] = T
    out_ref, (h_ref, _) = packed_lstm(native, x, lengths)  # float32 reference
    with torch.autocast("cuda", dtype=dtype):
        out, (h_n, c_n) = ours(x, lengths=lengths.to(CUDA))
        pooled, weights = pool(out.transpose(0, 1), lengths)
    assert out.dtype == h_n.dtype == c_n.dtype == dtype  # as nn.LSTM under autocast
    assert pooled.dtype == weights.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    torch.testing.assert_close(out.float(), out_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(h_n.float(), h_ref, rtol=tol, atol=tol)
    (pooled.float().square().sum() + h_n.float().sum()).backward()
    for p in list(ours.parameters()) + list(pool.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32 and p.grad.isfinite().all()


def test_classifier_trains_under_autocast():
    model = sf.LSTMClassifier(6, 12, 3, num_layers=2, bidirectional=True, device=CUDA)
    x = torch.randn(7, 10, 6, device=CUDA)
    lengths = random_lengths(7, 10).to(CUDA)
    target = torch.randint(0, 3, (7,), device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x, lengths)
        loss = nn.functional.cross_entropy(logits, target)
    loss.backward()
    for p in model.parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.isfinite().all()


def test_lengths_values_checked_on_either_device():
    """CPU lengths are checked on the host: a ValueError at once. GPU lengths
    are checked on the GPU with no synchronization (csrc/length_plan.h): a
    device-side assertion that surfaces at the next synchronization, which
    leaves the process's CUDA context unusable, so each runs in a child
    process."""
    x = torch.randn(5, 3, 4, device=CUDA)
    lstm = sf.LSTM(4, 6, device=CUDA)
    values = torch.randn(3, 5, 4, device=CUDA)
    query = torch.randn(4, device=CUDA)
    for bad in ([0, 2, 3], [1, 6, 2], [-1, 2, 2]):
        lengths = torch.tensor(bad)
        with pytest.raises(ValueError, match="lengths"):
            lstm(x, lengths=lengths)
        with pytest.raises(ValueError, match="lengths"):
            sf.masked_attention_pool(values, None, query, lengths)
    for call in ("sf.LSTM(4, 6, device='cuda')(x, lengths=lengths)",
                 "sf.masked_attention_pool(x.transpose(0, 1), None, torch.randn(4, device='cuda'), "
                 "lengths)"):
        script = ("import torch, seqcls_fast as sf\n"
                  "x = torch.randn(5, 3, 4, device='cuda')\n"
                  "lengths = torch.tensor([1, 6, 2], device='cuda')\n"
                  "try:\n"
                  f"    {call}\n"
                  "    torch.cuda.synchronize()\n"
                  "except RuntimeError as e:\n"
                  "    print('raised:', e, flush=True)\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=300)
        assert "raised:" in done.stdout and "assert" in done.stdout.lower(), (call, done.stdout,
                                                                            done.stderr)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_step_with_gpu_lengths_never_synchronizes(cell):
    """Lengths made on the GPU (from a padding mask, as a model computes them):
    a classifier's training step (bidirectional, 2 layers, attention pooling,
    forward and backward) runs with no host synchronization at all, under
    torch.cuda.set_sync_debug_mode("error"), which raises on any; and gives
    the step the same lengths on the CPU give."""
    torch.manual_seed(0)
    model = sf.LSTMClassifier(5, 32, 3, num_layers=2, bidirectional=True, cell=cell).to(CUDA)
    x = torch.randn(6, 9, 5, device=CUDA)
    mask = torch.arange(9, device=CUDA) < torch.tensor([9, 2, 5, 1, 9, 7], device=CUDA)[:, None]
    labels = torch.tensor([0, 1, 2, 1, 0, 2], device=CUDA)
    model(x, mask.sum(1))  # warm-up: cuBLAS handles, cached device limits
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        lengths = mask.sum(1)  # on the GPU
        loss = nn.functional.cross_entropy(model(x, lengths), labels)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    nn.functional.cross_entropy(model(x, mask.sum(1).cpu()), labels).backward()
    for got, want in zip(grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, **LSTM_TOL[("cuda", torch.float32)])


def test_mismatched_devices_are_errors():
    x = torch.randn(5, 3, 4, device=CUDA)
    w_ih, w_hh = torch.randn(24, 4), torch.randn(24, 6)
    with pytest.raises(ValueError, match="device"):
        ops.lstm_layer_forward(x, None, None, None, w_ih, w_hh, None, None, False, False)


def test_lstm_and_pooling_on_a_non_default_stream():
    """Forward and backward queued on a side stream give what they give on the
    default stream (the kernels and GEMMs run on the current stream)."""
    ours = sf.LSTM.from_native(make_native(5, 33, 2, True, device=CUDA))
    pool = sf.MaskedAttentionPooling(66, attn_dim=8, device=CUDA, dtype=torch.float64)
    x = torch.randn(9, 65, 5, dtype=torch.float64, device=CUDA)
    lengths = random_lengths(65, 9).to(CUDA)

    def run():
        result = forward_backward(ours, x, lengths, None, packed=False)
        values = result["out"].detach().transpose(0, 1).requires_grad_(True)
        pooled, weights = pool(values, lengths)
        grads = torch.autograd.grad(pooled.square().sum() + weights.sum(),
                                    [values, *pool.parameters()])
        return [*result.values(), pooled, weights, *grads]

    expected = run()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = run()
    torch.cuda.current_stream().wait_stream(side)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **tolerance(LSTM_TOL, CUDA, torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_pooling_under_autocast_matches_the_unfused_path(dtype):
    """Classifier inference on CUDA pools as it runs (lstm_layer_pooled_forward,
    cast by its autocast kernel); under autocast its logits match the same
    model's training-mode path (LSTM output, then the pooling op) to the
    autocast dtype's precision."""
    model = sf.LSTMClassifier(6, 16, 3, num_layers=2, device=CUDA).eval()
    x = torch.randn(9, 11, 6, device=CUDA)
    lengths = random_lengths(9, 11).to(CUDA)
    with torch.autocast("cuda", dtype=dtype):
        with torch.no_grad():
            assert model._pools_online(x)
            fused = model(x, lengths)
        x_grad = x.clone().requires_grad_(True)  # a gradient: the unfused path
        assert not model._pools_online(x_grad)
        unfused = model(x_grad, lengths).detach()
    assert fused.dtype == unfused.dtype
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    torch.testing.assert_close(fused.float(), unfused.float(), rtol=tol, atol=tol)
