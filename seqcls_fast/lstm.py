"""sf.LSTM: a drop-in nn.LSTM that also takes a padded batch with lengths."""
from torch import nn

from ._ops import lstm_layer, lstm_layer_pooled
from .errors import StateTypeError
from .layout import MEMORY_MODES
from .recurrent import RecurrentLayers

# memory="auto" picks "low" for a batch where "fast" would keep more than this
# per layer-direction (6H values per padded step and row; see the README's
# "Long sequences": there "low" cost 3-4% above ~200 MB and up to 26% at 50 MB).
AUTO_LOW_MEMORY_BYTES = 128 * 2**20


def low_memory_for(memory, x, hidden_size, kept_per_unit=6):
    """Whether a layer run on x [T, B, *] keeps only what memory="low" keeps;
    "auto" counts ``kept_per_unit`` values per hidden unit, padded step and
    row for "fast" (the LSTM 6: 4 gates, c, h_prev; the GRU 5)."""
    if memory != "auto":
        return memory == "low"
    kept = kept_per_unit * hidden_size * x.size(0) * x.size(1) * x.element_size()
    return kept > AUTO_LOW_MEMORY_BYTES


def check_memory_mode(memory, where):
    if memory not in MEMORY_MODES:
        raise ValueError(f"{where}: memory must be one of {MEMORY_MODES}, got {memory!r}")
    return memory


class LSTM(RecurrentLayers):
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

    A subclass of ``nn.RNNBase`` (through ``RecurrentLayers``), not of
    ``nn.LSTM``, so torch.compile traces through it (Dynamo refuses modules
    that are ``nn.LSTM`` instances).
    """

    _name = "seqcls_fast.LSTM"
    _state_names = ("h_0", "c_0")
    _native = nn.LSTM

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 memory="fast"):
        if proj_size:
            raise NotImplementedError("seqcls_fast.LSTM: proj_size > 0 is not supported")
        super().__init__("LSTM", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=float(dropout),
                         bidirectional=bidirectional, proj_size=0, device=device, dtype=dtype)
        self.memory = check_memory_mode(memory, "seqcls_fast.LSTM")

    @classmethod
    def _check_native(cls, native):
        if native.proj_size:
            raise NotImplementedError("seqcls_fast.LSTM: proj_size > 0 is not supported")

    # ------------------------------------------------------------ hx and layers
    def _to_states(self, hx):
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise StateTypeError("seqcls_fast.LSTM: hx must be a tuple (h_0, c_0)")
        return tuple(hx)

    def _from_states(self, states):
        h_n, c_n = states
        return h_n, c_n

    def _layer_options(self, x):
        return low_memory_for(self.memory, x, self.hidden_size)

    def _layer(self, x, layer, direction, initial, table, pool, low_memory):
        h0, c0 = initial if initial is not None else (None, None)
        args = (h0, c0, *self._weights(layer, direction))
        if pool is not None:
            h, c, pool_state = lstm_layer_pooled(x, *args, plan=table, **pool)
            return pool_state, (h, c)
        out, h, c = lstm_layer(x, None, *args, bool(direction), table, low_memory)
        return out, (h, c)
