"""sf.GRU: a drop-in nn.GRU that also takes a padded batch with lengths."""
from torch import nn

from ._ops import gru_layer, gru_layer_pooled
from .lstm import check_memory_mode, low_memory_for
from .recurrent import HiddenStateLayers


class GRU(HiddenStateLayers):
    """Same constructor, parameters, state_dict and repr as ``nn.GRU`` (gate
    order r, z, n; ``b_hn`` inside the reset product), with one more forward
    argument, ``lengths``.

    ``forward(x, hx=None, lengths=None)`` takes every input nn.GRU takes
    (``[T, B, I]``, ``[B, T, I]`` with ``batch_first``, unbatched ``[T, I]``, a
    ``PackedSequence``; ``hx`` one tensor h_0) and a padded batch with
    ``lengths`` ([B] integers, on the CPU or on x's device, or an
    ``sf.LengthPlan``). With lengths, each sequence is processed exactly as if
    packed: outputs past a length are 0, ``h_n`` is the state at each
    sequence's last valid step, and the reverse direction starts there.

    ``memory`` (not in nn.GRU), as sf.LSTM's: ``"fast"`` keeps each valid
    step's gates, ``h_{s-1} W_hn^T + b_hn`` and h_prev for the backward;
    ``"low"`` keeps nothing beyond the output and rebuilds them in the
    backward (same results up to rounding); ``"auto"``: ``"low"`` above
    ``AUTO_LOW_MEMORY_BYTES`` per layer-direction (5H values per padded step
    and row).

    The kernels are sf.LSTM's paths: on the CPU in float32 the persistent
    recurrence (AVX-512 or AVX2), else each step a GEMM and a fused pointwise
    kernel (float64; CUDA, also float16/bfloat16 storage with float32 math,
    run so far on the CUDA emulator only). A classifier's top layer pools
    online in inference (``seqcls_fast::gru_layer_pooled_forward``).
    """

    _name = "seqcls_fast.GRU"
    _native = nn.GRU

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, memory="fast"):
        super().__init__("GRU", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=float(dropout),
                         bidirectional=bidirectional, device=device, dtype=dtype)
        self.memory = check_memory_mode(memory, "seqcls_fast.GRU")

    def _layer_options(self, x):
        return low_memory_for(self.memory, x, self.hidden_size, kept_per_unit=5)

    def _layer(self, x, layer, direction, initial, table, pool, low_memory):
        h0 = initial[0] if initial is not None else None
        if pool is not None:
            h, pool_state = gru_layer_pooled(x, h0, *self._weights(layer, direction), plan=table,
                                             **pool)
            return pool_state, (h,)
        out, h = gru_layer(x, None, h0, *self._weights(layer, direction), bool(direction), table,
                           low_memory)
        return out, (h,)
