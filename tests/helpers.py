"""Small test-only helpers shared by the kernel tests: the CUDA marks, the
tolerances per (device, dtype), random lengths, an nn.LSTM to compare with,
and one forward + backward that collects every output and gradient.

The plain-PyTorch references themselves live in ``seqcls_fast.reference``.
"""
import contextlib

import pytest
import torch
from torch import nn

from seqcls_fast.reference import packed_lstm

# A test (or a parameter) that needs a GPU: selected by `-m cuda`, skipped without one.
CUDA_ONLY = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# rtol/atol against the reference. CUDA float32 compares with cuDNN / cuBLAS,
# whose float32 reductions run in another order than ours.
LSTM_TOL = {
    ("cpu", torch.float64): dict(rtol=1e-9, atol=1e-9),
    ("cpu", torch.float32): dict(rtol=1e-5, atol=1e-5),
    ("cuda", torch.float64): dict(rtol=1e-9, atol=1e-10),
    ("cuda", torch.float32): dict(rtol=2e-4, atol=2e-5),
}
POOL_TOL = {
    ("cpu", torch.float64): dict(rtol=1e-12, atol=1e-12),
    ("cpu", torch.float32): dict(rtol=1e-5, atol=1e-5),
    ("cuda", torch.float64): dict(rtol=1e-9, atol=1e-10),
    ("cuda", torch.float32): dict(rtol=2e-4, atol=2e-5),
}


def tolerance(table, device, dtype):
    return table[(torch.device(device).type, dtype)]


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
    """Every output and gradient of one forward + backward, by name: nn.LSTM on
    the packed batch (packed=True; on the padded tensor when lengths is None)
    or sf.LSTM on the padded batch with lengths. The upstream gradients are
    random, drawn in float64 from `seed` and cast, so calls with the same
    shapes get the same ones whatever the dtype."""
    x = x.detach().clone().requires_grad_(True)
    hx = tuple(s.detach().clone().requires_grad_(True) for s in hx) if hx else None
    module.zero_grad(set_to_none=True)
    if not packed:
        out, (h_n, c_n) = module(x, hx, lengths=lengths)
    elif lengths is None:
        out, (h_n, c_n) = module(x, hx)
    else:
        out, (h_n, c_n) = packed_lstm(module, x, lengths, hx)
    generator = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o.device, o.dtype)
             for o in (out, h_n, c_n)]
    torch.autograd.backward((out, h_n, c_n), grads)
    result = dict(out=out, h_n=h_n, c_n=c_n, grad_x=x.grad)
    if hx:
        result.update(grad_h0=hx[0].grad, grad_c0=hx[1].grad)
    result.update({"grad_" + name: p.grad for name, p in module.named_parameters()})
    return result


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

