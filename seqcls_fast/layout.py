"""The parameter layout seqcls_fast's modules share with their plain-PyTorch
references (seqcls_fast.reference): the option lists, the constructors and
initialisation (so one seed gives the same weights and a state_dict moves
between the two), and the classifier's input check. Plain nn.Module pieces
with no kernels and no forward computation: the reference imports this and
nothing else of ours, and still computes everything itself."""
import math

import torch
from torch import nn

POOLINGS = ("attention", "mean", "last")
MEMORY_MODES = ("fast", "low", "auto")
CELLS = ("lstm", "gru")


class AttentionPoolingParameters(nn.Module):
    """MaskedAttentionPooling's parameters: ``query`` [attn_dim or
    hidden_size] and, with ``attn_dim``, ``proj`` (hidden_size -> attn_dim).
    The forward is the subclass's."""

    def __init__(self, hidden_size, attn_dim=None, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.hidden_size = hidden_size
        self.attn_dim = attn_dim
        self.proj = nn.Linear(hidden_size, attn_dim, **factory) if attn_dim else None
        self.query = nn.Parameter(torch.empty(attn_dim or hidden_size, **factory))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.query, std=1.0 / math.sqrt(self.query.numel()))
        if self.proj is not None:
            self.proj.reset_parameters()

    def extra_repr(self):
        return f"hidden_size={self.hidden_size}, attn_dim={self.attn_dim}"


def check_cell(cell):
    if cell not in CELLS:
        raise ValueError(f"LSTMClassifier: cell must be one of {CELLS}, got {cell!r}")
    return cell


class ClassifierLayout(nn.Module):
    """LSTMClassifier's submodules, created in this order: ``embedding``
    (with vocab_size), the recurrent layers (``make_rnn``, batch-first, named
    after ``cell``: ``lstm`` or ``gru``, so an LSTM checkpoint's keys stay
    ``lstm.*``; :attr:`rnn` is whichever), ``pool`` (``pool_class``, attention
    pooling only), ``dropout``, ``head``. The forward is the subclass's; it
    starts with :meth:`embed`."""

    def __init__(self, input_size, hidden_size, num_classes, num_layers, bidirectional, dropout,
                 vocab_size, padding_idx, pooling, attn_dim, device, dtype, make_rnn,
                 pool_class, cell="lstm"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"LSTMClassifier: pooling must be one of {POOLINGS}, got {pooling!r}")
        factory = {"device": device, "dtype": dtype}
        self.cell = check_cell(cell)
        self.pooling = pooling
        self.embedding = (nn.Embedding(vocab_size, input_size, padding_idx=padding_idx, **factory)
                          if vocab_size is not None else None)
        self.add_module(cell, make_rnn(input_size, hidden_size, num_layers, batch_first=True,
                                       dropout=dropout if num_layers > 1 else 0.0,
                                       bidirectional=bidirectional, **factory))
        features = hidden_size * (2 if bidirectional else 1)
        self.pool = pool_class(features, attn_dim, **factory) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, num_classes, **factory)

    @property
    def rnn(self):
        """The recurrent layers (``self.lstm`` or ``self.gru``)."""
        return getattr(self, self.cell)

    def embed(self, x):
        """x checked (``[B, T]`` token ids with an embedding, else ``[B, T,
        input_size]``) and embedded: ``[B, T, input_size]``."""
        if self.embedding is not None:
            if x.dim() != 2 or x.is_floating_point():
                raise ValueError("LSTMClassifier: with vocab_size, x must be [B, T] token ids, got "
                                 f"{x.dtype} of shape {tuple(x.shape)}")
            return self.embedding(x)
        if x.dim() != 3:
            raise ValueError(f"LSTMClassifier: x must be [B, T, input_size], got shape "
                             f"{tuple(x.shape)}")
        return x
