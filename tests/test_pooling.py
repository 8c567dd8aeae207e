"""sf.MaskedAttentionPooling and the pooling operator against a masked
softmax written in plain PyTorch."""
import pytest
import torch

import seqcls_fast as sf
from reference import masked_attention_pool, random_lengths


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("with_keys", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_operator_matches_reference(dtype, tol, with_keys, with_lengths):
    B, T, D, A = 5, 9, 6, 4
    values = torch.randn(B, T, D, dtype=dtype, requires_grad=True)
    keys = torch.randn(B, T, A, dtype=dtype, requires_grad=True) if with_keys else None
    query = torch.randn(A if with_keys else D, dtype=dtype, requires_grad=True)
    lengths = random_lengths(B, T) if with_lengths else None
    pooled, weights = sf.masked_attention_pool(values, keys, query, lengths)
    ref_pooled, ref_weights = masked_attention_pool(values, keys, query, lengths)
    torch.testing.assert_close(pooled, ref_pooled, rtol=tol, atol=tol)
    torch.testing.assert_close(weights, ref_weights, rtol=tol, atol=tol)
    gp, gw = torch.randn_like(pooled), torch.randn_like(weights)
    leaves = [values, query] + ([keys] if with_keys else [])
    ours = torch.autograd.grad((pooled * gp).sum() + (weights * gw).sum(), leaves)
    ref = torch.autograd.grad((ref_pooled * gp).sum() + (ref_weights * gw).sum(), leaves)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_weights_are_zero_at_padding_and_sum_to_one():
    values = torch.randn(3, 6, 4, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3])
    _, weights = sf.MaskedAttentionPooling(4).double()(values, lengths)
    assert weights[1, 1:].abs().sum() == 0 and weights[2, 3:].abs().sum() == 0
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=torch.float64))
    assert weights[1, 0] == 1


def test_padding_values_do_not_matter():
    pool = sf.MaskedAttentionPooling(4, attn_dim=3).double()
    values = torch.randn(2, 5, 4, dtype=torch.float64)
    lengths = torch.tensor([3, 5])
    noisy = values.clone()
    noisy[0, 3:] = 1e6
    torch.testing.assert_close(pool(values, lengths)[0], pool(noisy, lengths)[0])


def test_large_scores_are_stable():
    values = torch.randn(2, 7, 3, dtype=torch.float32) * 1e3
    query = torch.ones(3)
    pooled, weights = sf.masked_attention_pool(values, None, query, torch.tensor([7, 4]))
    assert torch.isfinite(pooled).all() and torch.isfinite(weights).all()
    ref, _ = masked_attention_pool(values.double(), None, query.double(), torch.tensor([7, 4]))
    torch.testing.assert_close(pooled.double(), ref, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("attn_dim", [None, 5])
def test_module_matches_reference_on_strided_outputs(attn_dim):
    pool = sf.MaskedAttentionPooling(6, attn_dim=attn_dim).double()
    time_major = torch.randn(8, 4, 6, dtype=torch.float64, requires_grad=True)
    outputs = time_major.transpose(0, 1)  # [B, T, D] view, as the LSTM gives it
    assert not outputs.is_contiguous()
    lengths = torch.tensor([8, 2, 5, 1])
    pooled, weights = pool(outputs, lengths)
    keys = torch.tanh(pool.proj(outputs)) if attn_dim else None
    ref_pooled, ref_weights = masked_attention_pool(outputs, keys, pool.query, lengths)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-12, atol=1e-12)
    params = [time_major, *pool.parameters()]
    ours = torch.autograd.grad(pooled.square().sum(), params)
    ref = torch.autograd.grad(ref_pooled.square().sum(), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_empty_batch():
    values = torch.randn(0, 4, 3, requires_grad=True)
    pooled, weights = sf.MaskedAttentionPooling(3)(values, torch.zeros(0, dtype=torch.long))
    assert pooled.shape == (0, 3) and weights.shape == (0, 4)
    pooled.sum().backward()
    assert values.grad.shape == values.shape


def test_deterministic():
    values = torch.randn(16, 50, 32, requires_grad=True)
    lengths = random_lengths(16, 50)
    pool = sf.MaskedAttentionPooling(32, attn_dim=8)
    grads = []
    for _ in range(2):
        pooled, _ = pool(values, lengths)
        grads.append(torch.autograd.grad(pooled.sum(), [values, pool.query]))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
