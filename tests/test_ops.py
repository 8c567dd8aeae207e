"""The four operators as operators, on every device, over the one set of
sample inputs in tests/samples.py: parity with plain PyTorch (nn.LSTM +
packing for one layer and direction, the masked softmax of
seqcls_fast.reference), opcheck, float64 gradcheck; plus the inference call
and torch.compile."""
import pytest
import torch
from torch import nn

import seqcls_fast as sf
from helpers import (LSTM_TOL, POOL_TOL, assert_close_named, assert_float32_within_pytorchs_own,
                     assert_matches_reference, cast_floats, dtype_id, native_twin, random_lengths,
                     sample_named)
from samples import (lstm_layer_backward_recompute_samples, lstm_layer_backward_samples,
                     lstm_layer_forward_samples,
                     lstm_layer_pooled_forward_samples, masked_attention_pool_backward_samples,
                     masked_attention_pool_forward_samples)
from seqcls_fast.reference import masked_attention_pool, packed_lstm

ops = torch.ops.seqcls_fast
DTYPES = [torch.float64, torch.float32]


# ------------------------------------------------------------ the reference
def native_layer(w_ih, w_hh, b_ih, b_hh, reverse):
    """An nn.LSTM whose layer 0 (its reverse direction when `reverse`) has
    these weights, zero biases for None; the other direction goes unused."""
    native = nn.LSTM(w_ih.shape[1], w_hh.shape[1], bidirectional=reverse).to(w_ih.device,
                                                                             w_ih.dtype)
    suffix = "_l0_reverse" if reverse else "_l0"
    with torch.no_grad():
        for name, value in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih),
                            ("bias_hh", b_hh)):
            param = getattr(native, name + suffix)
            param.copy_(value) if value is not None else param.zero_()
    return native


def run_native_layer(native, x, lengths, h0, c0, reverse):
    """(output, h_n, c_n) of the direction native_layer set, packed by lengths."""
    hidden = native.hidden_size
    hx = None
    if h0 is not None or c0 is not None:
        zeros = x.new_zeros(x.shape[1], hidden)
        h0, c0 = (zeros if s is None else s for s in (h0, c0))
        hx = ((torch.stack([zeros, h0]), torch.stack([zeros, c0])) if reverse
              else (h0[None], c0[None]))
    out, (h_n, c_n) = (native(x, hx) if lengths is None
                       else packed_lstm(native, x, lengths, hx))
    direction = 1 if reverse else 0
    return (out[..., direction * hidden:(direction + 1) * hidden], h_n[direction],
            c_n[direction])


def native_layer_forward(args, dtype):
    """(output, h_n, c_n) of nn.LSTM on lstm_layer_forward's args, cast to dtype."""
    x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse = cast_floats(args, dtype)
    return run_native_layer(native_layer(w_ih, w_hh, b_ih, b_hh, reverse), x, lengths, h0, c0,
                            reverse)


def native_layer_backward(sample, dtype):
    """nn.LSTM autograd's (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh,
    grad_bias) for an lstm_layer_backward sample, everything cast to dtype."""
    grad_output, grad_h_n, grad_c_n = cast_floats(sample.args[:3], dtype)
    x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse = cast_floats(sample.forward.args, dtype)
    # None states are zeros: their gradient is the one the op returns.
    leaves = [t.clone().requires_grad_(True)
              for t in (x, h0 if h0 is not None else torch.zeros_like(grad_h_n),
                        c0 if c0 is not None else torch.zeros_like(grad_c_n))]
    native = native_layer(w_ih, w_hh, b_ih, b_hh, reverse)
    outputs = run_native_layer(native, leaves[0], lengths, *leaves[1:], reverse)
    suffix = "_l0_reverse" if reverse else "_l0"
    params = [getattr(native, name + suffix) for name in ("weight_ih", "weight_hh", "bias_ih")]
    return torch.autograd.grad(outputs, leaves + params, (grad_output, grad_h_n, grad_c_n))


LSTM_BACKWARD_NAMES = ("grad_x", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh", "grad_bias")


# ------------------------------------------------------------------ parity
# Float32 on the CPU is judged by the float32 rule (helpers.assert_matches_reference).
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lstm_layer_forward_matches_native(device, dtype):
    for sample in lstm_layer_forward_samples(device, dtype):
        with sample_named(sample.name):
            for save_activations in (True, False):
                got = ops.lstm_layer_forward(*sample.args, save_activations)[:3]
                assert_matches_reference(got, lambda d: native_layer_forward(sample.args, d),
                                         device, dtype, LSTM_TOL, ("output", "h_n", "c_n"))


def pooled_state_reference(out, lengths, pooling, query, key_weight, key_bias, state):
    """The pooling state (max, denom, sum) after a layer's whole output out
    [T, B, H] (0 past each length) in plain PyTorch: the closed form over all
    valid steps at once, continuing `state` (None: empty)."""
    steps, batch, hidden = out.shape
    if state[0] is None:
        state = (out.new_full((batch,), float("-inf")), out.new_zeros(batch),
                 out.new_zeros(batch, hidden))
    m0, l0, acc0 = state
    if pooling == "last":
        return state
    if pooling == "mean":
        return m0, l0, acc0 + out.sum(dim=0)
    keys = out if key_weight is None else torch.tanh(out @ key_weight.T + key_bias)
    scores = keys @ query  # [T, B]
    if lengths is not None:
        valid = torch.arange(steps)[:, None] < lengths.cpu()[None, :]
        scores = scores.masked_fill(~valid.to(out.device), float("-inf"))
    m = torch.maximum(m0, scores.amax(dim=0))
    weights = torch.exp(scores - m)
    keep = torch.exp(m0 - m)
    return m, l0 * keep + weights.sum(dim=0), acc0 * keep[:, None] + (weights[..., None] * out).sum(0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lstm_layer_pooled_forward_matches_native(device, dtype):
    """The fused last layer equals packed nn.LSTM followed by the pooling's
    closed form, for every pooling, fresh or continued."""
    for sample in lstm_layer_pooled_forward_samples(device, dtype):
        with sample_named(sample.name):
            got = ops.lstm_layer_pooled_forward(*sample.args)

            def reference(d):
                x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, pooling, query, key_weight, \
                    key_bias, *state = cast_floats(sample.args, d)
                out, h_n, c_n = run_native_layer(native_layer(w_ih, w_hh, b_ih, b_hh, False),
                                                 x, lengths, h0, c0, False)
                return (h_n, c_n, *pooled_state_reference(out.detach(), lengths, pooling, query,
                                                          key_weight, key_bias, state))

            assert_matches_reference(got, reference, device, dtype, LSTM_TOL,
                                     ("h_n", "c_n", "pool_max", "pool_denom", "pool_sum"))


def test_lstm_layer_pooled_forward_leaves_its_inputs_alone(device):
    sample = next(s for s in lstm_layer_pooled_forward_samples(device)
                  if s.name.endswith("attention-continued") and s.args[1] is not None)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
    ops.lstm_layer_pooled_forward(*sample.args)
    for a, b in zip(sample.args, before):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lstm_layer_backward_matches_native_autograd(device, dtype):
    for sample in lstm_layer_backward_samples(device, dtype):
        with sample_named(sample.name):
            compute_grad_x = sample.args[-1]
            got = ops.lstm_layer_backward(*sample.args)
            first = 0 if compute_grad_x else 1
            assert_matches_reference(got[first:],
                                     lambda d: native_layer_backward(sample, d)[first:],
                                     device, dtype, LSTM_TOL, LSTM_BACKWARD_NAMES[first:])
            if not compute_grad_x:  # documented: all zeros
                assert got[0].shape == sample.forward.args[0].shape and not got[0].any()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lstm_layer_backward_recompute_equals_the_saved_gates_backward(device, dtype):
    """The low-memory backward (gates rebuilt from x, the output, h0 and the
    biases) gives the saved-gates backward's gradients, which the test above
    holds against nn.LSTM. The rebuilt gates are other float32 roundings of
    the saved ones (another GEMM shape): on the CPU in float32 the two agree
    within nn.LSTM's own float32 error against float64 (the float32 rule,
    compare_to)."""
    for sample in lstm_layer_backward_recompute_samples(device, dtype):
        with sample_named(sample.name):
            got = ops.lstm_layer_backward_recompute(*sample.args)
            saved = ops.lstm_layer_backward(*sample.forward.args)
            if (torch.device(device).type, dtype) == ("cpu", torch.float32):
                first = 0 if sample.args[-1] else 1  # compute_grad_x
                assert_float32_within_pytorchs_own(
                    got[first:], native_layer_backward(sample.forward, torch.float32)[first:],
                    native_layer_backward(sample.forward, torch.float64)[first:],
                    LSTM_BACKWARD_NAMES[first:], compare_to=saved[first:])
                if first:  # no grad_x asked for: both all zeros
                    assert not got[0].any() and not saved[0].any()
            else:
                assert_close_named(got, saved, dict(rtol=1e-12, atol=1e-12)
                                   if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6),
                                   LSTM_BACKWARD_NAMES)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_pool_forward_matches_reference(device, dtype):
    for sample in masked_attention_pool_forward_samples(device, dtype):
        with sample_named(sample.name):
            got = ops.masked_attention_pool_forward(*sample.args)
            assert_matches_reference(got, lambda d: masked_attention_pool(*cast_floats(
                sample.args, d)), device, dtype, POOL_TOL, ("pooled", "weights"))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_pool_backward_matches_reference_autograd(device, dtype):
    for sample in masked_attention_pool_backward_samples(device, dtype):
        with sample_named(sample.name):
            grad_values, grad_keys, grad_query = ops.masked_attention_pool_backward(*sample.args)
            with_keys = sample.forward.args[1] is not None

            def reference(d):
                grad_pooled, grad_weights = cast_floats(sample.args[:2], d)
                values, keys, query, lengths = (
                    t.requires_grad_(True) if isinstance(t, torch.Tensor)
                    and t.is_floating_point() else t for t in cast_floats(sample.forward.args, d))
                leaves = [t for t in (values, keys, query) if t is not None]
                return torch.autograd.grad(masked_attention_pool(values, keys, query, lengths),
                                           leaves, (grad_pooled, grad_weights))

            got = [grad_values] + ([grad_keys] if with_keys else []) + [grad_query]
            names = ["grad_values"] + (["grad_keys"] if with_keys else []) + ["grad_query"]
            assert_matches_reference(got, reference, device, dtype, POOL_TOL, names)
            if not with_keys:  # documented: folded into grad_values
                assert grad_keys.numel() == 0


# ----------------------------------------------------------------- opcheck
def _detached(args):
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


def _lstm_forward_opcheck_samples(device, dtype):
    # save_activations=False is the inference call: inputs that need no grad.
    # low_memory=True on every other training sample.
    training = lstm_layer_forward_samples(device, dtype, requires_grad=True)
    return ([s._replace(args=s.args + (True,)) for s in training]
            + [s._replace(name=s.name + "-low_memory", args=s.args + (True, None, True))
               for s in training[::2]]
            + [s._replace(name=s.name + "-inference", args=_detached(s.args) + (False,))
               for s in lstm_layer_forward_samples(device, dtype)])


_OPCHECK_SAMPLES = {
    "lstm_layer_forward": _lstm_forward_opcheck_samples,
    "masked_attention_pool_forward": lambda device, dtype: masked_attention_pool_forward_samples(
        device, dtype, requires_grad=True),
    "lstm_layer_backward": lstm_layer_backward_samples,
    "lstm_layer_backward_recompute": lstm_layer_backward_recompute_samples,
    "lstm_layer_pooled_forward": lstm_layer_pooled_forward_samples,
    "masked_attention_pool_backward": masked_attention_pool_backward_samples,
}


def _opcheck_samples(operator, device, dtype):
    return _OPCHECK_SAMPLES[operator](device, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("operator", ["lstm_layer_forward", "lstm_layer_backward",
                                      "lstm_layer_backward_recompute",
                                      "lstm_layer_pooled_forward",
                                      "masked_attention_pool_forward",
                                      "masked_attention_pool_backward"])
def test_opcheck(device, dtype, operator):
    for sample in _opcheck_samples(operator, device, dtype):
        with sample_named(sample.name):
            torch.library.opcheck(getattr(ops, operator), sample.args)


# --------------------------------------------------------------- gradcheck
def _only_tensors(fn, args):
    """fn of the floating-point tensors in args (the rest fixed), and those tensors."""
    positions = [i for i, a in enumerate(args)
                 if isinstance(a, torch.Tensor) and a.is_floating_point()]

    def of_tensors(*tensors):
        full = list(args)
        for i, t in zip(positions, tensors):
            full[i] = t
        return fn(*full)

    return of_tensors, [args[i] for i in positions]


@pytest.mark.parametrize("low_memory", [False, True], ids=["fast", "low_memory"])
def test_gradcheck_lstm_layer(device, low_memory):
    for sample in lstm_layer_forward_samples(device, torch.float64, requires_grad=True):
        with sample_named(sample.name):
            fn, inputs = _only_tensors(sf.lstm_layer, sample.args + (None, low_memory))
            assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_pool(device):
    for sample in masked_attention_pool_forward_samples(device, torch.float64,
                                                        requires_grad=True):
        with sample_named(sample.name):
            fn, inputs = _only_tensors(sf.masked_attention_pool, sample.args)
            assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("memory", ["fast", "low"])
def test_gradcheck_module_with_lengths_and_states(device, memory):
    lstm = sf.LSTM(3, 4, num_layers=2, bidirectional=True, device=device, dtype=torch.float64,
                   memory=memory)
    x = torch.randn(5, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(4, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    c0 = torch.randn(4, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    lengths = torch.tensor([5, 2, 3])

    def fn(x, h0, c0):
        out, (h, c) = lstm(x, (h0, c0), lengths=lengths)
        return out, h, c

    assert torch.autograd.gradcheck(fn, (x, h0, c0))


# ---------------------------------------------------- inference and compile
def test_inference_call_refuses_backward(device):
    sample = lstm_layer_forward_samples(device, requires_grad=True)[-1]  # state, bias, lengths
    out = ops.lstm_layer_forward(*sample.args, False)[0]
    with pytest.raises(RuntimeError, match="save_activations=False"):
        out.sum().backward()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("memory", ["fast", "low"])
def test_compile_fullgraph_classifier_forward_backward(bidirectional, memory):
    torch._dynamo.reset()
    model = sf.LSTMClassifier(4, 8, 3, num_layers=2, bidirectional=bidirectional, memory=memory)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(6, 9, 4)
    lengths = random_lengths(6, 9)
    names = [n for n, _ in model.named_parameters()]

    def logits_and_grads(fn, module, inputs):
        out = fn(inputs, lengths)
        params = dict(module.named_parameters())
        return [out, *torch.autograd.grad(out.sum(), [params[n] for n in names])]

    # Eager within the float32 rule of the float64 truth, and compiled within
    # the rule's allowance of eager: bitwise is not guaranteed, as Inductor
    # may lower the float32 ops around our operators (the head, the sums of
    # the backward) to kernels of its own that round in another order.
    twin32, twin64 = native_twin(model, torch.float32), native_twin(model, torch.float64)
    torch32 = logits_and_grads(twin32, twin32, x)
    truth = logits_and_grads(twin64, twin64, x.double())
    eager = logits_and_grads(model, model, x)
    assert_float32_within_pytorchs_own(eager, torch32, truth, ["logits"] + names)
    assert_float32_within_pytorchs_own(logits_and_grads(compiled, model, x), torch32, truth,
                                       [f"compiled {n}" for n in ["logits"] + names],
                                       compare_to=eager)


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
def test_compile_fullgraph_classifier_inference_pools_online(pooling):
    """Under no_grad the top layer is lstm_layer_pooled_forward; Dynamo traces
    it through its fake kernel and gets the eager result."""
    torch._dynamo.reset()
    model = sf.LSTMClassifier(4, 8, 3, num_layers=2, pooling=pooling).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(6, 9, 4)
    lengths = random_lengths(6, 9)
    with torch.no_grad():
        assert model._pools_online(x)
        # Not bitwise by construction (Inductor may compile the head its own
        # way): compiled agrees with eager within the float32 rule's allowance.
        assert_float32_within_pytorchs_own(
            [compiled(x, lengths)], [native_twin(model, torch.float32)(x, lengths)],
            [native_twin(model, torch.float64)(x.double(), lengths)], ["logits"],
            compare_to=[model(x, lengths)])
