"""The CUDA kernels: parity with nn.LSTM + packing (cuDNN) and with plain-PyTorch
pooling, float64 gradcheck, the half/bfloat16 error bound, edge shapes,
lengths on either device, autocast, determinism. Skipped without a GPU."""
import copy

import pytest
import torch
from torch import nn

import seqcls_fast as sf
from reference import make_native, masked_attention_pool, packed_lstm, random_lengths

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ops = torch.ops.seqcls_fast
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_matmuls():
    """TF32 off for cuBLAS and cuDNN, so float32 means float32 on both sides."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}

# (T, B, I, H, num_layers, bidirectional)
SHAPES = [
    (7, 5, 6, 9, 1, False),   # odd H
    (1, 1, 3, 4, 1, False),   # T = 1, B = 1
    (6, 4, 5, 5, 3, True),    # 3 layers, bidirectional
    (9, 6, 4, 8, 2, True),
]


def _upstream_grads(T, B, H, layers, bidirectional, device=CUDA):
    """Random gradients for (output, h_n, c_n), in float64 (cast per use)."""
    directions = 2 if bidirectional else 1
    return [torch.randn(T, B, directions * H, dtype=torch.float64, device=device),
            torch.randn(layers * directions, B, H, dtype=torch.float64, device=device),
            torch.randn(layers * directions, B, H, dtype=torch.float64, device=device)]


def _forward_backward(module, x, lengths, hx, grads, packed):
    """Outputs and every gradient of one forward + backward: nn.LSTM on the
    packed batch (packed=True) or sf.LSTM on the padded batch with lengths."""
    x = x.detach().clone().requires_grad_(True)
    hx = tuple(s.detach().clone().requires_grad_(True) for s in hx) if hx else None
    module.zero_grad(set_to_none=True)
    if packed:
        out, (h_n, c_n) = packed_lstm(module, x, lengths, hx)
    else:
        out, (h_n, c_n) = module(x, hx, lengths=lengths)
    torch.autograd.backward((out, h_n, c_n), [g.to(out.dtype) for g in grads])
    result = dict(out=out, h_n=h_n, c_n=c_n, grad_x=x.grad)
    if hx:
        result.update(grad_h0=hx[0].grad, grad_c0=hx[1].grad)
    result.update({"grad_" + name: p.grad for name, p in module.named_parameters()})
    return result


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lengths_on", ["cpu", "cuda"])
@pytest.mark.parametrize("with_hx", [False, True])
def test_lstm_matches_packed_cudnn(dtype, shape, lengths_on, with_hx):
    T, B, I, H, layers, bidir = shape
    native = make_native(I, H, layers, bidir, dtype=dtype).to(CUDA)
    ours = sf.LSTM.from_native(native)
    x = torch.randn(T, B, I, dtype=dtype, device=CUDA)
    lengths = random_lengths(B, T)
    lengths[0] = T  # pad_packed_sequence keeps T only if some row is full
    lengths = lengths.to(lengths_on)
    hx = None
    if with_hx:
        shape_hx = (layers * (2 if bidir else 1), B, H)
        hx = (torch.randn(shape_hx, dtype=dtype, device=CUDA),
              torch.randn(shape_hx, dtype=dtype, device=CUDA))
    grads = _upstream_grads(T, B, H, layers, bidir)
    ref = _forward_backward(native, x, lengths, hx, grads, packed=True)
    got = _forward_backward(ours, x, lengths, hx, grads, packed=False)
    assert ref.keys() == got.keys()
    for name in ref:
        assert got[name].dtype == dtype and got[name].device.type == CUDA.type, name
        torch.testing.assert_close(got[name], ref[name], **TOL[dtype], msg=name)


@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_full_lengths_and_no_lengths_match_padded_cudnn(batch_first):
    native = make_native(4, 6, 2, True, batch_first=batch_first).to(CUDA)
    ours = sf.LSTM.from_native(native)
    # batch_first: sf.LSTM hands the op a transposed (strided) view of x.
    x = torch.randn(*((3, 5, 4) if batch_first else (5, 3, 4)), dtype=torch.float64, device=CUDA)
    out_n, (h_n, c_n) = native(x)
    for lengths in (None, torch.full((3,), 5, device=CUDA)):
        out_o, (h_o, c_o) = ours(x, lengths=lengths)
        for a, b in ((out_o, out_n), (h_o, h_n), (c_o, c_n)):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_lstm_empty_batch():
    ours = sf.LSTM(3, 5, num_layers=2, bidirectional=True, device=CUDA, dtype=torch.float64)
    x = torch.randn(4, 0, 3, dtype=torch.float64, device=CUDA, requires_grad=True)
    for lengths in (None, torch.zeros(0, dtype=torch.long, device=CUDA)):
        out, (h_n, c_n) = ours(x, lengths=lengths)
        assert out.shape == (4, 0, 10) and h_n.shape == c_n.shape == (4, 0, 5)
        (out.sum() + h_n.sum() + c_n.sum()).backward()
        assert x.grad.shape == x.shape
        for p in ours.parameters():
            assert p.grad is not None and not p.grad.any()
        ours.zero_grad()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("lengths_on", [None, "cpu", "cuda"])
def test_lstm_op_gradcheck(reverse, with_state, lengths_on):
    T, B, I, H = 5, 4, 3, 3
    g = lambda *s: torch.randn(*s, dtype=torch.float64, device=CUDA,  # noqa: E731
                               requires_grad=True)
    lengths = random_lengths(B, T).to(lengths_on) if lengths_on else None
    h0, c0 = (g(B, H), g(B, H)) if with_state else (None, None)
    inputs = (g(T, B, I), h0, c0, g(4 * H, I), g(4 * H, H), g(4 * H), g(4 * H))

    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        return sf.lstm_layer(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("with_keys", [False, True])
@pytest.mark.parametrize("lengths_on", [None, "cpu", "cuda"])
def test_pool_gradcheck(with_keys, lengths_on):
    B, T, D, A = 3, 6, 5, 4
    g = lambda *s: torch.randn(*s, dtype=torch.float64, device=CUDA,  # noqa: E731
                               requires_grad=True)
    lengths = random_lengths(B, T).to(lengths_on) if lengths_on else None
    keys = g(B, T, A) if with_keys else None
    inputs = (g(B, T, D), keys, g(A if with_keys else D))
    fn = lambda v, k, q: sf.masked_attention_pool(v, k, q, lengths)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_keys", [False, True])
@pytest.mark.parametrize("lengths_on", [None, "cpu", "cuda"])
@pytest.mark.parametrize("shape", [(4, 9, 7, 3), (1, 1, 1, 1), (3, 300, 70, 40)])
def test_pool_matches_reference(dtype, with_keys, lengths_on, shape):
    B, T, D, A = shape
    # Strided inputs: values [B, T, D] as a transposed view.
    values = torch.randn(T, B, D, dtype=dtype, device=CUDA).transpose(0, 1).requires_grad_(True)
    keys = (torch.randn(B, T, A + 3, dtype=dtype, device=CUDA)[..., :A].requires_grad_(True)
            if with_keys else None)
    query = torch.randn(A if with_keys else D, dtype=dtype, device=CUDA, requires_grad=True)
    lengths = random_lengths(B, T).to(lengths_on) if lengths_on else None
    pooled, weights = sf.masked_attention_pool(values, keys, query, lengths)
    ref_pooled, ref_weights = masked_attention_pool(values, keys, query, lengths)
    tol = TOL[dtype]
    torch.testing.assert_close(pooled, ref_pooled, **tol)
    torch.testing.assert_close(weights, ref_weights, **tol)
    gp, gw = torch.randn_like(pooled), torch.randn_like(weights)
    leaves = [t for t in (values, keys, query) if t is not None]
    got = torch.autograd.grad((pooled, weights), leaves, (gp, gw))
    ref = torch.autograd.grad((ref_pooled, ref_weights), leaves, (gp, gw))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **tol)


def test_pool_empty_batch():
    values = torch.randn(0, 4, 3, device=CUDA, requires_grad=True)
    query = torch.randn(3, device=CUDA, requires_grad=True)
    pooled, weights = sf.masked_attention_pool(values, None, query, None)
    assert pooled.shape == (0, 3) and weights.shape == (0, 4)
    pooled.sum().backward()
    assert values.grad.shape == values.shape and not query.grad.any()


def test_pool_backward_is_deterministic():
    B, T, D = 64, 200, 96
    values = torch.randn(B, T, D, device=CUDA, requires_grad=True)
    query = torch.randn(D, device=CUDA, requires_grad=True)
    lengths = random_lengths(B, T).to(CUDA)
    runs = []
    for _ in range(3):
        pooled, weights = sf.masked_attention_pool(values, None, query, lengths)
        runs.append(torch.autograd.grad(pooled.square().sum() + weights.sum(), (values, query)))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


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
    grads = _upstream_grads(T, B, H, layers, bidirectional)
    ref = _forward_backward(native_64, x.double(), lengths, None, grads, packed=True)
    native = _forward_backward(native_lp, x, lengths, None, grads, packed=True)
    got = _forward_backward(ours, x, lengths, None, grads, packed=False)
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
    x = torch.randn(5, 3, 4, device=CUDA)
    lstm = sf.LSTM(4, 6, device=CUDA)
    values = torch.randn(3, 5, 4, device=CUDA)
    query = torch.randn(4, device=CUDA)
    for bad in ([0, 2, 3], [1, 6, 2], [-1, 2, 2]):
        for device in ("cpu", "cuda"):
            lengths = torch.tensor(bad, device=device)
            with pytest.raises(ValueError, match="lengths"):
                lstm(x, lengths=lengths)
            with pytest.raises(ValueError, match="lengths"):
                sf.masked_attention_pool(values, None, query, lengths)


def test_mismatched_devices_are_errors():
    x = torch.randn(5, 3, 4, device=CUDA)
    w_ih, w_hh = torch.randn(24, 4), torch.randn(24, 6)
    with pytest.raises(ValueError, match="device"):
        ops.lstm_layer_forward(x, None, None, None, w_ih, w_hh, None, None, False, False)


@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_on_cuda(reverse):
    T, B, I, H = 5, 4, 3, 4
    g = lambda *s: torch.randn(*s, device=CUDA, requires_grad=True)  # noqa: E731
    args = (g(T, B, I), random_lengths(B, T).to(CUDA), g(B, H), g(B, H), g(4 * H, I),
            g(4 * H, H), g(4 * H), g(4 * H), reverse, True)
    torch.library.opcheck(ops.lstm_layer_forward, args)
    values = g(B, T, H)
    torch.library.opcheck(ops.masked_attention_pool_forward,
                          (values, None, g(H), random_lengths(B, T).to(CUDA)))
