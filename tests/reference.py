"""Plain-PyTorch references the tests compare against."""
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def packed_lstm(native, x, lengths, hx=None):
    """nn.LSTM on a PackedSequence, unpacked back to the padded layout of x
    (zeros past each length), as the tutorials do."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=native.batch_first,
                                  enforce_sorted=False)
    out, (h_n, c_n) = native(packed, hx)
    total = x.shape[1] if native.batch_first else x.shape[0]
    out, _ = pad_packed_sequence(out, batch_first=native.batch_first, total_length=total)
    return out, (h_n, c_n)


def masked_attention_pool(values, keys, query, lengths):
    """values [B, T, D], keys [B, T, A] or None, query [A] -> (pooled, weights)."""
    keys = values if keys is None else keys
    steps = values.shape[1]
    scores = keys @ query  # [B, T]
    if lengths is not None:
        valid = torch.arange(steps, device=values.device)[None, :] < lengths.to(values.device)[:, None]
        scores = scores.masked_fill(~valid, float("-inf"))
    weights = torch.softmax(scores, dim=1)
    return (weights.unsqueeze(2) * values).sum(dim=1), weights


def random_lengths(batch, steps, generator=None, low=1):
    return torch.randint(low, steps + 1, (batch,), generator=generator)


def make_native(input_size, hidden_size, num_layers=1, bidirectional=False, batch_first=False,
                bias=True, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.LSTM(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                   bidirectional=bidirectional).to(dtype)
