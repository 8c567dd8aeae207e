"""sf.MaskedAttentionPooling and the pooling operator against the masked
softmax of seqcls_fast.reference, on every device: values, weights and every
gradient over shapes up to several CUDA blocks, strided inputs, padding,
stability and determinism."""
import pytest
import torch

import seqcls_fast as sf
from helpers import (POOL_TOL, assert_float32_within_pytorchs_own, assert_matches_reference,
                     deterministic_with_nan_filled_buffers, dtype_id, place_lengths,
                     random_lengths, tolerance)
from seqcls_fast.reference import MaskedAttentionPooling, masked_attention_pool

# (B, T, D, A)
SHAPES = [(5, 9, 6, 4), (4, 9, 7, 3), (1, 1, 1, 1), (3, 300, 70, 40)]
# B * D past one 256-thread block on CUDA. Compared directly in float64; in
# float32 the two sides' own rounding over D = 257 (PyTorch's error alone is
# ~7e-5) exceeds CUDA's float32 tolerance, so there both are judged against a
# float64 truth on every device (test_float32_error_is_within_pytorchs_own below).
MULTI_BLOCK_SHAPE = (65, 7, 257, 33)
DTYPES_AND_SHAPES = ([(torch.float64, shape) for shape in SHAPES + [MULTI_BLOCK_SHAPE]]
                     + [(torch.float32, shape) for shape in SHAPES])


@pytest.mark.parametrize("with_keys", [False, True])
@pytest.mark.parametrize("dtype,shape", DTYPES_AND_SHAPES, ids=lambda p: (
    dtype_id(p) if isinstance(p, torch.dtype) else "B{}_T{}_D{}_A{}".format(*p)))
@pytest.mark.parametrize("strided", [False, True])
def test_operator_matches_reference(device, lengths_on, dtype, shape, with_keys, strided):
    B, T, D, A = shape
    factory = dict(dtype=dtype, device=device)
    if strided:  # values [B, T, D] as a transposed view, keys as a slice
        values = torch.randn(T, B, D, **factory).transpose(0, 1).requires_grad_(True)
        keys = (torch.randn(B, T, A + 3, **factory)[..., :A].requires_grad_(True)
                if with_keys else None)
    else:
        values = torch.randn(B, T, D, **factory, requires_grad=True)
        keys = torch.randn(B, T, A, **factory, requires_grad=True) if with_keys else None
    query = torch.randn(A if with_keys else D, **factory, requires_grad=True)
    lengths = place_lengths(random_lengths(B, T), lengths_on)
    pooled, weights = sf.masked_attention_pool(values, keys, query, lengths)
    gp, gw = torch.randn_like(pooled), torch.randn_like(weights)
    leaves = [t for t in (values, keys, query) if t is not None]
    got = [pooled, weights, *torch.autograd.grad((pooled, weights), leaves, (gp, gw))]

    def reference(dtype):  # the masked softmax in plain PyTorch on the same inputs, in dtype
        cast = [t.detach().to(dtype).requires_grad_() for t in leaves]
        p, w = masked_attention_pool(cast[0], cast[1] if with_keys else None, cast[-1], lengths)
        return [p, w, *torch.autograd.grad((p, w), cast, (gp.to(dtype), gw.to(dtype)))]

    names = ["pooled", "weights", "grad_values"] + (["grad_keys"] if with_keys else []) + [
        "grad_query"]
    assert_matches_reference(got, reference, device, dtype, POOL_TOL, names)


@pytest.mark.parametrize("with_keys", [False, True])
def test_float32_error_is_within_pytorchs_own(device, with_keys):
    """At the multi-block shape in float32, on every device: every output and
    gradient of ours is within the float32 rule of the float64 truth (at most
    a few times as far as PyTorch's own float32 masked softmax)."""
    B, T, D, A = MULTI_BLOCK_SHAPE
    f64 = dict(dtype=torch.float64, device=device)
    values = torch.randn(B, T, D, **f64)
    keys = torch.randn(B, T, A, **f64) if with_keys else None
    query = torch.randn(A if with_keys else D, **f64)
    lengths = random_lengths(B, T)
    gp, gw = torch.randn(B, D, **f64), torch.randn(B, T, **f64)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (values, keys, query) if t is not None]
        k = leaves[1] if with_keys else None
        pooled, weights = fn(leaves[0], k, leaves[-1], lengths)
        grads = torch.autograd.grad((pooled, weights), leaves, (gp.to(dtype), gw.to(dtype)))
        return [t.double() for t in (pooled, weights, *grads)]

    truth = run(masked_attention_pool, torch.float64)
    ours = run(sf.masked_attention_pool, torch.float32)
    native = run(masked_attention_pool, torch.float32)
    names = ["pooled", "weights", "grad_values"] + (["grad_keys"] if with_keys else []) + [
        "grad_query"]
    assert_float32_within_pytorchs_own(ours, native, truth, names)


@pytest.mark.parametrize("attn_dim", [None, 5])
def test_module_matches_reference_on_strided_outputs(device, attn_dim):
    pool = sf.MaskedAttentionPooling(6, attn_dim=attn_dim, device=device, dtype=torch.float64)
    ref_pool = MaskedAttentionPooling(6, attn_dim=attn_dim, device=device, dtype=torch.float64)
    ref_pool.load_state_dict(pool.state_dict())
    time_major = torch.randn(8, 4, 6, dtype=torch.float64, device=device, requires_grad=True)
    outputs = time_major.transpose(0, 1)  # [B, T, D] view, as the LSTM gives it
    assert not outputs.is_contiguous()
    lengths = torch.tensor([8, 2, 5, 1])
    pooled, weights = pool(outputs, lengths)
    ref_pooled, ref_weights = ref_pool(outputs, lengths)
    tol = tolerance(POOL_TOL, device, torch.float64)
    torch.testing.assert_close(pooled, ref_pooled, **tol)
    torch.testing.assert_close(weights, ref_weights, **tol)
    ours = torch.autograd.grad(pooled.square().sum(), [time_major, *pool.parameters()])
    ref = torch.autograd.grad(ref_pooled.square().sum(), [time_major, *ref_pool.parameters()])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **tol)


def test_weights_are_zero_at_padding_and_sum_to_one(device):
    values = torch.randn(3, 6, 4, dtype=torch.float64, device=device)
    lengths = torch.tensor([6, 1, 3], device=device)
    pool = sf.MaskedAttentionPooling(4, device=device, dtype=torch.float64)
    _, weights = pool(values, lengths)
    assert weights[1, 1:].abs().sum() == 0 and weights[2, 3:].abs().sum() == 0
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=torch.float64, device=device))
    assert weights[1, 0] == 1


def test_padding_values_do_not_matter(device):
    pool = sf.MaskedAttentionPooling(4, attn_dim=3, device=device, dtype=torch.float64)
    values = torch.randn(2, 5, 4, dtype=torch.float64, device=device)
    lengths = torch.tensor([3, 5], device=device)
    noisy = values.clone()
    noisy[0, 3:] = 1e6
    torch.testing.assert_close(pool(values, lengths)[0], pool(noisy, lengths)[0])


@pytest.mark.parametrize("with_keys", [False, True])
def test_gradients_are_zero_at_padding(device, with_keys):
    """The backward writes every element of grad_values and grad_keys once,
    zeros past each length, into uninitialized memory: run with PyTorch's
    uninitialized memory NaN-filled (deterministic mode), the padding's
    gradients are exactly zero."""
    values = torch.randn(3, 7, 4, dtype=torch.float64, device=device)
    keys = torch.randn(3, 7, 2, dtype=torch.float64, device=device) if with_keys else None
    query = torch.randn(2 if with_keys else 4, dtype=torch.float64, device=device)
    lengths = torch.tensor([7, 1, 4], device=device)
    pooled, weights = sf.masked_attention_pool(values, keys, query, lengths)
    with deterministic_with_nan_filled_buffers():
        grads = torch.ops.seqcls_fast.masked_attention_pool_backward(
            torch.ones_like(pooled), torch.zeros_like(weights), values, keys, query, lengths,
            weights)
    for grad in grads[:2] if with_keys else grads[:1]:
        assert grad.isfinite().all()
        assert not grad[1, 1:].any() and not grad[2, 4:].any()
        assert grad[0].abs().sum() > 0


def test_large_scores_are_stable(device):
    values = torch.randn(2, 7, 3, dtype=torch.float32, device=device) * 1e3
    query = torch.ones(3, device=device)
    lengths = torch.tensor([7, 4], device=device)
    pooled, weights = sf.masked_attention_pool(values, None, query, lengths)
    assert torch.isfinite(pooled).all() and torch.isfinite(weights).all()
    truth = masked_attention_pool(values.double(), None, query.double(), lengths)
    if torch.device(device).type == "cuda":
        torch.testing.assert_close(pooled.double(), truth[0], rtol=1e-4, atol=1e-2)
    else:  # the float32 rule
        assert_float32_within_pytorchs_own(
            [pooled, weights], masked_attention_pool(values, None, query, lengths), truth,
            ["pooled", "weights"])


def test_empty_batch(device):
    values = torch.randn(0, 4, 3, device=device, requires_grad=True)
    pooled, weights = sf.MaskedAttentionPooling(3, device=device)(
        values, torch.zeros(0, dtype=torch.long, device=device))
    assert pooled.shape == (0, 3) and weights.shape == (0, 4)
    pooled.sum().backward()
    assert values.grad.shape == values.shape


def test_empty_batch_without_lengths(device):
    values = torch.randn(0, 4, 3, device=device, requires_grad=True)
    query = torch.randn(3, device=device, requires_grad=True)
    pooled, weights = sf.masked_attention_pool(values, None, query, None)
    assert pooled.shape == (0, 3) and weights.shape == (0, 4)
    pooled.sum().backward()
    assert values.grad.shape == values.shape and not query.grad.any()


def test_deterministic(device):
    values = torch.randn(16, 50, 32, device=device, requires_grad=True)
    lengths = random_lengths(16, 50).to(device)
    pool = sf.MaskedAttentionPooling(32, attn_dim=8, device=device)
    grads = []
    for _ in range(2):
        pooled, _ = pool(values, lengths)
        grads.append(torch.autograd.grad(pooled.sum(), [values, pool.query]))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_backward_is_deterministic(device):
    B, T, D = 64, 200, 96
    values = torch.randn(B, T, D, device=device, requires_grad=True)
    query = torch.randn(D, device=device, requires_grad=True)
    lengths = random_lengths(B, T).to(device)
    runs = []
    for _ in range(3):
        pooled, weights = sf.masked_attention_pool(values, None, query, lengths)
        runs.append(torch.autograd.grad(pooled.square().sum() + weights.sum(), (values, query)))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
