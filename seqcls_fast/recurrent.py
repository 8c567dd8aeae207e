"""What sf.LSTM, sf.GRU and sf.RNN share: nn.RNNBase's parameters, every
input form nn.LSTM / nn.GRU / nn.RNN take plus ``lengths``, and the loop over layers and
directions. A subclass supplies its hx form (``_to_states``,
``_from_states``), what a run's layers share (``_layer_options``) and one
layer-direction (``_layer``)."""
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .errors import DtypeMismatchError, ShapeError, StateTypeError
from .plan import LengthPlan


class RecurrentLayers(nn.RNNBase):
    """``forward(x, hx=None, lengths=None)``: ``[T, B, I]``, ``[B, T, I]`` with
    ``batch_first``, unbatched ``[T, I]``, or a ``PackedSequence``, and a padded
    batch with ``lengths`` ([B] integers, on the CPU or on x's device, or an
    ``sf.LengthPlan``): each sequence runs exactly as if packed. Returns
    ``(output, states)``, ``states`` in the subclass's hx form.

    A subclass of ``nn.RNNBase``, not of ``nn.LSTM``/``nn.GRU``, so
    torch.compile traces through it (Dynamo refuses modules that are
    instances of those)."""

    _name = None         # "seqcls_fast.LSTM", in messages
    _state_names = ()    # the tensors of hx, in order ("h_0", "c_0")
    _native = None       # the nn module from_native takes (nn.LSTM, nn.GRU, nn.RNN)

    def extra_repr(self):
        text = super().extra_repr()
        return text if self.memory == "fast" else f"{text}, memory={self.memory!r}"

    @classmethod
    def from_native(cls, native, memory="fast"):
        """Ours with the weights, settings, device, dtype and train/eval mode
        of the native module (an nn.LSTM for sf.LSTM, an nn.GRU for sf.GRU);
        it computes the same numbers."""
        if not isinstance(native, cls._native):
            raise TypeError(f"from_native expects an nn.{cls._native.__name__}, got "
                            f"{type(native).__name__}")
        cls._check_native(native)
        weight = native.weight_ih_l0
        module = cls(native.input_size, native.hidden_size, num_layers=native.num_layers,
                     bias=native.bias, batch_first=native.batch_first, dropout=native.dropout,
                     bidirectional=native.bidirectional, device=weight.device,
                     dtype=weight.dtype, memory=memory, **cls._native_options(native))
        module.load_state_dict(native.state_dict())
        return module.train(native.training)

    @classmethod
    def _check_native(cls, native):
        """Refuses a native module with options we lack (none by default)."""

    @classmethod
    def _native_options(cls, native):
        """Constructor arguments of ours read from the native module beyond
        nn.RNNBase's (sf.RNN: its nonlinearity)."""
        return {}

    # ------------------------------------------------------------------ forward
    def forward(self, input, hx=None, lengths=None):  # noqa: A002  (nn.LSTM's name)
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, lengths)
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{self._name}: input must be a Tensor or a PackedSequence, got "
                            f"{type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ShapeError(f"{self._name}: input must be 3-D ([T, B, I], or [B, T, I] with "
                             f"batch_first) or 2-D unbatched [T, I], got shape "
                             f"{tuple(input.shape)}")
        unbatched = input.dim() == 2
        if unbatched:
            x = input.unsqueeze(1)
            if lengths is not None and not isinstance(lengths, LengthPlan):
                lengths = torch.as_tensor(lengths).reshape(1)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        hx = self._check_input_and_hx(hx, x, unbatched)
        self._check_steps(x, input.shape)
        plan = LengthPlan.of(lengths, x.size(0), x.size(1), x.device, self._name)
        out, states = self._run(x, plan, hx)
        if unbatched:
            return out.squeeze(1), self._from_states(tuple(s.squeeze(1) for s in states))
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, self._from_states(states)

    def _forward_packed(self, packed, hx, lengths):
        if lengths is not None:
            raise ValueError(f"{self._name}: lengths must be None when input is a "
                             "PackedSequence (it carries its own lengths)")
        # Padded, in the caller's batch order (as hx and h_n are).
        padded, lens = pad_packed_sequence(packed)
        hx = self._check_input_and_hx(hx, padded, False)
        out, states = self._run(padded, LengthPlan(lens, padded.size(0), padded.size(1)), hx)
        if packed.sorted_indices is not None:
            out = out.index_select(1, packed.sorted_indices)
            lens = lens.index_select(0, packed.sorted_indices.cpu())
        data = pack_padded_sequence(out, lens, enforce_sorted=True).data
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices), self._from_states(states)

    def _check_steps(self, x, shape):
        """x [T, B, *] needs T >= 1 unless B is 0; ``shape``: the input's as given."""
        if x.size(0) == 0 and x.size(1) > 0:
            raise ShapeError(f"{self._name}: input must have at least one time step (T >= 1), "
                             f"got shape {tuple(shape)}")

    def _check_input_and_hx(self, hx, x, unbatched):
        """Checks x's feature size and dtype, and hx's form; returns hx as a
        tuple of batched state tensors (or None)."""
        if x.size(-1) != self.input_size:
            raise ShapeError(f"{self._name}: input must have {self.input_size} features "
                             f"(input_size), got {x.size(-1)}")
        weight = self.weight_ih_l0
        if x.dtype != weight.dtype:
            raise DtypeMismatchError(f"{self._name}: input dtype {x.dtype} does not match the "
                                     f"parameters' dtype {weight.dtype}")
        if hx is None:
            return None
        expected = (self.num_layers * (2 if self.bidirectional else 1), x.size(1),
                    self.hidden_size)
        states = []
        for name, state in zip(self._state_names, self._to_states(hx)):
            if not isinstance(state, torch.Tensor):
                raise StateTypeError(f"{self._name}: {name} must be a Tensor")
            if unbatched:
                if state.dim() != 2:
                    raise ShapeError(f"{self._name}: for unbatched input {name} must be 2-D "
                                     f"{list(expected[::2])}, got {tuple(state.shape)}")
                state = state.unsqueeze(1)
            if tuple(state.shape) != expected:
                raise ShapeError(f"{self._name}: {name} must have shape "
                                 f"(num_layers * num_directions, B, H) = {expected}, got "
                                 f"{tuple(state.shape)}")
            states.append(state)
        return tuple(states)

    def _to_states(self, hx):
        """hx as given -> the tuple of its state tensors (raising on a wrong form)."""
        raise NotImplementedError

    def _from_states(self, states):
        """The tuple of final states -> the form forward returns."""
        raise NotImplementedError

    def _checked_run(self, x, plan, hx=None, pool=None):
        """``_run`` behind forward's checks of x (features, dtype, T >= 1) and
        hx (batched): the entry for the classifier's online pooling and for
        streaming, which hold x time-major and a plan already."""
        hx = self._check_input_and_hx(hx, x, False)
        self._check_steps(x, x.shape)
        return self._run(x, plan, hx, pool)

    def _run(self, x, plan, hx, pool=None):
        """x [T, B, I] time-major, plan a LengthPlan or None (all T), hx a
        tuple of batched states or None -> (output [T, B, D*H], tuple of final
        states [L*D, B, H]). Every layer and direction, and their backward,
        read the one plan. ``pool`` (inference, unidirectional; sf.LSTM): the
        keyword arguments of ``lstm_layer_pooled`` (pooling, query,
        key_weight, key_bias, pool_state); the top layer then pools its output
        as it runs and the first result is its pooling state instead."""
        table = plan.table if plan is not None else None
        num_directions = 2 if self.bidirectional else 1
        options = self._layer_options(x)
        layer_input = x
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                initial = tuple(s[index] for s in hx) if hx is not None else None
                pool_here = pool if layer == self.num_layers - 1 else None
                out, states = self._layer(layer_input, layer, direction, initial, table,
                                          pool_here, options)
                outputs.append(out)
                finals.append(states)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        return layer_input, tuple(torch.stack(s) for s in zip(*finals))

    def _weights(self, layer, direction):
        """(w_ih, w_hh, b_ih, b_hh) of one layer-direction (biases None without bias)."""
        suffix = f"l{layer}" + ("_reverse" if direction else "")
        return (getattr(self, "weight_ih_" + suffix), getattr(self, "weight_hh_" + suffix),
                getattr(self, "bias_ih_" + suffix) if self.bias else None,
                getattr(self, "bias_hh_" + suffix) if self.bias else None)

    def _layer_options(self, x):
        """What every layer of one run on x [T, B, I] shares (handed to _layer)."""
        return None

    def _layer(self, x, layer, direction, initial, table, pool, options):
        """One layer-direction: (output [T, B, H], tuple of its final states)."""
        raise NotImplementedError


class HiddenStateLayers(RecurrentLayers):
    """A cell whose only state is h (sf.GRU, sf.RNN): hx is one tensor h_0,
    and forward returns h_n alone."""

    _state_names = ("h_0",)

    def _to_states(self, hx):
        if not isinstance(hx, torch.Tensor):
            raise StateTypeError(f"{self._name}: hx must be a Tensor h_0, got "
                                 f"{type(hx).__name__}")
        return (hx,)

    def _from_states(self, states):
        return states[0]

