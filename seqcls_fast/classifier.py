"""sf.LSTMClassifier: [embedding ->] LSTM -> pooling -> linear head."""
import torch
from torch import nn

from .lstm import LSTM
from .plan import LengthPlan
from .pooling import MaskedAttentionPooling

POOLINGS = ("attention", "mean", "last")


class LSTMClassifier(nn.Module):
    """``logits = model(x, lengths)``.

    x is ``[B, T, input_size]`` features, or ``[B, T]`` token ids when
    ``vocab_size`` is given (an ``nn.Embedding`` of width input_size first);
    lengths ``[B]`` or None (all T). Pooling over the LSTM outputs (2H wide when
    bidirectional): ``"attention"`` (masked attention, additive when
    ``attn_dim`` is set), ``"mean"`` over valid steps, or ``"last"`` (the final
    states h_n; both directions' when bidirectional). ``dropout`` applies
    between LSTM layers and before the head.

    ``lstm_class`` and ``pooling_class`` are the parts it is built from;
    ``seqcls_fast.reference.NativeLSTMClassifier`` swaps in native ones (and
    ``plan_lengths = False``: raw lengths go to them as a user would pass them).
    """
    lstm_class = LSTM
    pooling_class = MaskedAttentionPooling
    plan_lengths = True

    def __init__(self, input_size, hidden_size, num_classes, num_layers=1, bidirectional=False,
                 dropout=0.0, vocab_size=None, padding_idx=0, pooling="attention",
                 attn_dim=None, device=None, dtype=None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"LSTMClassifier: pooling must be one of {POOLINGS}, got {pooling!r}")
        factory = {"device": device, "dtype": dtype}
        self.pooling = pooling
        self.embedding = (nn.Embedding(vocab_size, input_size, padding_idx=padding_idx, **factory)
                          if vocab_size is not None else None)
        self.lstm = self.lstm_class(input_size, hidden_size, num_layers, batch_first=True,
                                    dropout=dropout if num_layers > 1 else 0.0,
                                    bidirectional=bidirectional, **factory)
        features = hidden_size * (2 if bidirectional else 1)
        self.pool = (self.pooling_class(features, attn_dim, **factory)
                     if pooling == "attention" else None)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, num_classes, **factory)

    def forward(self, x, lengths=None):
        if self.embedding is not None:
            if x.dim() != 2 or x.is_floating_point():
                raise ValueError("LSTMClassifier: with vocab_size, x must be [B, T] token ids, got "
                                 f"{x.dtype} of shape {tuple(x.shape)}")
            x = self.embedding(x)
        elif x.dim() != 3:
            raise ValueError(f"LSTMClassifier: x must be [B, T, input_size], got shape {tuple(x.shape)}")
        if lengths is not None and not isinstance(lengths, (torch.Tensor, LengthPlan)):
            lengths = torch.as_tensor(lengths)
        if self.plan_lengths:  # once for every layer, direction, pass and the pooling
            lengths = LengthPlan.of(lengths, x.size(1), x.size(0), x.device, "LSTMClassifier")
        outputs, (h_n, _c_n) = self.lstm(x, lengths=lengths)  # outputs [B, T, D]
        if self.pooling == "attention":
            features, _weights = self.pool(outputs, lengths)
        elif self.pooling == "mean":
            if lengths is None:
                features = outputs.mean(dim=1)
            else:  # outputs are 0 past each length
                raw = lengths.lengths if isinstance(lengths, LengthPlan) else lengths
                counts = raw.to(device=outputs.device, dtype=outputs.dtype)
                features = outputs.sum(dim=1) / counts.unsqueeze(1)
        else:  # last: final states of the top layer, both directions
            top = h_n[-2:] if self.lstm.bidirectional else h_n[-1:]
            features = torch.cat(tuple(top), dim=1)
        return self.head(self.dropout(features))

    def stream(self, batch_size):
        """A ``seqcls_fast.streaming.ClassifierStream`` for ``batch_size``
        independent sequences fed in chunks: ``logits = stream.feed(chunk,
        chunk_lengths)`` equals this model on each row's prefix so far. The
        model must be unidirectional and in eval mode."""
        from .streaming import ClassifierStream
        return ClassifierStream(self, batch_size)
