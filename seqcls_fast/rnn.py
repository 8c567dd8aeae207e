"""sf.RNN: nn.RNN's drop-in (the Elman RNN, tanh or relu) with ``lengths``, on
the shared recurrent driver (seqcls_fast::rnn_layer_forward)."""
from torch import nn

from ._ops import rnn_layer
from .lstm import check_memory_mode, low_memory_for
from .recurrent import HiddenStateLayers

NONLINEARITIES = ("tanh", "relu")


class RNN(HiddenStateLayers):
    """Same constructor, parameters, state_dict and repr as ``nn.RNN``
    (``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, ``nonlinearity`` "tanh" or
    "relu"), with one more forward argument, ``lengths``.

    ``forward(x, hx=None, lengths=None)`` takes every input nn.RNN takes
    (``[T, B, I]``, ``[B, T, I]`` with ``batch_first``, unbatched ``[T, I]``, a
    ``PackedSequence``; ``hx`` one tensor h_0) and a padded batch with
    ``lengths`` ([B] integers, on the CPU or on x's device, or an
    ``sf.LengthPlan``), each sequence processed exactly as if packed.

    ``memory`` (not in nn.RNN), as sf.LSTM's: ``"fast"`` keeps each valid
    step's h and h_prev for the backward, ``"low"`` nothing beyond the output;
    ``"auto"``: ``"low"`` above ``AUTO_LOW_MEMORY_BYTES`` per layer-direction
    (2H values per padded step and row).

    Each step is a GEMM and a fused pointwise kernel, on the CPU (float32,
    float64) and on CUDA (also float16/bfloat16 storage with float32 math; run
    so far on the CUDA emulator only). The persistent CPU recurrence is the
    LSTM's and the GRU's only.
    """

    _name = "seqcls_fast.RNN"
    _native = nn.RNN

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 memory="fast"):
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             "'relu'.")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         dropout=float(dropout), bidirectional=bidirectional, device=device,
                         dtype=dtype)
        self.nonlinearity = nonlinearity
        self.memory = check_memory_mode(memory, "seqcls_fast.RNN")

    @classmethod
    def _native_options(cls, native):
        return {"nonlinearity": native.nonlinearity}

    def _layer_options(self, x):
        return low_memory_for(self.memory, x, self.hidden_size, kept_per_unit=2)

    def _layer(self, x, layer, direction, initial, table, pool, low_memory):
        if pool is not None:
            raise NotImplementedError("seqcls_fast.RNN: online pooling is built for the LSTM "
                                      "and the GRU")
        h0 = initial[0] if initial is not None else None
        out, h = rnn_layer(x, None, h0, *self._weights(layer, direction), self.nonlinearity,
                           bool(direction), table, low_memory)
        return out, (h,)
