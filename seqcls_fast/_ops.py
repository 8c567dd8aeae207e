"""The seqcls_fast operators: fake (shape) kernels for torch.compile and
autograd formulas, wired with torch.library onto the schemas in csrc/ops.cpp.

The kernels themselves are C++/CUDA; this file holds no math.
"""
import torch

from . import reference  # plain PyTorch, imports nothing of ours: no cycle
from ._build import load_extension

_C = load_extension()  # the schemas and kernels, checked against this torch

ops = torch.ops.seqcls_fast

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _state_dtype(dtype):
    """The cell state is kept in float32 when storage is half precision."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


# --------------------------------------------- what the LSTM and GRU share
def _packed_rows(x, lengths, plan):
    """N, the packed rows of a layer on x [T, B, I]: T * B without lengths,
    else sum(lengths), known only from the data."""
    if lengths is None and plan is None:
        return x.shape[0] * x.shape[1]
    return torch.library.get_ctx().new_dynamic_size()


def _upstream_or_zeros(x, hidden, grads):
    """The upstream gradients of a layer's (output [T, B, H], then states
    [B, H] ...), zeros for those autograd left as None (set_materialize_grads
    is off)."""
    steps, batch = x.shape[0], x.shape[1]
    shapes = [(steps, batch, hidden)] + [(batch, hidden)] * (len(grads) - 1)
    return [g if g is not None else x.new_zeros(shape) for g, shape in zip(grads, shapes)]


def _check_differentiable(ctx, op):
    if not hasattr(ctx, "reverse"):
        raise RuntimeError(f"seqcls_fast: {op} was called with save_activations=False and "
                           "cannot be differentiated")


# ----------------------------------------------------------------- LSTM layer
@torch.library.register_fake("seqcls_fast::lstm_layer_forward")
def _lstm_layer_forward_fake(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse,
                             save_activations, plan=None, low_memory=False):
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    if not save_activations:
        gate_rows = cell_rows = 0
    elif low_memory:  # no gates; cell checkpoints, B per backward chunk (data-dependent)
        gate_rows, cell_rows = 0, torch.library.get_ctx().new_dynamic_size()
    else:
        gate_rows = cell_rows = _packed_rows(x, lengths, plan)
    return (
        x.new_empty(steps, batch, hidden),
        x.new_empty(batch, hidden),
        x.new_empty(batch, hidden),
        x.new_empty(gate_rows, 4 * hidden),
        x.new_empty(cell_rows, hidden, dtype=_state_dtype(x.dtype)),
        x.new_empty(gate_rows, hidden),
    )


@torch.library.register_fake("seqcls_fast::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_h_n, grad_c_n, x, lengths, c0, w_ih, w_hh,
                              gates, cell, h_prev, reverse, compute_grad_x, plan=None):
    return _lstm_gradients_fake(x, w_ih, w_hh, compute_grad_x)


@torch.library.register_fake("seqcls_fast::lstm_layer_backward_recompute")
def _lstm_layer_backward_recompute_fake(grad_output, grad_h_n, grad_c_n, x, lengths, h0, c0,
                                        w_ih, w_hh, b_ih, b_hh, output, cell, reverse,
                                        compute_grad_x, plan=None):
    return _lstm_gradients_fake(x, w_ih, w_hh, compute_grad_x)


def _grad_x_fake(x, compute_grad_x):
    """A backward's grad_x: x's shape, or, not computed, a broadcast zero
    (strides 0), as the kernels return it (unrequested_grad_x)."""
    return x.new_empty(x.shape) if compute_grad_x else x.new_zeros(()).expand(x.shape)


def _lstm_gradients_fake(x, w_ih, w_hh, compute_grad_x):
    """(grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias), both backwards."""
    batch, hidden = x.shape[1], w_hh.shape[1]
    return (
        _grad_x_fake(x, compute_grad_x),
        x.new_empty(batch, hidden),
        x.new_empty(batch, hidden),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        w_hh.new_empty(w_hh.shape[0]),
    )


def _lstm_setup_context(ctx, inputs, output):
    x, lengths, h0, c0, w_ih, w_hh, b_ih, _b_hh, reverse, save_activations, plan, *rest = inputs
    if not save_activations:
        return  # inference call: backward() below raises if reached
    out, _h_n, _c_n, gates, cell, h_prev = output
    # The saved activations are outputs only to reach the backward: no
    # gradient ever flows into them, and materialized zeros for them would be
    # tens of MB filled on every training step. Unused outputs arrive as None.
    ctx.set_materialize_grads(False)
    ctx.low_memory = bool(rest and rest[0])
    # Low memory: the output (kept alive by the next layer anyway) stands in
    # for the gates and h_prev, which the backward rebuilds; `cell` holds only
    # the cell state at the start of each backward chunk.
    kept = (out, cell, out) if ctx.low_memory else (gates, cell, h_prev)
    ctx.save_for_backward(x, lengths, h0, c0, w_ih, w_hh, b_ih, _b_hh, *kept, plan)
    ctx.reverse = reverse
    ctx.has_bias = b_ih is not None
    ctx.has_h0 = h0 is not None


def _lstm_backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cell, _grad_h_prev):
    _check_differentiable(ctx, "lstm_layer_forward")
    x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, gates, cell, h_prev, plan = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
        return _lstm_backward_differentiable(
            ctx, (x, plan[2] if plan is not None else lengths, h0, c0, w_ih, w_hh, b_ih, b_hh),
            (grad_output, grad_h_n, grad_c_n))
    grad_output, grad_h_n, grad_c_n = _upstream_or_zeros(x, w_hh.shape[1],
                                                         (grad_output, grad_h_n, grad_c_n))
    need = ctx.needs_input_grad
    if ctx.low_memory:  # `gates` holds the layer's output (see _lstm_setup_context)
        grads = ops.lstm_layer_backward_recompute(
            grad_output, grad_h_n, grad_c_n, x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, gates,
            cell, ctx.reverse, need[0], plan)
    else:
        grads = ops.lstm_layer_backward(
            grad_output, grad_h_n, grad_c_n, x, lengths, c0, w_ih, w_hh, gates, cell, h_prev,
            ctx.reverse, need[0], plan)
    grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias = grads
    grad_b = grad_bias if ctx.has_bias else None
    return (grad_x if need[0] else None, None,
            grad_h0 if ctx.has_h0 else None, grad_c0 if c0 is not None else None,
            grad_w_ih, grad_w_hh, grad_b, grad_b, None, None, None, None)


def _grads_through(ctx, outputs, grads, slots, num_inputs):
    """The backward's result for an operator with ``num_inputs`` arguments,
    from ``outputs`` recomputed differentiably: the gradients of the inputs
    in ``slots`` ({argument position: tensor}) that autograd asks for, with a
    graph (create_graph=True); zeros for those the outputs do not reach."""
    kept = [(o, g) for o, g in zip(outputs, grads) if g is not None]
    wanted = {k: t for k, t in slots.items()
              if t is not None and ctx.needs_input_grad[k] and t.requires_grad}
    result = [None] * num_inputs
    if kept and wanted:
        found = torch.autograd.grad([o for o, _ in kept], list(wanted.values()),
                                    [g for _, g in kept], create_graph=True, allow_unused=True)
        for k, g in zip(wanted, found):
            result[k] = g
    for k, t in slots.items():  # asked for but not reachable: zeros, as the kernels give
        if result[k] is None and t is not None and ctx.needs_input_grad[k]:
            result[k] = torch.zeros_like(t)
    return tuple(result)


def _lstm_backward_differentiable(ctx, inputs, grads):
    """The gradients recomputed through the plain-PyTorch recurrence
    (seqcls_fast.reference.lstm_layer), so second derivatives (gradient
    penalties, Hessian-vector products) are right; used only when the
    backward itself is recorded (create_graph=True)."""
    x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh = inputs
    outputs = reference.lstm_layer(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, ctx.reverse)
    # Argument positions of the operator that can carry a gradient.
    slots = {0: x, 2: h0, 3: c0, 4: w_ih, 5: w_hh, 6: b_ih, 7: b_hh}
    return _grads_through(ctx, outputs, grads, slots, num_inputs=12)


torch.library.register_autograd("seqcls_fast::lstm_layer_forward", _lstm_backward,
                                setup_context=_lstm_setup_context)


def lstm_layer(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, plan=None,
               low_memory=False):
    """One LSTM layer in one direction, time-major: x [T, B, I] ->
    (output [T, B, H], h_n [B, H], c_n [B, H]). Keeps what the backward needs
    only when autograd will ask for it: with ``low_memory`` only the cell
    state, the backward rebuilding the gates. ``plan``: the batch's length
    plan tensor (then lengths is None)."""
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
    out, h_n, c_n, _gates, _cell, _h_prev = ops.lstm_layer_forward(
        x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, save, plan, low_memory)
    return out, h_n, c_n


# ------------------------------------------------------------------ GRU layer
@torch.library.register_fake("seqcls_fast::gru_layer_forward")
def _gru_layer_forward_fake(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, reverse, save_activations,
                            plan=None, low_memory=False):
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    rows = 0 if not save_activations or low_memory else _packed_rows(x, lengths, plan)
    return (
        x.new_empty(steps, batch, hidden),
        x.new_empty(batch, hidden),
        x.new_empty(rows, 3 * hidden),
        x.new_empty(rows, hidden, dtype=_state_dtype(x.dtype)),
        x.new_empty(rows, hidden),
    )


@torch.library.register_fake("seqcls_fast::gru_layer_backward")
def _gru_layer_backward_fake(grad_output, grad_h_n, x, lengths, w_ih, w_hh, gates, cell, h_prev,
                             reverse, compute_grad_x, plan=None):
    return _gru_gradients_fake(x, w_ih, w_hh, compute_grad_x)


@torch.library.register_fake("seqcls_fast::gru_layer_backward_recompute")
def _gru_layer_backward_recompute_fake(grad_output, grad_h_n, x, lengths, h0, w_ih, w_hh, b_ih,
                                       b_hh, output, reverse, compute_grad_x, plan=None):
    return _gru_gradients_fake(x, w_ih, w_hh, compute_grad_x)


def _gru_gradients_fake(x, w_ih, w_hh, compute_grad_x):
    """(grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh), both backwards."""
    batch, hidden = x.shape[1], w_hh.shape[1]
    return (_grad_x_fake(x, compute_grad_x), x.new_empty(batch, hidden), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), w_hh.new_empty(w_hh.shape[0]),
            w_hh.new_empty(w_hh.shape[0]))


def _gru_setup_context(ctx, inputs, output):
    x, lengths, h0, w_ih, w_hh, b_ih, b_hh, reverse, save_activations, plan, *rest = inputs
    if not save_activations:
        return  # inference call: backward() below raises if reached
    out, _h_n, gates, cell, h_prev = output
    ctx.set_materialize_grads(False)  # as for the LSTM: the saved outputs get no gradient
    ctx.low_memory = bool(rest and rest[0])
    # Low memory: the output stands in for gates and h_prev (cell is empty):
    # the backward rebuilds them.
    kept = (out, cell, out) if ctx.low_memory else (gates, cell, h_prev)
    ctx.save_for_backward(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, *kept, plan)
    ctx.reverse = reverse
    ctx.has_bias = b_ih is not None
    ctx.has_h0 = h0 is not None


def _gru_backward(ctx, grad_output, grad_h_n, _grad_gates, _grad_cell, _grad_h_prev):
    _check_differentiable(ctx, "gru_layer_forward")
    x, lengths, h0, w_ih, w_hh, b_ih, b_hh, gates, cell, h_prev, plan = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: through the plain-PyTorch GRU
        outputs = reference.gru_layer(x, plan[2] if plan is not None else lengths, h0, w_ih,
                                      w_hh, b_ih, b_hh, ctx.reverse)
        slots = {0: x, 2: h0, 3: w_ih, 4: w_hh, 5: b_ih, 6: b_hh}
        return _grads_through(ctx, outputs, (grad_output, grad_h_n), slots, num_inputs=11)
    grad_output, grad_h_n = _upstream_or_zeros(x, w_hh.shape[1], (grad_output, grad_h_n))
    need = ctx.needs_input_grad
    if ctx.low_memory:  # `gates` holds the layer's output (see _gru_setup_context)
        grads = ops.gru_layer_backward_recompute(grad_output, grad_h_n, x, lengths, h0, w_ih, w_hh,
                                                 b_ih, b_hh, gates, ctx.reverse, need[0], plan)
    else:
        grads = ops.gru_layer_backward(grad_output, grad_h_n, x, lengths, w_ih, w_hh, gates, cell,
                                       h_prev, ctx.reverse, need[0], plan)
    grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = grads
    return (grad_x if need[0] else None, None, grad_h0 if ctx.has_h0 else None, grad_w_ih,
            grad_w_hh, grad_b_ih if ctx.has_bias else None, grad_b_hh if ctx.has_bias else None,
            None, None, None, None)


torch.library.register_autograd("seqcls_fast::gru_layer_forward", _gru_backward,
                                setup_context=_gru_setup_context)


def gru_layer(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, reverse, plan=None, low_memory=False):
    """One GRU layer in one direction, time-major: x [T, B, I] ->
    (output [T, B, H], h_n [B, H]). Keeps what the backward needs only when
    autograd will ask for it; with ``low_memory`` nothing beyond the output,
    the backward rebuilding the rest. ``plan``: the batch's length plan tensor
    (then lengths is None)."""
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, w_ih, w_hh, b_ih, b_hh))
    out, h_n, _gates, _cell, _h_prev = ops.gru_layer_forward(
        x, lengths, h0, w_ih, w_hh, b_ih, b_hh, reverse, save, plan, low_memory)
    return out, h_n


# ------------------------------------------------------------------ RNN layer
@torch.library.register_fake("seqcls_fast::rnn_layer_forward")
def _rnn_layer_forward_fake(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse,
                            save_activations, plan=None, low_memory=False):
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    rows = 0 if not save_activations or low_memory else _packed_rows(x, lengths, plan)
    return (x.new_empty(steps, batch, hidden), x.new_empty(batch, hidden),
            x.new_empty(rows, hidden), x.new_empty(rows, hidden))


@torch.library.register_fake("seqcls_fast::rnn_layer_backward")
def _rnn_layer_backward_fake(grad_output, grad_h_n, x, lengths, w_ih, w_hh, gates, h_prev,
                             nonlinearity, reverse, compute_grad_x, plan=None):
    return _rnn_gradients_fake(x, w_ih, w_hh, compute_grad_x)


@torch.library.register_fake("seqcls_fast::rnn_layer_backward_recompute")
def _rnn_layer_backward_recompute_fake(grad_output, grad_h_n, x, lengths, h0, w_ih, w_hh, b_ih,
                                       b_hh, output, nonlinearity, reverse, compute_grad_x,
                                       plan=None):
    return _rnn_gradients_fake(x, w_ih, w_hh, compute_grad_x)


def _rnn_gradients_fake(x, w_ih, w_hh, compute_grad_x):
    """(grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_bias), both backwards."""
    batch, hidden = x.shape[1], w_hh.shape[1]
    return (_grad_x_fake(x, compute_grad_x), x.new_empty(batch, hidden), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), w_hh.new_empty(w_hh.shape[0]))


def _rnn_setup_context(ctx, inputs, output):
    (x, lengths, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse, save_activations, plan,
     *rest) = inputs
    if not save_activations:
        return  # inference call: backward() below raises if reached
    out, _h_n, gates, h_prev = output
    ctx.set_materialize_grads(False)  # as for the LSTM: the saved outputs get no gradient
    ctx.low_memory = bool(rest and rest[0])
    # Low memory: the output stands in for gates and h_prev, which the
    # backward rebuilds (for the RNN the gates are the output itself).
    kept = (out, out) if ctx.low_memory else (gates, h_prev)
    ctx.save_for_backward(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, *kept, plan)
    ctx.nonlinearity = nonlinearity
    ctx.reverse = reverse
    ctx.has_bias = b_ih is not None
    ctx.has_h0 = h0 is not None


def _rnn_backward(ctx, grad_output, grad_h_n, _grad_gates, _grad_h_prev):
    _check_differentiable(ctx, "rnn_layer_forward")
    x, lengths, h0, w_ih, w_hh, b_ih, b_hh, gates, h_prev, plan = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: through the plain-PyTorch RNN
        outputs = reference.rnn_layer(x, plan[2] if plan is not None else lengths, h0, w_ih,
                                      w_hh, b_ih, b_hh, ctx.nonlinearity, ctx.reverse)
        slots = {0: x, 2: h0, 3: w_ih, 4: w_hh, 5: b_ih, 6: b_hh}
        return _grads_through(ctx, outputs, (grad_output, grad_h_n), slots, num_inputs=12)
    grad_output, grad_h_n = _upstream_or_zeros(x, w_hh.shape[1], (grad_output, grad_h_n))
    need = ctx.needs_input_grad
    if ctx.low_memory:  # `gates` holds the layer's output (see _rnn_setup_context)
        grads = ops.rnn_layer_backward_recompute(grad_output, grad_h_n, x, lengths, h0, w_ih, w_hh,
                                                 b_ih, b_hh, gates, ctx.nonlinearity,
                                                 ctx.reverse, need[0], plan)
    else:
        grads = ops.rnn_layer_backward(grad_output, grad_h_n, x, lengths, w_ih, w_hh, gates,
                                       h_prev, ctx.nonlinearity, ctx.reverse, need[0], plan)
    grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_bias = grads
    grad_b = grad_bias if ctx.has_bias else None
    return (grad_x if need[0] else None, None, grad_h0 if ctx.has_h0 else None, grad_w_ih,
            grad_w_hh, grad_b, grad_b, None, None, None, None, None)


torch.library.register_autograd("seqcls_fast::rnn_layer_forward", _rnn_backward,
                                setup_context=_rnn_setup_context)


def rnn_layer(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse, plan=None,
              low_memory=False):
    """One Elman RNN layer (``nonlinearity`` "tanh" or "relu") in one
    direction, time-major: x [T, B, I] -> (output [T, B, H], h_n [B, H]); as
    gru_layer otherwise."""
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, w_ih, w_hh, b_ih, b_hh))
    out, h_n, _gates, _h_prev = ops.rnn_layer_forward(
        x, lengths, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse, save, plan, low_memory)
    return out, h_n


# ------------------------------------------- pooled last layer (inference)
@torch.library.register_fake("seqcls_fast::lstm_layer_pooled_forward")
def _lstm_layer_pooled_forward_fake(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh, pooling, query,
                                    key_weight, key_bias, pool_max, pool_denom, pool_sum,
                                    plan=None):
    batch, hidden = x.shape[1], w_hh.shape[1]
    return (x.new_empty(batch, hidden), x.new_empty(batch, hidden),
            *_pool_state_fake(x, batch, hidden))


@torch.library.register_fake("seqcls_fast::gru_layer_pooled_forward")
def _gru_layer_pooled_forward_fake(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, pooling, query,
                                   key_weight, key_bias, pool_max, pool_denom, pool_sum,
                                   plan=None):
    batch, hidden = x.shape[1], w_hh.shape[1]
    return (x.new_empty(batch, hidden), *_pool_state_fake(x, batch, hidden))


def _pool_state_fake(x, batch, hidden):
    """The online pooling state a pooled forward returns: max [B], denom [B],
    sum [B, H], in the state dtype."""
    state = _state_dtype(x.dtype)
    return (x.new_empty(batch, dtype=state), x.new_empty(batch, dtype=state),
            x.new_empty(batch, hidden, dtype=state))


def lstm_layer_pooled(x, h0, c0, w_ih, w_hh, b_ih, b_hh, pooling, query=None, key_weight=None,
                      key_bias=None, pool_state=None, plan=None):
    """The last forward layer of a classifier in inference, pooling its
    output as it runs instead of writing it: x [T, B, I] -> (h_n, c_n,
    pool_state) with pool_state = (max [B], denom [B], sum [B, H]) in the
    state dtype, continuing ``pool_state`` when given (streaming). No
    gradient flows through it."""
    pool_max, pool_denom, pool_sum = pool_state if pool_state is not None else (None,) * 3
    h_n, c_n, *state = ops.lstm_layer_pooled_forward(
        x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, pooling, query, key_weight, key_bias,
        pool_max, pool_denom, pool_sum, plan)
    return h_n, c_n, tuple(state)


def gru_layer_pooled(x, h0, w_ih, w_hh, b_ih, b_hh, pooling, query=None, key_weight=None,
                     key_bias=None, pool_state=None, plan=None):
    """lstm_layer_pooled for a GRU layer: x [T, B, I] -> (h_n, pool_state)."""
    pool_max, pool_denom, pool_sum = pool_state if pool_state is not None else (None,) * 3
    h_n, *state = ops.gru_layer_pooled_forward(
        x, None, h0, w_ih, w_hh, b_ih, b_hh, pooling, query, key_weight, key_bias, pool_max,
        pool_denom, pool_sum, plan)
    return h_n, tuple(state)


# ------------------------------------------------- masked attention pooling
@torch.library.register_fake("seqcls_fast::masked_attention_pool_forward")
def _pool_forward_fake(values, keys, query, lengths, plan=None):
    batch, steps, features = values.shape
    return values.new_empty(batch, features), values.new_empty(batch, steps)


@torch.library.register_fake("seqcls_fast::masked_attention_pool_backward")
def _pool_backward_fake(grad_pooled, grad_weights, values, keys, query, lengths, weights,
                        plan=None):
    grad_keys = values.new_empty(keys.shape) if keys is not None else values.new_empty(0)
    return values.new_empty(values.shape), grad_keys, query.new_empty(query.shape)


def _pool_setup_context(ctx, inputs, output):
    values, keys, query, lengths, plan = inputs
    _pooled, weights = output
    ctx.save_for_backward(values, keys, query, lengths, weights, plan)


def _pool_backward(ctx, grad_pooled, grad_weights):
    values, keys, query, lengths, weights, plan = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: recompute differentiably
        return _pool_backward_differentiable(
            ctx, (values, keys, query, plan[2] if plan is not None else lengths),
            (grad_pooled, grad_weights))
    if grad_pooled is None:
        grad_pooled = values.new_zeros(values.shape[0], values.shape[2])
    if grad_weights is None:
        grad_weights = torch.zeros_like(weights)
    grad_values, grad_keys, grad_query = ops.masked_attention_pool_backward(
        grad_pooled, grad_weights, values, keys, query, lengths, weights, plan)
    return grad_values, (grad_keys if keys is not None else None), grad_query, None, None


def _pool_backward_differentiable(ctx, inputs, grads):
    """The pooling gradients through seqcls_fast.reference.masked_attention_pool,
    for second derivatives (create_graph=True only)."""
    values, keys, query, lengths = inputs
    outputs = reference.masked_attention_pool(values, keys, query, lengths)
    return _grads_through(ctx, outputs, grads, {0: values, 1: keys, 2: query}, num_inputs=5)


torch.library.register_autograd("seqcls_fast::masked_attention_pool_forward", _pool_backward,
                                setup_context=_pool_setup_context)


def masked_attention_pool(values, keys, query, lengths, plan=None):
    """values [B, T, D], keys [B, T, A] or None (keys = values), query [A] ->
    (pooled [B, D], weights [B, T]). ``plan``: the batch's length plan tensor
    (then lengths is None)."""
    return ops.masked_attention_pool_forward(values, keys, query, lengths, plan)


# ------------------------------------------------------------- length plan
@torch.library.register_fake("seqcls_fast::length_plan")
def _length_plan_fake(lengths, steps, batch, device=None):
    # Made where the lengths are: on a GPU for GPU lengths (no host copy).
    where = lengths.device if lengths.device.type != "cpu" else torch.device("cpu")
    return lengths.new_empty(3, batch, dtype=torch.long, device=where)
