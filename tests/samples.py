"""Sample inputs for the four operators, in the style of pytorch/extension-cpp's
`sample_inputs(device)`: one set per operator, on any device and dtype, that
the parity, opcheck and gradcheck tests all use.

Shapes are small (gradcheck perturbs every element); the samples cover each
optional argument: lengths absent, on the CPU or (CUDA) on the device, with
ties, unsorted and a length-1 row; h0/c0; biases; reverse; keys; strided
inputs. Each backward sample is built by running the forward operator on a
forward sample, which it keeps (`forward`) for the reference.
"""
import itertools
from typing import NamedTuple, Optional

import torch

ops = torch.ops.seqcls_fast


class Sample(NamedTuple):
    name: str
    args: tuple
    forward: Optional["Sample"] = None  # backward samples: the forward call they come from


def lengths_placements(device):
    """Where lengths can be for inputs on `device`: absent, CPU, the device."""
    device = torch.device(device)
    return [None, torch.device("cpu")] + ([device] if device.type != "cpu" else [])


def lengths_name(lengths_on):
    return "no_lengths" if lengths_on is None else f"lengths_{lengths_on.type}"


# ----------------------------------------------------------------- LSTM layer
# (T, B, I, H), lengths: every option at one shape, and an odd H.
_LSTM_SHAPE, _LSTM_LENGTHS = (5, 4, 3, 4), [5, 2, 5, 1]
_LSTM_ODD_SHAPE, _LSTM_ODD_LENGTHS = (6, 3, 2, 3), [2, 6, 1]


def _lstm_variants(device):
    """(shape, lengths, reverse, with_state, with_bias, lengths_on) per sample."""
    for reverse, with_state, with_bias, lengths_on in itertools.product(
            (False, True), (False, True), (False, True), lengths_placements(device)):
        yield _LSTM_SHAPE, _LSTM_LENGTHS, reverse, with_state, with_bias, lengths_on
    for reverse in (False, True):
        yield _LSTM_ODD_SHAPE, _LSTM_ODD_LENGTHS, reverse, True, True, torch.device("cpu")


def lstm_layer_forward_samples(device, dtype=torch.float64, requires_grad=False):
    """args = (x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse): the
    operator's arguments but the last, save_activations, which callers add."""
    def randn(*shape):
        return torch.randn(*shape, dtype=dtype, device=device, requires_grad=requires_grad)

    samples = []
    for (T, B, I, H), lengths, reverse, with_state, with_bias, lengths_on in _lstm_variants(device):
        args = (randn(T, B, I),
                None if lengths_on is None else torch.tensor(lengths, device=lengths_on),
                randn(B, H) if with_state else None, randn(B, H) if with_state else None,
                randn(4 * H, I), randn(4 * H, H),
                randn(4 * H) if with_bias else None, randn(4 * H) if with_bias else None,
                reverse)
        name = "-".join((f"T{T}_B{B}_I{I}_H{H}", "reverse" if reverse else "forward",
                         "state" if with_state else "no_state",
                         "bias" if with_bias else "no_bias", lengths_name(lengths_on)))
        samples.append(Sample(name, args))
    return samples


def lstm_layer_backward_samples(device, dtype=torch.float64):
    """args = (grad_output, grad_h_n, grad_c_n, x, lengths, c0, w_ih, w_hh,
    gates, cell, h_prev, reverse, compute_grad_x), both values of the last."""
    samples = []
    for forward in lstm_layer_forward_samples(device, dtype):
        x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse = forward.args
        out, h_n, c_n, gates, cell, h_prev = ops.lstm_layer_forward(*forward.args, True)
        upstream = (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n))
        for compute_grad_x in (True, False):
            args = (*upstream, x, lengths, c0, w_ih, w_hh, gates, cell, h_prev, reverse,
                    compute_grad_x)
            name = forward.name + ("-grad_x" if compute_grad_x else "-no_grad_x")
            samples.append(Sample(name, args, forward))
    return samples


def lstm_layer_backward_recompute_samples(device, dtype=torch.float64):
    """args = (grad_output, grad_h_n, grad_c_n, x, lengths, h0, c0, w_ih, w_hh,
    b_ih, b_hh, output, cell, reverse, compute_grad_x), from a low-memory
    forward of each forward sample; `forward` holds the matching
    lstm_layer_backward sample (the same upstream gradients, saved gates)."""
    samples = []
    for backward in lstm_layer_backward_samples(device, dtype):
        x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse = backward.forward.args
        grad_output, grad_h_n, grad_c_n = backward.args[:3]
        compute_grad_x = backward.args[-1]
        out, _h_n, _c_n, _gates, cell, _h_prev = ops.lstm_layer_forward(
            *backward.forward.args, True, None, True)
        args = (grad_output, grad_h_n, grad_c_n, x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, out,
                cell, reverse, compute_grad_x)
        samples.append(Sample(backward.name, args, backward))
    return samples


# POOLED_KINDS: (pooling, additive attention keys) for the pooled forward.
POOLED_KINDS = (("attention", False), ("attention", True), ("mean", False), ("last", False))


def lstm_layer_pooled_forward_samples(device, dtype=torch.float64):
    """args = (x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, pooling, query,
    key_weight, key_bias, pool_max, pool_denom, pool_sum): every forward-
    direction LSTM sample pooled every way (inference: no gradients),
    alternately continuing a random pooling state and starting empty, so each
    pooling sees both."""
    def randn(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    samples = []
    forward = [s for s in lstm_layer_forward_samples(device, dtype) if not s.args[8]]
    for i, fwd in enumerate(forward):
        x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, _reverse = fwd.args
        B, H = x.shape[1], w_hh.shape[1]
        for k, (pooling, additive) in enumerate(POOLED_KINDS):
            A = 2 if additive else H
            continued = (i + k) % 2 == 1
            state = ((randn(B), randn(B).abs() + 0.5, randn(B, H)) if continued
                     else (None, None, None))
            args = (x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, pooling,
                    randn(A) if pooling == "attention" else None,
                    randn(A, H) if additive else None, randn(A) if additive else None, *state)
            name = "-".join((fwd.name.replace("-forward", ""), pooling + ("_additive" if additive else ""),
                             "continued" if continued else "fresh"))
            samples.append(Sample(name, args))
    return samples


# ------------------------------------------------- masked attention pooling
_POOL_SHAPE, _POOL_LENGTHS = (3, 6, 5, 4), [6, 1, 4]  # (B, T, D, A)


def masked_attention_pool_forward_samples(device, dtype=torch.float64, requires_grad=False):
    """args = (values, keys, query, lengths)."""
    B, T, D, A = _POOL_SHAPE

    def leaf(tensor):
        return tensor.requires_grad_(requires_grad)

    samples = []
    for with_keys, strided, lengths_on in itertools.product(
            (False, True), (False, True), lengths_placements(device)):
        factory = dict(dtype=dtype, device=device)
        if strided:  # values [B, T, D] as a transposed view, keys as a slice
            values = leaf(torch.randn(T, B, D, **factory).transpose(0, 1))
            keys = leaf(torch.randn(B, T, A + 3, **factory)[..., :A]) if with_keys else None
        else:
            values = leaf(torch.randn(B, T, D, **factory))
            keys = leaf(torch.randn(B, T, A, **factory)) if with_keys else None
        query = leaf(torch.randn(A if with_keys else D, **factory))
        lengths = None if lengths_on is None else torch.tensor(_POOL_LENGTHS, device=lengths_on)
        name = "-".join((f"B{B}_T{T}_D{D}", "keys" if with_keys else "no_keys",
                         "strided" if strided else "contiguous", lengths_name(lengths_on)))
        samples.append(Sample(name, (values, keys, query, lengths)))
    return samples


def masked_attention_pool_backward_samples(device, dtype=torch.float64):
    """args = (grad_pooled, grad_weights, values, keys, query, lengths, weights)."""
    samples = []
    for forward in masked_attention_pool_forward_samples(device, dtype):
        values, keys, query, lengths = forward.args
        pooled, weights = ops.masked_attention_pool_forward(*forward.args)
        args = (torch.randn_like(pooled), torch.randn_like(weights), values, keys, query,
                lengths, weights)
        samples.append(Sample(forward.name, args, forward))
    return samples
