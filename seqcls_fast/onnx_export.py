"""ONNX export: the seqcls_fast operators translated into standard ONNX ops,
for ``torch.onnx.export(..., dynamo=True)``'s ``custom_translation_table``.

    torch.onnx.export(model.eval(), (x, lengths), "model.onnx", dynamo=True,
                      custom_translation_table=sf.onnx_translation_table(),
                      dynamic_shapes={"x": {0: batch, 1: steps}, "lengths": {0: batch}})

The table must be passed: torch.onnx (2.15) builds a fresh registry for every
export from its own op library plus that argument, and offers no public way to
add to it globally (the dynamo exporter has no counterpart of the TorchScript
exporter's ``register_custom_op_symbolic``).

What each operator becomes:
  * ``lstm_layer_forward``: one ONNX ``LSTM`` node (forward or reverse), its
    ``sequence_lens`` the lengths (plan row 2) as int32, weights reordered
    from nn.LSTM's gate order (i, f, g, o) to ONNX's (i, o, f, c); outputs past
    each length are zeroed with a Where, as ONNX leaves them unspecified. The
    three saved-activation outputs (backward only) are empty tensors.
  * ``gru_layer_forward``: one ONNX ``GRU`` node the same way, gate order
    (r, z, n) -> (z, r, h), ``linear_before_reset=1`` (PyTorch's ``b_hn``).
  * ``rnn_layer_forward``: one ONNX ``RNN`` node, ``activations`` Tanh or Relu.
  * ``lstm_layer_pooled_forward`` (a unidirectional classifier exported
    under ``torch.no_grad()``): the ``lstm_layer_forward`` translation, then
    the pooling state in closed form over the valid steps (ReduceMax, Exp,
    ReduceSum), continuing the given state; ``gru_layer_pooled_forward``
    likewise on the ``gru_layer_forward`` translation.
  * ``masked_attention_pool_forward``: MatMul scores, a Softmax masked by
    ``Range(T) < lengths`` (Where), a MatMul for the weighted sum; float32
    inside for float16 inputs, as the kernels.
  * ``length_plan``: the same [3, B] int64 plan: row 0 and 1 from ``TopK``
    (descending; ONNX breaks ties by lower index, the plan's stable order), row
    2 the lengths. The translated graph reads only row 2.

Not exportable: training (autograd, dropout between layers; export in eval
mode), and the backward operators. Lengths are not validated in the graph
(pass 1 <= lengths <= T). ONNX LSTM has no bfloat16 kernel in most runtimes.

Importing this module or building the table needs neither onnx nor onnxscript;
the translations import onnxscript when the exporter calls them.
"""
from ._ops import ops as _ops


def _onnx():
    """(opset18 ops, onnx_ir), imported when a translation runs."""
    from onnxscript import ir
    from onnxscript import opset18 as op
    return op, ir


_HALF = ("FLOAT16", "BFLOAT16")


def _is_half(value):
    return value.dtype is not None and value.dtype.name in _HALF


def _lengths_int64(op, ir, lengths, plan):
    """The lengths in caller order as int64 [B], or None for all T."""
    if plan is not None:
        return op.Gather(plan, op.Constant(value_int=2), axis=0)
    if lengths is not None:
        return op.Cast(lengths, to=ir.DataType.INT64)
    return None


def _step_range(op, sequence, axis):
    """int64 [T]: 0 .. T-1 for the size of ``sequence`` along ``axis``."""
    steps = op.Squeeze(op.Shape(sequence, start=axis, end=axis + 1))
    return op.Range(op.Constant(value_int=0), steps, op.Constant(value_int=1))


# ONNX's gate order as positions in PyTorch's: LSTM (i, f, g, o) -> (i, o, f,
# c); GRU (r, z, n) -> (z, r, h).
_LSTM_GATES = (0, 3, 1, 2)
_GRU_GATES = (1, 0, 2)


def _onnx_gate_order(op, ir, tensor, hidden, gates=_LSTM_GATES):
    """Rows of a [G * H, ...] PyTorch RNN tensor, its blocks of H rows in
    ONNX's gate order (``gates``: the PyTorch block of each ONNX block)."""
    rows = [r for start in gates for r in range(start * hidden, (start + 1) * hidden)]
    return op.Gather(tensor, op.Constant(value=ir.tensor(rows, dtype=ir.DataType.INT64)), axis=0)


def _onnx_rnn_inputs(op, ir, w_ih, w_hh, b_ih, b_hh, gates):
    """W, R and B (None without bias) of an ONNX LSTM, GRU or RNN node from
    PyTorch's weights: [1, G*H, I], [1, G*H, H], [1, 2*G*H] = [Wb, Rb]."""
    hidden = w_hh.shape[1]
    if not isinstance(hidden, int):
        raise ValueError("seqcls_fast ONNX export: the recurrent weights need a static shape")
    weights = op.Unsqueeze(_onnx_gate_order(op, ir, w_ih, hidden, gates), [0])
    recurrent = op.Unsqueeze(_onnx_gate_order(op, ir, w_hh, hidden, gates), [0])
    bias = None
    if b_ih is not None:
        bias = op.Unsqueeze(op.Concat(_onnx_gate_order(op, ir, b_ih, hidden, gates),
                                      _onnx_gate_order(op, ir, b_hh, hidden, gates), axis=0), [0])
    return hidden, weights, recurrent, bias


def _masked_output(op, ir, y, x, lens):
    """An ONNX RNN's Y [T, 1, B, H] as [T, B, H], zero past each length (ONNX
    leaves it unspecified there; ours is 0)."""
    output = op.Squeeze(y, [1])
    if lens is None:
        return output
    valid = op.Less(op.Unsqueeze(_step_range(op, x, 0), [1]), op.Unsqueeze(lens, [0]))
    return op.Where(op.Unsqueeze(valid, [2]), output, op.CastLike(0.0, output))


def _empty(op, ir, dtype, width):
    import numpy as np
    return op.Constant(value=ir.tensor(np.zeros((0, width), dtype=dtype.numpy())))


def _sequence_inputs(op, ir, lengths, plan, h0):
    """(lens int64 [B] or None, sequence_lens int32 or None, initial_h [1, B, H]
    or None) of an ONNX LSTM or GRU node."""
    lens = _lengths_int64(op, ir, lengths, plan)
    sequence_lens = op.Cast(lens, to=ir.DataType.INT32) if lens is not None else None
    return lens, sequence_lens, op.Unsqueeze(h0, [0]) if h0 is not None else None


def _empty_saved(op, ir, x, gates, hidden):
    """The forward operators' saved activations (gates [0, gates*H], cell, h_prev),
    empty: they feed only the backward, which an ONNX graph lacks."""
    state_dtype = ir.DataType.FLOAT if _is_half(x) else x.dtype
    return (_empty(op, ir, x.dtype, gates * hidden), _empty(op, ir, state_dtype, hidden),
            _empty(op, ir, x.dtype, hidden))


# low_memory changes only what the backward reads, so the graph is the same.
def lstm_layer_forward(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse: bool,
                       save_activations: bool, plan=None, low_memory: bool = False):
    """seqcls_fast::lstm_layer_forward -> one ONNX LSTM node."""
    op, ir = _onnx()
    hidden, weights, recurrent, bias = _onnx_rnn_inputs(op, ir, w_ih, w_hh, b_ih, b_hh,
                                                        _LSTM_GATES)
    lens, sequence_lens, initial_h = _sequence_inputs(op, ir, lengths, plan, h0)
    initial_c = op.Unsqueeze(c0, [0]) if c0 is not None else None
    y, y_h, y_c = op.LSTM(x, weights, recurrent, bias, sequence_lens, initial_h, initial_c,
                          direction="reverse" if reverse else "forward", hidden_size=hidden)
    return (_masked_output(op, ir, y, x, lens), op.Squeeze(y_h, [0]), op.Squeeze(y_c, [0]),
            *_empty_saved(op, ir, x, 4, hidden))


def gru_layer_forward(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, reverse: bool,
                      save_activations: bool, plan=None, low_memory: bool = False):
    """seqcls_fast::gru_layer_forward -> one ONNX GRU node, linear_before_reset=1
    (b_hn inside the reset product, as nn.GRU)."""
    op, ir = _onnx()
    hidden, weights, recurrent, bias = _onnx_rnn_inputs(op, ir, w_ih, w_hh, b_ih, b_hh,
                                                        _GRU_GATES)
    lens, sequence_lens, initial_h = _sequence_inputs(op, ir, lengths, plan, h0)
    y, y_h = op.GRU(x, weights, recurrent, bias, sequence_lens, initial_h,
                    direction="reverse" if reverse else "forward", hidden_size=hidden,
                    linear_before_reset=1)
    return (_masked_output(op, ir, y, x, lens), op.Squeeze(y_h, [0]),
            *_empty_saved(op, ir, x, 3, hidden))


def rnn_layer_forward(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity: str, reverse: bool,
                      save_activations: bool, plan=None, low_memory: bool = False):
    """seqcls_fast::rnn_layer_forward -> one ONNX RNN node, activation Tanh or
    Relu."""
    op, ir = _onnx()
    hidden, weights, recurrent, bias = _onnx_rnn_inputs(op, ir, w_ih, w_hh, b_ih, b_hh, (0,))
    lens, sequence_lens, initial_h = _sequence_inputs(op, ir, lengths, plan, h0)
    y, y_h = op.RNN(x, weights, recurrent, bias, sequence_lens, initial_h,
                    activations=["Relu" if nonlinearity == "relu" else "Tanh"],
                    direction="reverse" if reverse else "forward", hidden_size=hidden)
    gates, _cell, h_prev = _empty_saved(op, ir, x, 1, hidden)
    return _masked_output(op, ir, y, x, lens), op.Squeeze(y_h, [0]), gates, h_prev


def lstm_layer_pooled_forward(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, pooling: str, query,
                              key_weight, key_bias, pool_max, pool_denom, pool_sum, plan=None):
    """seqcls_fast::lstm_layer_pooled_forward -> the LSTM node of
    lstm_layer_forward and the pooling state over its valid outputs."""
    output, h_n, c_n, *_saved = lstm_layer_forward(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                   False, False, plan)
    state = _pool_state(x, output, lengths, plan, pooling, query, key_weight, key_bias,
                        (pool_max, pool_denom, pool_sum))
    return (h_n, c_n, *state)


def gru_layer_pooled_forward(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, pooling: str, query,
                             key_weight, key_bias, pool_max, pool_denom, pool_sum, plan=None):
    """seqcls_fast::gru_layer_pooled_forward -> the GRU node of
    gru_layer_forward and the pooling state over its valid outputs."""
    output, h_n, *_saved = gru_layer_forward(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, False, False,
                                             plan)
    state = _pool_state(x, output, lengths, plan, pooling, query, key_weight, key_bias,
                        (pool_max, pool_denom, pool_sum))
    return (h_n, *state)


def _pool_state(x, output, lengths, plan, pooling, query, key_weight, key_bias, state):
    """The online pooling state (max [B], denom [B], sum [B, H], in the state
    dtype) after a layer's output [T, B, H] (0 past each length), in closed
    form over the valid steps (ReduceMax, Exp, ReduceSum), continuing `state`
    (three Nones: empty)."""
    op, ir = _onnx()
    pool_max, pool_denom, pool_sum = state
    values = op.Cast(output, to=ir.DataType.FLOAT) if _is_half(x) else output  # state dtype
    if pool_max is None:  # an empty state: -inf, 0, 0
        zeros = op.ReduceSum(op.Mul(values, op.CastLike(0.0, values)), op.Constant(value_ints=[0]),
                             keepdims=0)                                       # [B, H]
        pool_sum = zeros
        pool_denom = op.ReduceSum(zeros, op.Constant(value_ints=[1]), keepdims=0)  # [B]
        pool_max = op.Add(pool_denom, op.CastLike(float("-inf"), pool_denom))
    if pooling == "mean":
        pool_sum = op.Add(pool_sum, op.ReduceSum(values, op.Constant(value_ints=[0]), keepdims=0))
    elif pooling == "attention":
        keys = values
        if key_weight is not None:
            weight = op.CastLike(key_weight, values)
            keys = op.MatMul(values, op.Transpose(weight, perm=[1, 0]))
            if key_bias is not None:
                keys = op.Add(keys, op.CastLike(key_bias, values))
            keys = op.Tanh(keys)
        scores = op.MatMul(keys, op.CastLike(query, values))                   # [T, B]
        lens = _lengths_int64(op, ir, lengths, plan)
        if lens is not None:
            valid = op.Less(op.Unsqueeze(_step_range(op, x, 0), [1]), op.Unsqueeze(lens, [0]))
            scores = op.Where(valid, scores, op.CastLike(float("-inf"), scores))
        merged = op.Max(pool_max, op.ReduceMax(scores, op.Constant(value_ints=[0]), keepdims=0))
        weights = op.Exp(op.Sub(scores, op.Unsqueeze(merged, [0])))           # 0 where masked
        keep = op.Exp(op.Sub(pool_max, merged))                               # 0 for -inf
        pool_denom = op.Add(op.Mul(pool_denom, keep),
                            op.ReduceSum(weights, op.Constant(value_ints=[0]), keepdims=0))
        weighted = op.ReduceSum(op.Mul(op.Unsqueeze(weights, [2]), values),
                                op.Constant(value_ints=[0]), keepdims=0)
        pool_sum = op.Add(op.Mul(pool_sum, op.Unsqueeze(keep, [1])), weighted)
        pool_max = merged
    return pool_max, pool_denom, pool_sum


def masked_attention_pool_forward(values, keys, query, lengths, plan=None):
    """seqcls_fast::masked_attention_pool_forward -> MatMul, masked Softmax, MatMul."""
    op, ir = _onnx()
    storage = values.dtype
    half = _is_half(values)
    if half:  # float32 scores, softmax and sums, as the kernels
        values, query = op.Cast(values, to=ir.DataType.FLOAT), op.Cast(query, to=ir.DataType.FLOAT)
        keys = op.Cast(keys, to=ir.DataType.FLOAT) if keys is not None else None
    scores = op.MatMul(keys if keys is not None else values, query)            # [B, T]
    lens = _lengths_int64(op, ir, lengths, plan)
    if lens is not None:
        valid = op.Less(op.Unsqueeze(_step_range(op, values, 1), [0]), op.Unsqueeze(lens, [1]))
        scores = op.Where(valid, scores, op.CastLike(float("-inf"), scores))
    weights = op.Softmax(scores, axis=-1)                                      # 0 where masked
    pooled = op.Squeeze(op.MatMul(op.Unsqueeze(weights, [1]), values), [1])    # [B, D]
    if half:
        return op.Cast(pooled, to=storage), op.Cast(weights, to=storage)
    return pooled, weights


def length_plan(lengths, steps, batch, device=None):
    """seqcls_fast::length_plan -> [3, B] int64: TopK order and sorted lengths, lengths."""
    op, ir = _onnx()
    lens = op.Cast(lengths, to=ir.DataType.INT64)
    sorted_lens, order = op.TopK(lens, op.Shape(lens), axis=0, largest=1, sorted=1)
    return op.Concat(op.Unsqueeze(order, [0]), op.Unsqueeze(sorted_lens, [0]),
                     op.Unsqueeze(lens, [0]), axis=0)


def onnx_translation_table():
    """``{OpOverload: translation}`` for ``torch.onnx.export(...,
    custom_translation_table=...)``: every seqcls_fast forward operator."""
    return {
        _ops.lstm_layer_forward.default: lstm_layer_forward,
        _ops.gru_layer_forward.default: gru_layer_forward,
        _ops.rnn_layer_forward.default: rnn_layer_forward,
        _ops.lstm_layer_pooled_forward.default: lstm_layer_pooled_forward,
        _ops.gru_layer_pooled_forward.default: gru_layer_pooled_forward,
        _ops.masked_attention_pool_forward.default: masked_attention_pool_forward,
        _ops.length_plan.default: length_plan,
    }
