"""sf.LSTMClassifier: [embedding ->] LSTM or GRU -> pooling -> linear head."""
import functools

import torch

from .gru import GRU
from .layout import ClassifierLayout, check_cell
from .lstm import LSTM, check_memory_mode
from .plan import LengthPlan
from .pooling import MaskedAttentionPooling


def step_counts(plan, x):
    """Each row's valid step count [B] (int64, on x's device) for x [B, T, *]:
    the plan's lengths in caller order, or T for every row (no plan)."""
    if plan is None:
        return torch.full((x.size(0),), x.size(1), dtype=torch.long, device=x.device)
    return plan.table[2].to(x.device)


def mean_from_sum(total, counts):
    """Mean pooling, run whole or online: the sum over each row's valid steps
    ``total`` [B, D] divided by their count ``counts`` [B]."""
    return total / counts.to(total.dtype).unsqueeze(1)


class LSTMClassifier(ClassifierLayout):
    """``logits = model(x, lengths)``.

    ``cell``: ``"lstm"`` (``sf.LSTM``, submodule ``lstm``) or ``"gru"``
    (``sf.GRU``, submodule ``gru``; no online pooling or streaming yet). x is ``[B, T, input_size]`` features, or
    ``[B, T]`` token ids when ``vocab_size`` is given (an ``nn.Embedding`` of
    width input_size first); lengths ``[B]`` or None (all T). Pooling over the
    recurrent outputs (2H wide when bidirectional): ``"attention"`` (masked attention, additive when
    ``attn_dim`` is set), ``"mean"`` over valid steps, or ``"last"`` (the final
    states h_n; both directions' when bidirectional). ``dropout`` applies
    between recurrent layers and before the head. ``memory``: sf.LSTM's training
    memory mode (``"fast"``, ``"low"`` or ``"auto"``), sf.GRU's alike.

    ``seqcls_fast.reference.NativeLSTMClassifier`` is the same model on
    nn.LSTM (nn.GRU) with packing and plain-PyTorch pooling (same state_dict).
    """

    def __init__(self, input_size, hidden_size, num_classes, num_layers=1, bidirectional=False,
                 dropout=0.0, vocab_size=None, padding_idx=0, pooling="attention",
                 attn_dim=None, device=None, dtype=None, memory="fast", cell="lstm"):
        check_memory_mode(memory, "LSTMClassifier")
        make_rnn = functools.partial(LSTM if check_cell(cell) == "lstm" else GRU, memory=memory)
        super().__init__(input_size, hidden_size, num_classes, num_layers, bidirectional, dropout,
                         vocab_size, padding_idx, pooling, attn_dim, device, dtype, make_rnn,
                         MaskedAttentionPooling, cell)

    def forward(self, x, lengths=None):
        x = self.embed(x)
        # One plan for every layer, direction, pass and the pooling.
        plan = LengthPlan.of(lengths, x.size(1), x.size(0), x.device, "LSTMClassifier")
        if self._pools_online(x):
            return self.head(self.dropout(self._pooled_online(x, plan)))
        outputs, states = self.rnn(x, lengths=plan)  # outputs [B, T, D]
        h_n = states[0] if self.cell == "lstm" else states
        if self.pooling == "attention":
            features, _weights = self.pool(outputs, plan)
        elif self.pooling == "mean":  # outputs are 0 past each length
            features = mean_from_sum(outputs.sum(dim=1), step_counts(plan, x))
        else:  # last: final states of the top layer, both directions
            top = h_n[-2:] if self.rnn.bidirectional else h_n[-1:]
            features = torch.cat(tuple(top), dim=1)
        return self.head(self.dropout(features))

    def _pools_online(self, x):
        """Whether the top recurrent layer pools as it runs, never writing its
        [T, B, H] output (seqcls_fast::lstm_layer_pooled_forward,
        gru_layer_pooled_forward): when nothing needs a gradient, the LSTM or
        GRU is ours and unidirectional (a reverse direction's scores need both
        directions' outputs). On the CPU and on CUDA alike."""
        rnn = self.rnn
        if not isinstance(rnn, (LSTM, GRU)) or rnn.bidirectional:
            return False
        return not torch.is_grad_enabled() or not (
            x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def online_pooling(self, pool_state=None):
        """The keyword arguments of ``_ops.lstm_layer_pooled`` (and
        ``gru_layer_pooled``) for this
        model's pooling, continuing ``pool_state`` (None: start empty)."""
        spec = {"pooling": self.pooling, "pool_state": pool_state}
        if self.pooling == "attention":
            proj = self.pool.proj
            spec.update(query=self.pool.query, key_weight=proj.weight if proj is not None else None,
                        key_bias=proj.bias if proj is not None else None)
        return spec

    def pooled_features(self, pool_state, h_n, counts):
        """The pooled features [B, H] from the online pooling state, the
        top layer's h_n and each row's step count [B]."""
        _max, denom, total = pool_state
        if self.pooling == "attention":
            return total / denom.unsqueeze(1)
        if self.pooling == "mean":
            return mean_from_sum(total, counts)
        return h_n

    def _pooled_online(self, x, plan):
        pool_state, states = self.rnn._checked_run(x.transpose(0, 1), plan,
                                                   pool=self.online_pooling())
        h_n = states[0]  # (h_n, c_n) or (h_n,)
        return self.pooled_features(pool_state, h_n[-1], step_counts(plan, x)).to(x.dtype)

    def stream(self, batch_size):
        """A ``seqcls_fast.streaming.ClassifierStream`` for ``batch_size``
        independent sequences fed in chunks: ``logits = stream.feed(chunk,
        chunk_lengths)`` equals this model on each row's prefix so far. The
        model must be unidirectional (LSTM or GRU) and in eval mode."""
        from .streaming import ClassifierStream
        return ClassifierStream(self, batch_size)
