"""Streaming classification: ``stream = model.stream(batch_size)``, then
``logits = stream.feed(chunk, chunk_lengths)`` as each row's sequence arrives a
few steps at a time; ``stream.reset(rows)`` starts new sequences in some rows.

The logits after any chunking equal ``model(x, lengths)`` on the prefix each row
has seen. The state per row is O(layers x H) whatever the length so far: the
h (and the LSTM's c) of every layer and the pooling's online state (running max of the
scores, softmax denominator, and the weighted sum of outputs for attention, as
flash attention merges softmax blocks; the running sum for mean; nothing more
for last). Each chunk runs as the classifier's fused inference path does, on
the CPU and on CUDA: the top layer pools as it runs
(seqcls_fast::lstm_layer_pooled_forward or gru_layer_pooled_forward, whose
merge rule lives in csrc/online_pool.h). LSTM and GRU models alike. Unidirectional models only: a reverse direction needs
the future.
"""
import torch

from ._ops import _state_dtype
from .plan import LengthPlan


class ClassifierStream:
    """The streaming state of an ``sf.LSTMClassifier`` for ``batch_size``
    independent rows (see the module docstring). Made by
    ``LSTMClassifier.stream``."""

    def __init__(self, model, batch_size):
        rnn = model.rnn
        if rnn.bidirectional:
            raise ValueError("LSTMClassifier.stream: the model is bidirectional; streaming needs "
                             "a unidirectional model (the reverse direction reads the future)")
        if model.training:
            raise RuntimeError("LSTMClassifier.stream: the model is in training mode (dropout "
                               "would differ per chunk); call model.eval() first")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"LSTMClassifier.stream: batch_size must be a positive int, got "
                             f"{batch_size!r}")
        self.model = model
        self.batch_size = batch_size
        like = rnn.weight_ih_l0.detach()
        self.dtype, self.device = like.dtype, like.device
        # h (and the LSTM's c) of every layer, [layers, B, H]: the recurrent
        # layers' h_0 / c_0 and h_n / c_n. c is None for a GRU.
        self.h = like.new_zeros(rnn.num_layers, batch_size, rnn.hidden_size)
        self.c = (like.new_zeros(rnn.num_layers, batch_size, rnn.hidden_size)
                  if model.cell == "lstm" else None)
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=like.device)
        # The pooling state: (max [B], denom [B], sum [B, H]) in the state
        # dtype, as lstm_layer_pooled_forward takes and returns it.
        state = like.new_empty(0, dtype=_state_dtype(like.dtype))
        self.pool_state = (state.new_full((batch_size,), float("-inf")),
                           state.new_zeros(batch_size),
                           state.new_zeros(batch_size, rnn.hidden_size))

    # ---------------------------------------------------------------- public
    @torch.inference_mode()  # the state may hold inference tensors (see feed)
    def reset(self, rows):
        """Starts new sequences in ``rows`` (a list of indices, or an index or
        bool tensor); the other rows go on."""
        rows = self._rows(rows)
        self.h[:, rows] = 0
        if self.c is not None:
            self.c[:, rows] = 0
        self.seen[rows] = 0
        pool_max, denom, total = self.pool_state
        pool_max[rows] = float("-inf")
        denom[rows] = 0
        total[rows] = 0

    def state_numel(self):
        """Elements of state kept per stream (constant: O(B x layers x H))."""
        kept = (self.h, self.c, self.seen, *self.pool_state)
        return sum(t.numel() for t in kept if t is not None)

    @torch.inference_mode()
    def feed(self, chunk, chunk_lengths=None):
        """chunk ``[B, t, I]`` (token ids ``[B, t]`` with an embedding),
        chunk_lengths ``[B]``: the valid new steps of each row (0: the row
        waits; None: all t). Returns logits ``[B, num_classes]`` for everything
        each row has seen (NaN for a row that has seen nothing)."""
        if self.model.training:
            raise RuntimeError("ClassifierStream.feed: the model was put in training mode; "
                               "call model.eval()")
        x, lengths, all_full = self._check_chunk(chunk, chunk_lengths)
        if all_full:  # every row takes the whole chunk: no gathers, no plan
            if x.size(1) > 0:
                self._advance(x, None, slice(None))
        else:
            rows = torch.nonzero(lengths > 0).squeeze(1)
            if rows.numel() > 0:
                self._advance(x.index_select(0, rows), lengths.index_select(0, rows), rows)
        return self._logits()

    @torch.inference_mode()
    def logits(self):
        """The logits for what each row has seen so far."""
        return self._logits()

    # --------------------------------------------------------------- private
    def _logits(self):
        features = self.model.pooled_features(self.pool_state, self.h[-1], self.seen)
        if self.model.pooling == "last":  # NaN for a row that has seen nothing, as 0 / 0 gives
            features = torch.where(self.seen[:, None] > 0, features,
                                   torch.full_like(features, float("nan")))
        return self.model.head(features.to(self.dtype))  # eval mode: dropout is the identity

    def _advance(self, x, lengths, rows):
        """x [b, t, I] for the rows (an index, or every row) with lengths [b]
        >= 1 new steps (None: all t)."""
        model = self.model
        steps = x.size(1)
        plan = LengthPlan(lengths, steps, x.size(0)) if lengths is not None else None
        every_row = isinstance(rows, slice)
        lstm = self.c is not None

        def of_rows(state):
            return state if every_row else state[:, rows]

        hx = (of_rows(self.h), of_rows(self.c)) if lstm else of_rows(self.h)
        pool_state = self.pool_state if every_row else tuple(t[rows] for t in self.pool_state)
        # The recurrent layers' own loop, started from the rows' states
        # (inference: nothing is kept for a backward), behind their input
        # checks: with an embedding, or weights cast after the stream was
        # made, x's dtype is not the one _check_chunk compared.
        pool_state, states = model.rnn._checked_run(x.transpose(0, 1), plan, hx,
                                                    pool=model.online_pooling(pool_state))
        h, c = states if lstm else (states[0], None)
        if every_row:  # rebind, no scatter
            self.h, self.c, self.pool_state = h, c, pool_state
        else:
            self.h[:, rows] = h
            if lstm:
                self.c[:, rows] = c
            for kept, new in zip(self.pool_state, pool_state):
                kept[rows] = new
        self.seen[rows] += steps if lengths is None else lengths

    def _rows(self, rows):
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            if rows.shape != (self.batch_size,):
                raise ValueError(f"ClassifierStream.reset: a bool mask must have shape "
                                 f"[{self.batch_size}], got {tuple(rows.shape)}")
            return torch.nonzero(rows.to(self.device)).squeeze(1)
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.batch_size):
            raise ValueError(f"ClassifierStream.reset: rows must lie in [0, {self.batch_size}), "
                             f"got {rows.tolist()}")
        return rows.to(self.device)

    def _check_chunk(self, chunk, chunk_lengths):
        model = self.model
        if not isinstance(chunk, torch.Tensor):
            raise TypeError(f"ClassifierStream.feed: chunk must be a Tensor, got "
                            f"{type(chunk).__name__}")
        if chunk.device != self.device:
            raise ValueError(f"ClassifierStream.feed: chunk is on {chunk.device}, the stream's "
                             f"state on {self.device}")
        if model.embedding is not None:
            if chunk.dim() != 2 or chunk.is_floating_point():
                raise ValueError("ClassifierStream.feed: with an embedding, chunk must be [B, t] "
                                 f"token ids, got {chunk.dtype} of shape {tuple(chunk.shape)}")
        else:
            if chunk.dim() != 3 or chunk.size(2) != model.rnn.input_size:
                raise ValueError(f"ClassifierStream.feed: chunk must have shape [B, t, "
                                 f"{model.rnn.input_size}], got {tuple(chunk.shape)}")
            if chunk.dtype != self.dtype:
                raise TypeError(f"ClassifierStream.feed: chunk dtype {chunk.dtype} does not match "
                                f"the stream's {self.dtype}")
        if chunk.size(0) != self.batch_size:
            raise ValueError(f"ClassifierStream.feed: chunk must have B = {self.batch_size} rows "
                             f"(the stream's batch size), got {chunk.size(0)}")
        steps = chunk.size(1)
        if chunk_lengths is None:
            lengths = torch.full((self.batch_size,), steps, dtype=torch.long)
            all_full = True
        else:
            lengths = torch.as_tensor(chunk_lengths)
            if lengths.is_floating_point() or lengths.dtype == torch.bool:
                raise TypeError(f"ClassifierStream.feed: chunk_lengths must be integers, got "
                                f"{lengths.dtype}")
            if lengths.shape != (self.batch_size,):
                raise ValueError(f"ClassifierStream.feed: chunk_lengths must have shape "
                                 f"[{self.batch_size}], got {tuple(lengths.shape)}")
            lengths = lengths.to("cpu", torch.long)
            # Checked on a Python list: three tensor reductions cost more than
            # a one-step feed's recurrence at small B.
            values = lengths.tolist()
            if values and (min(values) < 0 or max(values) > steps):
                raise ValueError(f"ClassifierStream.feed: chunk_lengths must lie in [0, t] = "
                                 f"[0, {steps}], got {values}")
            all_full = all(v == steps for v in values)
        x = model.embedding(chunk) if model.embedding is not None else chunk
        return x, lengths.to(self.device), all_full
