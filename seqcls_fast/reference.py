"""Plain-PyTorch references: what seqcls_fast computes, written with native
parts only. The tests compare against them, the bench times them as the
baselines and `seqcls-fast train --baseline native` trains them.

- :func:`packed_lstm` / :class:`PackedLSTM`: ``nn.LSTM`` (or ``nn.GRU``) on
  a ``PackedSequence`` (``pack_padded_sequence(enforce_sorted=False)``, then
  ``pad_packed_sequence``), as the tutorials teach;
- :func:`lstm_layer`, :func:`gru_layer`: one layer-direction in plain
  differentiable ops (the double backward's path);
- :func:`masked_attention_pool` / :class:`MaskedAttentionPooling`: scores,
  a softmax over the valid steps only, the weighted sum;
- :class:`NativeLSTMClassifier`: ``sf.LSTMClassifier`` built from the two
  modules above (same parameter names, same initialisation order, so the same
  seed gives the same weights and state_dicts are interchangeable).

Of seqcls_fast it imports only ``layout`` (the constructors and option lists
the modules share with these references, no computation): a reference that
reused the modules it checks would share their mistakes, and the core
(``_ops``, for the double backward) imports it, so anything more would be a
cycle.
"""
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch import nn

from .layout import MEMORY_MODES, AttentionPoolingParameters, ClassifierLayout

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def packed_lstm(native, x, lengths, hx=None):
    """``native`` (an nn.LSTM, or an nn.GRU) on ``x`` packed by ``lengths``,
    unpacked back to x's padded layout (zeros past each length). Returns (out,
    (h_n, c_n)), or (out, h_n) for a GRU."""
    packed = pack_padded_sequence(x, torch.as_tensor(lengths).cpu(),
                                  batch_first=native.batch_first, enforce_sorted=False)
    out, state = native(packed, hx)
    total = x.shape[1] if native.batch_first else x.shape[0]
    out, _ = pad_packed_sequence(out, batch_first=native.batch_first, total_length=total)
    return out, state


def _steps_in_order(x, lengths, reverse):
    """x [T, B, I] with each row's steps in the order the recurrence visits
    them (reversed within its own length when ``reverse``), the valid-step
    mask [T, B, 1], the lengths as a tensor, and the gather index that maps
    outputs back (None forward)."""
    steps, batch = x.shape[0], x.shape[1]
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.long)
    lengths = torch.as_tensor(lengths).to(device=x.device, dtype=torch.long)
    time = torch.arange(steps, device=x.device)
    valid = (time[:, None] < lengths[None, :]).unsqueeze(2)  # [T, B, 1]
    source = None
    if reverse:  # step s of row b reads time lengths[b] - 1 - s (its own end first)
        source = (lengths[None, :] - 1 - time[:, None]).clamp(min=0)[:, :, None]
        x = x.gather(0, source.expand(-1, -1, x.shape[2]))
    return x, valid, source


def _outputs_in_time(outputs, valid, source, x, hidden):
    """The stacked step outputs [T, B, H] in time order, zero past each length."""
    output = torch.stack(outputs) if outputs else x.new_zeros(0, x.shape[1], hidden)
    if source is not None:  # the map s <-> lengths[b] - 1 - s is its own inverse on valid steps
        output = output.gather(0, source.expand(-1, -1, hidden)) * valid
    return output


def _recurrence(x, lengths, reverse, states, project, step):
    """The step loop every reference layer runs: x [T, B, I] in each row's
    step order (``reverse``: from its own last valid step down), ``project``
    (x -> the input projection [T, B, G], once), then per step ``step``
    (projection of the step, states) -> new states, h first; a row past its
    length keeps its states. Returns (output [T, B, H] in time order, zero
    past each length, *final states)."""
    hidden = states[0].shape[1]
    x, valid, source = _steps_in_order(x, lengths, reverse)
    projected = project(x)
    outputs = []
    for s in range(x.shape[0]):
        new = step(projected[s], states)
        states = tuple(torch.where(valid[s], n, old) for n, old in zip(new, states))
        outputs.append(torch.where(valid[s], new[0], torch.zeros_like(new[0])))
    return (_outputs_in_time(outputs, valid, source, x, hidden), *states)


def _initial(state, x, hidden):
    return state if state is not None else x.new_zeros(x.shape[1], hidden)


def lstm_layer(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse):
    """One LSTM layer in one direction, time-major, in plain differentiable
    PyTorch ops: what ``seqcls_fast.lstm_layer`` computes, x [T, B, I] ->
    (output [T, B, H] zero past each length, h_n [B, H], c_n [B, H]). With
    ``reverse`` each row runs from its own last valid step down to 0. Any
    order of derivative works (the double-backward path uses it)."""
    hidden = w_hh.shape[1]

    def project(x):
        projected = x @ w_ih.t()
        return projected + (b_ih + b_hh) if b_ih is not None else projected

    def step(projected, states):
        h, c = states
        i, f, g, o = (projected + h @ w_hh.t()).chunk(4, dim=1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_next), c_next

    return _recurrence(x, lengths, reverse, (_initial(h0, x, hidden), _initial(c0, x, hidden)),
                       project, step)


def gru_layer(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, reverse):
    """One GRU layer in one direction (nn.GRU's math, gate order r, z, n),
    time-major, in plain differentiable PyTorch ops: what
    ``seqcls_fast.gru_layer`` computes, x [T, B, I] -> (output [T, B, H] zero
    past each length, h_n [B, H]); ``reverse`` as in ``lstm_layer``."""

    def project(x):
        projected = x @ w_ih.t()
        return projected + b_ih if b_ih is not None else projected

    def step(projected, states):
        (h,) = states
        recurrent = h @ w_hh.t()
        if b_hh is not None:
            recurrent = recurrent + b_hh
        x_r, x_z, x_n = projected.chunk(3, dim=1)
        h_r, h_z, h_n = recurrent.chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return ((1 - z) * n + z * h,)

    return _recurrence(x, lengths, reverse, (_initial(h0, x, w_hh.shape[1]),), project, step)


def rnn_layer(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse):
    """One Elman RNN layer in one direction (nn.RNN's math, ``nonlinearity``
    "tanh" or "relu"), time-major, in plain differentiable PyTorch ops: what
    ``seqcls_fast.rnn_layer`` computes, x [T, B, I] -> (output [T, B, H] zero
    past each length, h_n [B, H]); ``reverse`` as in ``lstm_layer``."""
    activation = torch.relu if nonlinearity == "relu" else torch.tanh

    def project(x):
        projected = x @ w_ih.t()
        return projected + b_ih + b_hh if b_ih is not None else projected

    def step(projected, states):
        (h,) = states
        return (activation(projected + h @ w_hh.t()),)

    return _recurrence(x, lengths, reverse, (_initial(h0, x, w_hh.shape[1]),), project, step)


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


class PackedGRU(nn.GRU):
    """``nn.GRU`` that takes ``lengths`` like ``sf.GRU`` and packs for them:
    ``out, h_n = gru(x, hx=None, lengths=None)``."""

    def forward(self, x, hx=None, lengths=None):
        if lengths is None:
            return super().forward(x, hx)
        return packed_lstm(self, x, lengths, hx)


class MaskedAttentionPooling(AttentionPoolingParameters):
    """``sf.MaskedAttentionPooling``'s parameters (``query``, ``proj``),
    initialisation and interface (``pooled, weights = pool(outputs,
    lengths=None)``, lengths ``[B]`` or None), computed in plain PyTorch."""

    def forward(self, outputs, lengths=None):
        keys = torch.tanh(self.proj(outputs)) if self.proj is not None else None
        return masked_attention_pool(outputs, keys, self.query, lengths)


class NativeLSTMClassifier(ClassifierLayout):
    """``sf.LSTMClassifier`` on native parts, the baseline a user would write:
    ``logits = model(x, lengths)`` with the same constructor, submodules
    (``embedding``, ``lstm``: a :class:`PackedLSTM`, or ``gru``: a
    :class:`PackedGRU` with ``cell="gru"``, ``pool``, ``dropout``, ``head``),
    parameter names and initialisation order. lengths are ``[B]``
    (a list works) or None; ``memory`` is accepted for the signature, and any
    mode but ``"fast"`` is refused (nn.LSTM has one)."""

    def __init__(self, input_size, hidden_size, num_classes, num_layers=1, bidirectional=False,
                 dropout=0.0, vocab_size=None, padding_idx=0, pooling="attention",
                 attn_dim=None, device=None, dtype=None, memory="fast", cell="lstm"):
        if memory not in MEMORY_MODES:
            raise ValueError(f"LSTMClassifier: memory must be one of {MEMORY_MODES}, got "
                             f"{memory!r}")
        if memory != "fast":
            raise ValueError(f"LSTMClassifier: memory={memory!r} needs seqcls_fast.LSTM, not "
                             "PackedLSTM")
        super().__init__(input_size, hidden_size, num_classes, num_layers, bidirectional, dropout,
                         vocab_size, padding_idx, pooling, attn_dim, device, dtype,
                         PackedGRU if cell == "gru" else PackedLSTM, MaskedAttentionPooling, cell)

    def forward(self, x, lengths=None):
        x = self.embed(x)
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
        outputs, states = self.rnn(x, lengths=lengths)  # outputs [B, T, D]
        h_n = states[0] if self.cell == "lstm" else states
        if self.pooling == "attention":
            features, _weights = self.pool(outputs, lengths)
        elif self.pooling == "mean":
            features = masked_mean_pool(outputs, lengths)
        else:  # last: final states of the top layer, both directions
            top = h_n[-2:] if self.rnn.bidirectional else h_n[-1:]
            features = torch.cat(tuple(top), dim=1)
        return self.head(self.dropout(features))
