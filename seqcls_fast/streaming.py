"""Streaming classification: ``stream = model.stream(batch_size)``, then
``logits = stream.feed(chunk, chunk_lengths)`` as each row's sequence arrives a
few steps at a time; ``stream.reset(rows)`` starts new sequences in some rows.

The logits after any chunking equal ``model(x, lengths)`` on the prefix each row
has seen. The state per row is O(layers x H) whatever the length so far: the
(h, c) of every layer, and the pooling's online state: for attention the
running max of the scores, the softmax denominator and the weighted sum of
outputs, merged chunk by chunk as flash attention merges softmax blocks; for
mean the running sum and count; for last the top layer's h. Unidirectional
models only: a reverse direction needs the future.
"""
import torch

from .plan import LengthPlan


class OnlineAttentionPool:
    """Masked attention pooling over a sequence seen in chunks: per row the
    running max ``m`` of the scores, the denominator ``l = sum exp(s - m)`` and
    ``acc = sum exp(s - m) h``; ``acc / l`` is the pooled vector at any time
    (NaN for a row that has seen nothing: 0 / 0)."""

    def __init__(self, batch, features, like):
        self.m = like.new_full((batch,), float("-inf"))
        self.l = like.new_zeros(batch)
        self.acc = like.new_zeros(batch, features)

    def reset(self, rows):
        self.m[rows] = float("-inf")
        self.l[rows] = 0
        self.acc[rows] = 0

    def update(self, rows, scores, values, valid):
        """rows [b] (an index, or every row), scores [b, t], values [b, t, D],
        valid [b, t] bool (None: every step); every row here has at least one
        valid step."""
        if valid is not None:
            scores = scores.masked_fill(~valid, float("-inf"))
        every_row = isinstance(rows, slice)
        m_old, l_old, acc_old = ((self.m, self.l, self.acc) if every_row else
                                 (self.m[rows], self.l[rows], self.acc[rows]))
        m_new = torch.maximum(m_old, scores.amax(dim=1))
        # One exp for both: the old state's rescale factor (0 where nothing was
        # seen yet, m_old = -inf) and the new steps' weights (0 at padding).
        scaled = torch.exp(torch.cat([m_old[:, None], scores], dim=1) - m_new[:, None])
        keep, weights = scaled[:, :1], scaled[:, 1:]
        l_new = torch.addcmul(weights.sum(dim=1), l_old, keep.squeeze(1))
        acc_new = torch.addcmul(torch.bmm(weights.unsqueeze(1).to(values.dtype), values).squeeze(1),
                                acc_old, keep)
        if every_row:  # rebind, no scatter
            self.m, self.l, self.acc = m_new, l_new, acc_new
        else:
            self.m[rows], self.l[rows], self.acc[rows] = m_new, l_new, acc_new

    def pooled(self):
        return self.acc / self.l[:, None]


class ClassifierStream:
    """The streaming state of an ``sf.LSTMClassifier`` for ``batch_size``
    independent rows (see the module docstring). Made by
    ``LSTMClassifier.stream``."""

    def __init__(self, model, batch_size):
        lstm = model.lstm
        if lstm.bidirectional:
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
        like = lstm.weight_ih_l0.detach()
        self.dtype, self.device = like.dtype, like.device
        # (h, c) of every layer, [layers, B, H]: sf.LSTM's h_0 / c_0 and h_n / c_n.
        self.h = like.new_zeros(lstm.num_layers, batch_size, lstm.hidden_size)
        self.c = like.new_zeros(lstm.num_layers, batch_size, lstm.hidden_size)
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=like.device)
        self.pool = (OnlineAttentionPool(batch_size, lstm.hidden_size, like)
                     if model.pooling == "attention" else None)
        self.sum = like.new_zeros(batch_size, lstm.hidden_size)  # mean pooling

    # ---------------------------------------------------------------- public
    @torch.inference_mode()  # the state may hold inference tensors (see feed)
    def reset(self, rows):
        """Starts new sequences in ``rows`` (a list of indices, or an index or
        bool tensor); the other rows go on."""
        rows = self._rows(rows)
        self.h[:, rows] = 0
        self.c[:, rows] = 0
        self.seen[rows] = 0
        self.sum[rows] = 0
        if self.pool is not None:
            self.pool.reset(rows)

    def state_numel(self):
        """Elements of state kept per stream (constant: O(B x layers x H))."""
        tensors = [self.h, self.c, self.seen, self.sum]
        if self.pool is not None:
            tensors += [self.pool.m, self.pool.l, self.pool.acc]
        return sum(t.numel() for t in tensors)

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
        model = self.model
        if model.pooling == "attention":
            features = self.pool.pooled()
        elif model.pooling == "mean":
            features = self.sum / self.seen.to(self.dtype)[:, None]
        else:
            features = torch.where(self.seen[:, None] > 0, self.h[-1],
                                   torch.full_like(self.h[-1], float("nan")))
        return model.head(features)  # eval mode: dropout is the identity

    def _advance(self, x, lengths, rows):
        """x [b, t, I] for the rows (an index, or every row) with lengths [b]
        >= 1 new steps (None: all t)."""
        steps = x.size(1)
        plan = LengthPlan(lengths, steps, x.size(0)) if lengths is not None else None
        # sf.LSTM's own layer loop, started from the rows' states (inference:
        # nothing is kept for a backward).
        every_row = isinstance(rows, slice)
        state = (self.h, self.c) if every_row else (self.h[:, rows], self.c[:, rows])
        out, (h, c) = self.model.lstm._run(x.transpose(0, 1), plan, state)
        if every_row:  # rebind, no scatter
            self.h, self.c = h, c
        else:
            self.h[:, rows], self.c[:, rows] = h, c
        outputs = out.transpose(0, 1)  # [b, t, H], 0 past each length
        if lengths is None:
            self.seen += steps
        else:
            lengths = lengths.to(self.device)
            self.seen[rows] += lengths
        if self.model.pooling == "mean":
            self.sum[rows] += outputs.sum(dim=1)
        elif self.model.pooling == "attention":
            pool = self.model.pool
            keys = torch.tanh(pool.proj(outputs)) if pool.proj is not None else outputs
            valid = (None if lengths is None else
                     torch.arange(steps, device=self.device)[None, :] < lengths[:, None])
            self.pool.update(rows, keys @ pool.query, outputs, valid)

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
            if chunk.dim() != 3 or chunk.size(2) != model.lstm.input_size:
                raise ValueError(f"ClassifierStream.feed: chunk must have shape [B, t, "
                                 f"{model.lstm.input_size}], got {tuple(chunk.shape)}")
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
            if lengths.numel() and (lengths.min() < 0 or lengths.max() > steps):
                raise ValueError(f"ClassifierStream.feed: chunk_lengths must lie in [0, t] = "
                                 f"[0, {steps}], got {lengths.tolist()}")
            all_full = bool((lengths == steps).all())
        x = model.embedding(chunk) if model.embedding is not None else chunk
        return x, lengths.to(self.device), all_full
