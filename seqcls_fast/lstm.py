"""sf.LSTM: a drop-in nn.LSTM that also takes a padded batch with lengths."""
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ._ops import lstm_layer, lstm_layer_pooled
from .errors import DtypeMismatchError, ShapeError, StateTypeError
from .layout import MEMORY_MODES
from .plan import LengthPlan

# memory="auto" picks "low" for a batch where "fast" would keep more than this
# per layer-direction (6H values per padded step and row; see the README's
# "Long sequences": there "low" cost 3-4% above ~200 MB and up to 26% at 50 MB).
AUTO_LOW_MEMORY_BYTES = 128 * 2**20


def low_memory_for(memory, x, hidden_size):
    """Whether a layer run on x [T, B, *] keeps only cell checkpoints."""
    if memory != "auto":
        return memory == "low"
    kept = 6 * hidden_size * x.size(0) * x.size(1) * x.element_size()
    return kept > AUTO_LOW_MEMORY_BYTES


def check_memory_mode(memory, where):
    if memory not in MEMORY_MODES:
        raise ValueError(f"{where}: memory must be one of {MEMORY_MODES}, got {memory!r}")
    return memory


def _check_steps(x, shape):
    """x [T, B, *] needs T >= 1 unless B is 0; ``shape``: the input's as given."""
    if x.size(0) == 0 and x.size(1) > 0:
        raise ShapeError("seqcls_fast.LSTM: input must have at least one time step (T >= 1), "
                         f"got shape {tuple(shape)}")


class LSTM(nn.RNNBase):
    """Same constructor, parameters, state_dict and repr as ``nn.LSTM``
    (gate order i, f, g, o), with one more forward argument, ``lengths``.

    ``forward(x, hx=None, lengths=None)`` takes every input nn.LSTM takes
    (``[T, B, I]``, ``[B, T, I]`` with ``batch_first``, unbatched ``[T, I]``, a
    ``PackedSequence``) and a padded batch with ``lengths`` ([B] integers, on
    the CPU or on x's device, or an ``sf.LengthPlan``). With lengths, each
    sequence is processed exactly
    as if packed: outputs past a length are 0, ``h_n``/``c_n`` are the states
    at each sequence's last valid step, and the reverse direction starts there.

    ``memory`` (not in nn.LSTM): ``"fast"`` keeps each valid step's gates,
    cell and h_prev for the backward; ``"low"`` keeps only the cell state at
    the start of each chunk of steps and rebuilds the rest in the backward from
    the layer's output (same results; see the README's "Long sequences");
    ``"auto"``: ``"low"`` for a batch where ``"fast"`` would keep more than
    ``AUTO_LOW_MEMORY_BYTES`` (128 MiB) per layer-direction, counted on the
    padded batch (6H values per step and row).

    A subclass of ``nn.RNNBase``, not of ``nn.LSTM``, so torch.compile traces
    through it (Dynamo refuses modules that are ``nn.LSTM`` instances).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 memory="fast"):
        if proj_size:
            raise NotImplementedError("seqcls_fast.LSTM: proj_size > 0 is not supported")
        super().__init__("LSTM", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=float(dropout),
                         bidirectional=bidirectional, proj_size=0, device=device, dtype=dtype)
        self.memory = check_memory_mode(memory, "seqcls_fast.LSTM")

    def extra_repr(self):
        text = super().extra_repr()
        return text if self.memory == "fast" else f"{text}, memory={self.memory!r}"

    @classmethod
    def from_native(cls, native, memory="fast"):
        """An sf.LSTM with the weights, settings, device, dtype and train/eval
        mode of an ``nn.LSTM``; it computes the same numbers."""
        if not isinstance(native, nn.LSTM):
            raise TypeError(f"from_native expects an nn.LSTM, got {type(native).__name__}")
        if native.proj_size:
            raise NotImplementedError("seqcls_fast.LSTM: proj_size > 0 is not supported")
        weight = native.weight_ih_l0
        lstm = cls(native.input_size, native.hidden_size, native.num_layers, native.bias,
                   native.batch_first, native.dropout, native.bidirectional,
                   device=weight.device, dtype=weight.dtype, memory=memory)
        lstm.load_state_dict(native.state_dict())
        return lstm.train(native.training)

    # ------------------------------------------------------------------ forward
    def forward(self, input, hx=None, lengths=None):  # noqa: A002  (nn.LSTM's name)
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, lengths)
        if not isinstance(input, torch.Tensor):
            raise TypeError("seqcls_fast.LSTM: input must be a Tensor or a PackedSequence, got "
                            f"{type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ShapeError("seqcls_fast.LSTM: input must be 3-D ([T, B, I], or [B, T, I] with "
                             f"batch_first) or 2-D unbatched [T, I], got shape {tuple(input.shape)}")
        unbatched = input.dim() == 2
        if unbatched:
            x = input.unsqueeze(1)
            if lengths is not None and not isinstance(lengths, LengthPlan):
                lengths = torch.as_tensor(lengths).reshape(1)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        hx = self._check_input_and_hx(hx, x, unbatched)
        _check_steps(x, input.shape)
        plan = LengthPlan.of(lengths, x.size(0), x.size(1), x.device, "seqcls_fast.LSTM")
        out, (h_n, c_n) = self._run(x, plan, hx)
        if unbatched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (h_n, c_n)

    def _forward_packed(self, packed, hx, lengths):
        if lengths is not None:
            raise ValueError("seqcls_fast.LSTM: lengths must be None when input is a "
                             "PackedSequence (it carries its own lengths)")
        # Padded, in the caller's batch order (as hx and h_n are).
        padded, lens = pad_packed_sequence(packed)
        hx = self._check_input_and_hx(hx, padded, False)
        out, hidden = self._run(padded, LengthPlan(lens, padded.size(0), padded.size(1)), hx)
        if packed.sorted_indices is not None:
            out = out.index_select(1, packed.sorted_indices)
            lens = lens.index_select(0, packed.sorted_indices.cpu())
        data = pack_padded_sequence(out, lens, enforce_sorted=True).data
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices), hidden

    def _check_input_and_hx(self, hx, x, unbatched):
        """Checks x's feature size and dtype, and hx's form; returns hx
        batched (or None)."""
        if x.size(-1) != self.input_size:
            raise ShapeError(f"seqcls_fast.LSTM: input must have {self.input_size} features "
                             f"(input_size), got {x.size(-1)}")
        weight = self.weight_ih_l0
        if x.dtype != weight.dtype:
            raise DtypeMismatchError(f"seqcls_fast.LSTM: input dtype {x.dtype} does not match the "
                            f"parameters' dtype {weight.dtype}")
        if hx is None:
            return None
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise StateTypeError("seqcls_fast.LSTM: hx must be a tuple (h_0, c_0)")
        expected = (self.num_layers * (2 if self.bidirectional else 1), x.size(1),
                    self.hidden_size)
        states = []
        for name, state in zip(("h_0", "c_0"), hx):
            if not isinstance(state, torch.Tensor):
                raise StateTypeError(f"seqcls_fast.LSTM: {name} must be a Tensor")
            if unbatched:
                if state.dim() != 2:
                    raise ShapeError(f"seqcls_fast.LSTM: for unbatched input {name} must be 2-D "
                                     f"{list(expected[::2])}, got {tuple(state.shape)}")
                state = state.unsqueeze(1)
            if tuple(state.shape) != expected:
                raise ShapeError(f"seqcls_fast.LSTM: {name} must have shape "
                                 f"(num_layers * num_directions, B, H) = {expected}, got "
                                 f"{tuple(state.shape)}")
            states.append(state)
        return tuple(states)

    def _checked_run(self, x, plan, hx=None, pool=None):
        """``_run`` behind forward's checks of x (features, dtype, T >= 1) and
        hx (batched): the entry for the classifier's online pooling and for
        streaming, which hold x time-major and a plan already."""
        hx = self._check_input_and_hx(hx, x, False)
        _check_steps(x, x.shape)
        return self._run(x, plan, hx, pool)

    def _run(self, x, plan, hx, pool=None):
        """x [T, B, I] time-major, plan a LengthPlan or None (all T) ->
        (output [T, B, D*H], (h_n, c_n)). Every layer and direction, and their
        backward, read the one plan. ``pool`` (inference, unidirectional):
        the keyword arguments of ``lstm_layer_pooled`` (pooling, query,
        key_weight, key_bias, pool_state); the top layer then pools its output
        as it runs and the first result is its pooling state instead."""
        table = plan.table if plan is not None else None
        num_directions = 2 if self.bidirectional else 1
        low_memory = low_memory_for(self.memory, x, self.hidden_size)
        h0, c0 = hx if hx is not None else (None, None)
        layer_input = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                suffix = f"l{layer}" + ("_reverse" if direction else "")
                index = layer * num_directions + direction
                args = (h0[index] if h0 is not None else None,
                        c0[index] if c0 is not None else None,
                        getattr(self, "weight_ih_" + suffix), getattr(self, "weight_hh_" + suffix),
                        getattr(self, "bias_ih_" + suffix) if self.bias else None,
                        getattr(self, "bias_hh_" + suffix) if self.bias else None)
                if pool is not None and layer == self.num_layers - 1:
                    h, c, out = lstm_layer_pooled(layer_input, *args, plan=table, **pool)
                else:
                    out, h, c = lstm_layer(layer_input, None, *args, bool(direction), table,
                                           low_memory)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        return layer_input, (torch.stack(h_n), torch.stack(c_n))
