"""Small test-only helpers shared by the kernel tests: the CUDA marks, the
tolerances per (device, dtype), the float32 rule (ours as close to a float64
truth as PyTorch's own float32), random lengths, an nn.LSTM to compare with,
native twins of our modules, and one forward + backward that collects every
output and gradient.

The plain-PyTorch references themselves live in ``seqcls_fast.reference``.
"""
import contextlib
import copy

import pytest
import torch
from torch import nn

import seqcls_fast as sf
from seqcls_fast.reference import NativeLSTMClassifier, PackedGRU, PackedLSTM, packed_lstm

# A test (or a parameter) that needs a GPU: selected by `-m cuda`, skipped without one.
CUDA_ONLY = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# rtol/atol against the reference. CUDA float32 compares with cuDNN / cuBLAS,
# whose float32 reductions run in another order than ours. There is no CPU
# float32 entry: float32 on the CPU is judged by the float32 rule below
# (assert_matches_reference), not by constants fitted on one CPU (MKL and
# oneDNN sum in another order on another CPU).
LSTM_TOL = {
    ("cpu", torch.float64): dict(rtol=1e-9, atol=1e-9),
    ("cuda", torch.float64): dict(rtol=1e-9, atol=1e-10),
    ("cuda", torch.float32): dict(rtol=2e-4, atol=2e-5),
}
POOL_TOL = {
    ("cpu", torch.float64): dict(rtol=1e-12, atol=1e-12),
    ("cuda", torch.float64): dict(rtol=1e-9, atol=1e-10),
    ("cuda", torch.float32): dict(rtol=2e-4, atol=2e-5),
}

# The float32 rule's constants: see assert_float32_within_pytorchs_own.
FLOAT32_FACTOR = 4
FLOAT32_FLOOR_EPS = 16
EPS32 = torch.finfo(torch.float32).eps


def tolerance(table, device, dtype):
    return table[(torch.device(device).type, dtype)]


def assert_float32_within_pytorchs_own(got, torch32, truth, names, factor=FLOAT32_FACTOR,
                                       compare_to=None):
    """The float32 rule: for each name, ours (got) is at most `factor` times
    as far from the float64 truth as PyTorch's own float32 computation of the
    same thing (torch32), plus a floor of a few float32 roundings of the
    largest value:

        max|got - truth| <= factor * max|torch32 - truth|
                            + FLOAT32_FLOOR_EPS * EPS32 * max|truth|

    No constant fitted on one machine: the allowance is the error float32
    makes on this very computation on this CPU (its MKL / oneDNN summation
    order), measured each time.

    The constants, from ~7500 outputs and gradients of random LSTMs (the
    shapes of test_lstm and test_cpu_recurrence, 15-30 seeds) on an AMD
    Zen 4: our kernels sum in other orders (blocked, fused, per step) and err
    about as much as PyTorch, not equally. Past 64 elements ours stayed
    within 4x PyTorch's error plus 1.6 roundings (EPS32 * max|truth|); a
    tensor of a few elements (a [4, 1] weight gradient at H = 1, grad_h0 at
    B = 1) needed up to 6.9 roundings: there PyTorch's max error is one lucky
    rounding while ours carries a few from the recurrence (cancellation
    leaves |truth| small beside the terms summed). 4 and 16 leave 2x on both.
    This suite's float32 cases use at most 0.53 of the allowance there, also
    with our kernels, ATen, MKL and oneDNN held to AVX2 or to SSE4.2 (the
    variables of scripts/test_avx2.sh): other summation orders, as on other
    CPUs. Still tight: a wrong value (a missed step, a wrong gate) errs O(1)
    where float32 errs ~1e-6, and float16 or bfloat16 anywhere (eps 9.8e-4,
    7.8e-3 = 8192, 65536 float32 eps) errs hundreds of times the allowance.

    compare_to: measure got's distance to these (another float32 computation
    of ours, e.g. the default memory mode for the low-memory one) instead of
    to the truth, with the same allowance: two of our computations that round
    differently agree to within PyTorch's own float32 error.

    Where the truth is not finite (a -inf running max) got must equal it; a
    NaN in got where the truth is finite fails."""
    against = "the float64 truth" if compare_to is None else "our other result"
    compare_to = truth if compare_to is None else compare_to
    for name, g, p, t, c in zip(names, got, torch32, truth, compare_to, strict=True):
        g, p, t, c = (a.detach().to("cpu", torch.float64) for a in (g, p, t, c))
        assert g.shape == t.shape == p.shape == c.shape, (name, g.shape, p.shape, t.shape)
        finite = torch.isfinite(t)
        assert torch.equal(g[~finite], t[~finite]), f"{name}: non-finite truth not reproduced"
        g, p, t, c = g[finite], p[finite], t[finite], c[finite]
        if t.numel() == 0:
            continue
        ours = (g - c).abs().max().item()
        theirs = (p - t).abs().max().item()
        floor = FLOAT32_FLOOR_EPS * EPS32 * t.abs().max().item()
        assert ours <= factor * theirs + floor, (
            f"{name}: ours {ours:.3g} from {against}, "
            f"more than {factor} x PyTorch float32's {theirs:.3g} + {floor:.3g}")


def assert_matches_reference(got, reference, device, dtype, table, names):
    """got (one tensor per name) against `reference(d)`, PyTorch's own
    computation of the same outputs in dtype d (inputs cast to d). Float32
    on the CPU: the float32 rule, reference(float32) against the truth
    reference(float64). Otherwise (float64; float32 on CUDA, against cuDNN):
    close to reference(dtype) within table[(device, dtype)]."""
    if (torch.device(device).type, dtype) == ("cpu", torch.float32):
        assert_float32_within_pytorchs_own(got, reference(torch.float32),
                                           reference(torch.float64), names)
    else:
        assert_close_named(got, reference(dtype), tolerance(table, device, dtype), names)


def cast_floats(args, dtype):
    """args with every floating-point tensor cast to dtype (detached); the rest as is."""
    return tuple(a.detach().to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a for a in args)


def native_twin(module, dtype):
    """PyTorch's own version of `module`, with its weights cast to dtype and
    its train/eval mode: an sf.LSTM becomes a PackedLSTM (nn.LSTM packing for
    lengths=), an sf.LSTMClassifier a NativeLSTMClassifier; any other module
    is copied with each sf.LSTM / sf.GRU / sf.LSTMClassifier child replaced
    so (an sf.GRU becomes a PackedGRU)."""
    if isinstance(module, (sf.LSTM, sf.GRU)):
        packed = PackedLSTM if isinstance(module, sf.LSTM) else PackedGRU
        twin = packed(module.input_size, module.hidden_size, module.num_layers,
                      bias=module.bias, batch_first=module.batch_first,
                      dropout=module.dropout, bidirectional=module.bidirectional)
    elif isinstance(module, sf.LSTMClassifier):
        lstm, proj = module.rnn, module.pool.proj if module.pool is not None else None
        embedding = module.embedding
        twin = NativeLSTMClassifier(
            lstm.input_size, lstm.hidden_size, module.head.out_features, lstm.num_layers,
            lstm.bidirectional, module.dropout.p,
            vocab_size=embedding.num_embeddings if embedding is not None else None,
            padding_idx=embedding.padding_idx if embedding is not None else 0,
            pooling=module.pooling, attn_dim=proj.out_features if proj is not None else None,
            cell=module.cell)
    else:
        twin = copy.deepcopy(module).to(dtype)
        for name, child in module.named_children():
            setattr(twin, name, native_twin(child, dtype))
        return twin
    twin.load_state_dict(module.state_dict())
    device = next(module.parameters()).device
    return twin.to(device=device, dtype=dtype).train(module.training)


def random_lengths(batch, steps, generator=None, low=1):
    """[batch] int64 on the CPU, uniform in [low, steps]."""
    return torch.randint(low, steps + 1, (batch,), generator=generator)


def place_lengths(lengths, lengths_on):
    """lengths moved to `lengths_on`, or None when lengths_on is None (no lengths)."""
    return None if lengths_on is None else lengths.to(lengths_on)


def make_native(input_size, hidden_size, num_layers=1, bidirectional=False, batch_first=False,
                bias=True, dtype=torch.float64, seed=0, device=None):
    """An nn.LSTM with weights fixed by `seed`."""
    torch.manual_seed(seed)
    return nn.LSTM(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                   bidirectional=bidirectional).to(device=device, dtype=dtype)


def forward_backward(module, x, lengths, hx, packed, seed=7):
    """Every output and gradient of one forward + backward, by name: the
    native module (nn.LSTM, nn.GRU) on the packed batch (packed=True; on the
    padded tensor when lengths is None) or ours (sf.LSTM, sf.GRU) on the padded
    batch with lengths. ``hx``: the tuple of initial states ((h0, c0) for an
    LSTM, (h0,) for a GRU) or None. The upstream gradients are random, drawn
    in float64 from `seed` and cast, so calls with the same shapes get the
    same ones whatever the dtype."""
    x = x.detach().clone().requires_grad_(True)
    hx = tuple(s.detach().clone().requires_grad_(True) for s in hx) if hx else None
    lstm = isinstance(module, (nn.LSTM, sf.LSTM))
    hx_arg = hx if lstm or hx is None else hx[0]
    module.zero_grad(set_to_none=True)
    if not packed:
        out, state = module(x, hx_arg, lengths=lengths)
    elif lengths is None:
        out, state = module(x, hx_arg)
    else:
        out, state = packed_lstm(module, x, lengths, hx_arg)
    states = tuple(state) if lstm else (state,)
    generator = torch.Generator().manual_seed(seed)
    outputs = (out, *states)
    grads = [torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o.device, o.dtype)
             for o in outputs]
    torch.autograd.backward(outputs, grads)
    result = dict(out=out, **dict(zip(("h_n", "c_n"), states)), grad_x=x.grad)
    if hx:
        result.update(zip(("grad_h0", "grad_c0"), (s.grad for s in hx)))
    result.update({"grad_" + name: p.grad for name, p in module.named_parameters()})
    return result


def check_hidden_state_cell_matches_packed(native, dtype, steps, batch, lengths, with_hx=True,
                                           memory="fast"):
    """Our twin of ``native`` (an nn.GRU or nn.RNN in dtype: sf.GRU / sf.RNN
    from_native, training memory mode ``memory``) with ``lengths`` (None:
    none) against ``native`` on the packed batch (on the padded tensor
    without lengths): every output and gradient, on the CPU; float32 by the
    float32 rule against ``native`` in float64."""
    ours = (sf.GRU if isinstance(native, nn.GRU) else sf.RNN).from_native(native, memory=memory)
    inputs, hidden = native.input_size, native.hidden_size
    x = torch.randn((batch, steps, inputs) if native.batch_first else (steps, batch, inputs),
                    dtype=dtype)
    hx = None
    if with_hx:
        states = native.num_layers * (2 if native.bidirectional else 1)
        hx = (torch.randn(states, batch, hidden, dtype=dtype),)
    got = forward_backward(ours, x, lengths, hx, packed=False)
    for name in got:
        assert got[name].dtype == dtype, name
    assert_matches_packed(got, native, x, lengths, hx, "cpu", dtype)


def assert_matches_packed(got, native, x, lengths, hx, device, dtype):
    """got (forward_backward of our LSTM or GRU in dtype) against `native` (nn.LSTM, nn.GRU)
    on the packed batch (the padded tensor without lengths), weights, inputs
    and states cast as assert_matches_reference asks: every output and
    gradient, by name."""
    def reference(d):
        result = forward_backward(copy.deepcopy(native).to(d), x.to(d), lengths,
                                  tuple(s.to(d) for s in hx) if hx else None, packed=True)
        assert result.keys() == got.keys()
        return list(result.values())

    assert_matches_reference(list(got.values()), reference, device, dtype, LSTM_TOL, list(got))

@contextlib.contextmanager
def deterministic_with_nan_filled_buffers():
    """Inside, torch.empty (and the kernels' own at::empty) returns NaN-filled
    memory (deterministic mode with fill_uninitialized_memory): a read of an
    element nobody wrote shows."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.utils.deterministic.fill_uninitialized_memory
        yield
    finally:
        torch.use_deterministic_algorithms(was)


@contextlib.contextmanager
def sample_named(name):
    """Adds the sample's name to any failure inside (tests that loop over samples)."""
    try:
        yield
    except Exception as error:
        error.add_note(f"sample: {name}")
        raise


def dtype_id(dtype):
    """Test ids: float64 rather than dtype0."""
    return str(dtype).removeprefix("torch.")


# torch.export / ONNX export: dynamic batch and time dimensions.
def export_dims():
    from torch.export import Dim
    return Dim("batch", min=2, max=64), Dim("steps", min=2, max=512)


class LSTMOutputs(torch.nn.Module):
    """sf.LSTM (or any LSTM taking lengths=) as tensors in, a tuple of tensors
    out, as the exporters want."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, lengths):
        out, (h_n, c_n) = self.lstm(x, lengths=lengths)
        return out, h_n, c_n


def assert_close_named(got, ref, tol, names):
    """Each of got/ref (equally many, one per name) close within tol."""
    for name, a, b in zip(names, got, ref, strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")

