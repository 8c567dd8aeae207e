"""Plain-PyTorch references: what seqcls_fast computes, written with native
parts only. The tests compare against them, the bench times them as the
baselines and `seqcls-fast train --baseline native` trains them.

- :func:`packed_lstm` / :class:`PackedLSTM`: ``nn.LSTM`` on a
  ``PackedSequence`` (``pack_padded_sequence(enforce_sorted=False)``, then
  ``pad_packed_sequence``), as the tutorials teach;
- :func:`masked_attention_pool` / :class:`MaskedAttentionPooling`: scores,
  a softmax over the valid steps only, the weighted sum;
- :class:`NativeLSTMClassifier`: ``sf.LSTMClassifier`` itself, built on the two
  modules above (same parameter names, same initialisation order, so the same
  seed gives the same weights and state_dicts are interchangeable).
"""
import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .classifier import LSTMClassifier

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def packed_lstm(native, x, lengths, hx=None):
    """``native`` (an nn.LSTM) on ``x`` packed by ``lengths``, unpacked back to
    x's padded layout (zeros past each length). Returns (out, (h_n, c_n))."""
    packed = pack_padded_sequence(x, torch.as_tensor(lengths).cpu(),
                                  batch_first=native.batch_first, enforce_sorted=False)
    out, state = native(packed, hx)
    total = x.shape[1] if native.batch_first else x.shape[0]
    out, _ = pad_packed_sequence(out, batch_first=native.batch_first, total_length=total)
    return out, state


def valid_steps_mask(lengths, steps, device):
    """[B, T] bool: True where t < lengths[b]."""
    time = torch.arange(steps, device=device)
    return time[None, :] < torch.as_tensor(lengths).to(device)[:, None]


def masked_attention_pool(values, keys, query, lengths):
    """values [B, T, D], keys [B, T, A] (None: the values), query [A] ->
    (pooled [B, D], weights [B, T]). Scores are softmaxed in float32 for
    half-precision inputs, as the kernels do."""
    keys = values if keys is None else keys
    scores = keys @ query  # [B, T]
    if scores.dtype in _LOW_PRECISION:
        scores = scores.float()
    if lengths is not None:
        valid = valid_steps_mask(lengths, values.shape[1], values.device)
        scores = scores.masked_fill(~valid, float("-inf"))
    weights = torch.softmax(scores, dim=1).to(values.dtype)
    return torch.bmm(weights.unsqueeze(1), values).squeeze(1), weights


def masked_mean_pool(values, lengths):
    """values [B, T, D] -> the mean over each row's valid steps [B, D]."""
    if lengths is None:
        return values.mean(dim=1)
    valid = valid_steps_mask(lengths, values.shape[1], values.device)
    counts = torch.as_tensor(lengths).to(device=values.device, dtype=values.dtype)
    return (values * valid.unsqueeze(2)).sum(dim=1) / counts.unsqueeze(1)


class PackedLSTM(nn.LSTM):
    """``nn.LSTM`` that takes ``lengths`` like ``sf.LSTM`` and packs for them:
    ``out, (h_n, c_n) = lstm(x, hx=None, lengths=None)``."""

    def forward(self, x, hx=None, lengths=None):
        if lengths is None:
            return super().forward(x, hx)
        return packed_lstm(self, x, lengths, hx)


class MaskedAttentionPooling(nn.Module):
    """The parameters (``query``, ``proj``) and interface of
    ``sf.MaskedAttentionPooling``, in plain PyTorch."""

    def __init__(self, hidden_size, attn_dim=None, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.hidden_size = hidden_size
        self.attn_dim = attn_dim
        self.proj = nn.Linear(hidden_size, attn_dim, **factory) if attn_dim else None
        self.query = nn.Parameter(torch.empty(attn_dim or hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self):  # the order sf.MaskedAttentionPooling uses
        nn.init.normal_(self.query, std=1.0 / math.sqrt(self.query.numel()))
        if self.proj is not None:
            self.proj.reset_parameters()

    def forward(self, outputs, lengths=None):
        keys = torch.tanh(self.proj(outputs)) if self.proj is not None else None
        return masked_attention_pool(outputs, keys, self.query, lengths)


class NativeLSTMClassifier(LSTMClassifier):
    """``sf.LSTMClassifier`` on native parts: the baseline a user would write."""
    lstm_class = PackedLSTM
    pooling_class = MaskedAttentionPooling
    plan_lengths = False
