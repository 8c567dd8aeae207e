"""Bad input gets a clear exception naming the argument, never a crash or a
silent result."""
import pytest
import torch

import seqcls_fast as sf


@pytest.fixture
def lstm():
    return sf.LSTM(3, 4, bidirectional=True)


X = lambda: torch.randn(5, 2, 3)  # noqa: E731


@pytest.mark.parametrize("lengths,exc,match", [
    (torch.tensor([5, 0]), ValueError, r"lengths must lie in \[1, T\] = \[1, 5\].*lengths\[1\] = 0"),
    (torch.tensor([6, 2]), ValueError, r"lengths must lie in \[1, T\].*lengths\[0\] = 6"),
    (torch.tensor([-1, 2]), ValueError, r"lengths must lie in \[1, T\].*= -1"),
    (torch.tensor([5, 2, 3]), ValueError, r"lengths must have shape \[B\] = \[2\]"),
    (torch.tensor([[5, 2]]), ValueError, r"lengths must have shape \[B\] = \[2\]"),
    (torch.tensor([5.0, 2.0]), TypeError, r"lengths must be an integer tensor, got Float"),
    (torch.tensor([True, True]), TypeError, r"lengths must be an integer tensor, got Bool"),
])
def test_bad_lengths(lstm, lengths, exc, match):
    with pytest.raises(exc, match=match):
        lstm(X(), lengths=lengths)


def test_bad_lengths_for_pooling():
    pool = sf.MaskedAttentionPooling(4)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\]"):
        pool(torch.randn(2, 5, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"lengths must have shape \[B\] = \[2\]"):
        pool(torch.randn(2, 5, 4), torch.tensor([3]))


def test_wrong_feature_size(lstm):
    with pytest.raises(ValueError, match=r"input must have 3 features \(input_size\), got 7"):
        lstm(torch.randn(5, 2, 7))


def test_wrong_dtype(lstm):
    with pytest.raises(TypeError, match="dtype"):
        lstm(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        lstm(torch.ones(5, 2, 3, dtype=torch.long))


@pytest.mark.parametrize("shape", [(3,), (1, 5, 2, 3)])
def test_wrong_rank(lstm, shape):
    with pytest.raises(ValueError, match="input must be 3-D"):
        lstm(torch.randn(*shape))


def test_not_a_tensor(lstm):
    with pytest.raises(TypeError, match="input must be a Tensor or a PackedSequence"):
        lstm([[1.0, 2.0, 3.0]])


@pytest.mark.parametrize("h_shape", [(1, 2, 4), (2, 3, 4), (2, 2, 5), (2, 4)])
def test_wrong_hx_shape(lstm, h_shape):
    hx = (torch.randn(*h_shape), torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(num_layers \* num_directions, B, H\) = \(2, 2, 4\)"):
        lstm(X(), hx)


def test_hx_not_a_pair(lstm):
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        lstm(X(), torch.randn(2, 2, 4))


def test_lengths_with_packed_sequence(lstm):
    packed = torch.nn.utils.rnn.pack_padded_sequence(X(), torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="lengths must be None when input is a PackedSequence"):
        lstm(packed, lengths=torch.tensor([5, 2]))


def test_pooling_wrong_sizes():
    pool = sf.MaskedAttentionPooling(4)
    with pytest.raises(ValueError, match=r"outputs must have shape \[B, T, D\]"):
        pool(torch.randn(2, 4))
    with pytest.raises(ValueError, match="hidden_size = 4 features, got 6"):
        pool(torch.randn(2, 5, 6))
    with pytest.raises(TypeError, match="query must have the dtype of values"):
        pool(torch.randn(2, 5, 4, dtype=torch.float64))


def test_operator_level_checks():
    """The operators check their own inputs: calls that bypass the modules."""
    ops = torch.ops.seqcls_fast
    x, w_ih, w_hh = torch.randn(5, 2, 3), torch.randn(16, 3), torch.randn(16, 4)
    with pytest.raises(ValueError, match=r"w_ih must have shape \[4H, I\] = \[16, 3\]"):
        ops.lstm_layer_forward(x, None, None, None, torch.randn(16, 2), w_hh, None, None, False, False)
    with pytest.raises(ValueError, match=r"w_hh must have shape \[4H, H\]"):
        ops.lstm_layer_forward(x, None, None, None, w_ih, torch.randn(15, 4), None, None, False, False)
    with pytest.raises(ValueError, match=r"h0 must have shape \[B, H\] = \[2, 4\]"):
        ops.lstm_layer_forward(x, None, torch.randn(3, 4), None, w_ih, w_hh, None, None, False, False)
    with pytest.raises(ValueError, match="b_ih and b_hh must be given together"):
        ops.lstm_layer_forward(x, None, None, None, w_ih, w_hh, torch.randn(16), None, False, False)
    with pytest.raises(ValueError, match=r"x must have shape \[T, B, I\]"):
        ops.lstm_layer_forward(x[0], None, None, None, w_ih, w_hh, None, None, False, False)
    with pytest.raises(ValueError, match=r"at least one time step"):
        ops.lstm_layer_forward(x[:0], None, None, None, w_ih, w_hh, None, None, False, False)
    with pytest.raises(ValueError, match=r"query must have shape \[3\]"):
        ops.masked_attention_pool_forward(torch.randn(2, 4, 3), None, torch.randn(5), None)
    with pytest.raises(ValueError, match=r"keys must have shape \[B, T, A\] = \[2, 4, A\]"):
        ops.masked_attention_pool_forward(torch.randn(2, 4, 3), torch.randn(2, 5, 3),
                                          torch.randn(3), None)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_kernels_name_the_dtypes_they_run(dtype):
    """Half precision runs on CUDA only: the CPU kernels say so, naming the
    argument, before any work (not ATen's dispatch error from inside)."""
    ops = torch.ops.seqcls_fast
    x = torch.randn(5, 2, 3, dtype=dtype)
    w_ih, w_hh = torch.randn(16, 3, dtype=dtype), torch.randn(16, 4, dtype=dtype)
    with pytest.raises(TypeError, match=r"x must be float32 or float64 on the CPU"):
        ops.lstm_layer_forward(x, None, None, None, w_ih, w_hh, None, None, False, False)
    with pytest.raises(TypeError, match=r"values must be float32 or float64 on the CPU"):
        ops.masked_attention_pool_forward(torch.randn(2, 4, 3, dtype=dtype), None,
                                          torch.randn(3, dtype=dtype), None)


@pytest.mark.parametrize("name", ["grad_pooled", "grad_weights", "weights"])
def test_attention_pool_backward_checks_its_gradients(name):
    """The backward reads these through typed pointers: a dtype other than
    values' is refused by name on every backend (it was checked on CUDA only)."""
    values, query = torch.randn(2, 4, 3), torch.randn(3)
    pooled, weights = torch.ops.seqcls_fast.masked_attention_pool_forward(values, None, query, None)
    args = {"grad_pooled": torch.ones_like(pooled), "grad_weights": torch.zeros_like(weights),
            "weights": weights}
    args[name] = args[name].double()
    with pytest.raises(TypeError, match=f"{name} must have the dtype of values"):
        torch.ops.seqcls_fast.masked_attention_pool_backward(
            args["grad_pooled"], args["grad_weights"], values, None, query, None, args["weights"],
            None)


def test_nan_input_propagates_not_hidden():
    """NaN policy: NaN/inf in inputs propagate to the outputs they touch, as
    in nn.LSTM; nothing is masked or replaced."""
    lstm = sf.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    x[1, 0, 0] = float("nan")
    out, (h, _) = lstm(x, lengths=torch.tensor([5, 5]))
    assert torch.isnan(out[1:, 0]).all() and not torch.isnan(out[:, 1]).any()
    assert torch.isnan(h[0, 0]).all()


@pytest.mark.parametrize("call,match", [
    (lambda m: m(torch.randn(5, 2, 7)),
     r"input must have 3 features \(input_size\), got 7"),
    (lambda m: m(torch.randn(0, 2, 3)), r"at least one time step \(T >= 1\)"),
    (lambda m: m(torch.randn(5, 2, 3, 1)), "input must be 3-D"),
    (lambda m: m(torch.randn(5, 2, 3), (torch.randn(2, 3, 4), torch.randn(2, 3, 4))),
     r"h_0 must have shape \(num_layers \* num_directions, B, H\) = \(2, 2, 4\)"),
    (lambda m: m(torch.randn(5, 3), (torch.randn(2, 1, 4), torch.randn(2, 1, 4))),
     "for unbatched input h_0 must be 2-D"),
])
def test_shape_errors_are_value_and_runtime_errors(lstm, call, match):
    """nn.LSTM raises RuntimeError for these; ours is a ValueError with a
    clearer message that `except RuntimeError` catches too."""
    with pytest.raises(ValueError, match=match):
        call(lstm)
    with pytest.raises(RuntimeError, match=match):
        call(lstm)
    with pytest.raises(sf.errors.ShapeError):
        call(lstm)


def test_hx_as_one_tensor_is_caught_as_nn_lstm_would_raise(lstm):
    for exc in (TypeError, RuntimeError, IndexError):
        with pytest.raises(exc, match=r"hx must be a tuple \(h_0, c_0\)"):
            lstm(X(), torch.randn(2, 2, 4))


def test_dtype_mismatch_is_type_and_value_error(lstm):
    for exc in (TypeError, ValueError):
        with pytest.raises(exc, match=r"input dtype torch.float64 does not match the parameters"):
            lstm(X().double())


def test_native_lstm_raises_what_the_error_classes_cover():
    """The mapping above is nn.LSTM's own behaviour in the torch in use."""
    native = torch.nn.LSTM(3, 4, bidirectional=True)
    with pytest.raises(RuntimeError):
        native(torch.randn(5, 2, 7))
    with pytest.raises(RuntimeError):
        native(torch.randn(5, 2, 3), (torch.randn(2, 3, 4), torch.randn(2, 3, 4)))
    with pytest.raises((ValueError, RuntimeError)):
        native(torch.randn(5, 2, 3, 1))
    with pytest.raises((RuntimeError, IndexError)):
        native(X(), torch.randn(2, 2, 4))


def test_memory_mode_must_be_known():
    with pytest.raises(ValueError, match=r"seqcls_fast.LSTM: memory must be one of \('fast', 'low', 'auto'\), got 'small'"):
        sf.LSTM(3, 4, memory="small")
    with pytest.raises(ValueError, match=r"LSTMClassifier: memory must be one of"):
        sf.LSTMClassifier(3, 4, 2, memory=None)
    from seqcls_fast.reference import NativeLSTMClassifier
    with pytest.raises(ValueError, match=r"memory='low' needs seqcls_fast.LSTM, not PackedLSTM"):
        NativeLSTMClassifier(3, 4, 2, memory="low")


def _pooled_args(**changes):
    """lstm_layer_pooled_forward's arguments (T=5, B=2, I=3, H=4), with changes."""
    args = dict(x=torch.randn(5, 2, 3), lengths=None, h0=None, c0=None,
                w_ih=torch.randn(16, 3), w_hh=torch.randn(16, 4), b_ih=None, b_hh=None,
                pooling="attention", query=torch.randn(4), key_weight=None, key_bias=None,
                pool_max=None, pool_denom=None, pool_sum=None)
    args.update(changes)
    return list(args.values())


@pytest.mark.parametrize("changes,exc,match", [
    (dict(pooling="max"), ValueError, r'pooling must be "attention", "mean" or "last", got "max"'),
    (dict(query=None), ValueError, r'pooling="attention" needs a query'),
    (dict(query=torch.randn(5)), ValueError, r"query must have shape \[4\]"),
    (dict(key_weight=torch.randn(6, 5)), ValueError, r"key_weight must have shape \[A, H\] with H = 4"),
    (dict(key_bias=torch.randn(4)), ValueError, r"key_bias is only taken with key_weight"),
    (dict(pooling="mean"), ValueError, r'query and key_weight are only taken with pooling="attention"'),
    (dict(pool_max=torch.zeros(2)), ValueError, r"pool_max, pool_denom and pool_sum must be given together"),
    (dict(pool_max=torch.zeros(2), pool_denom=torch.zeros(2), pool_sum=torch.zeros(2, 5)),
     ValueError, r"pool_sum must have shape \[2, 4\]"),
    (dict(pool_max=torch.zeros(2, dtype=torch.float64), pool_denom=torch.zeros(2),
          pool_sum=torch.zeros(2, 4)), TypeError, r"pool_max must have dtype Float"),
    (dict(query=torch.randn(4, dtype=torch.float64)), TypeError, r"query"),
])
def test_pooled_forward_argument_errors(changes, exc, match):
    with pytest.raises(exc, match=match):
        torch.ops.seqcls_fast.lstm_layer_pooled_forward(*_pooled_args(**changes))


def test_recompute_backward_checks_the_checkpoints():
    x = torch.randn(5, 2, 3)
    w_ih, w_hh = torch.randn(16, 3), torch.randn(16, 4)
    out, h_n, c_n, _g, cell, _h = torch.ops.seqcls_fast.lstm_layer_forward(
        x, None, None, None, w_ih, w_hh, None, None, False, True, None, True)
    grads = (torch.ones_like(out), torch.ones_like(h_n), torch.ones_like(c_n))
    with pytest.raises(ValueError, match=r"cell must have shape \[2, 4\]"):  # one chunk: [B, H]
        torch.ops.seqcls_fast.lstm_layer_backward_recompute(
            *grads, x, None, None, None, w_ih, w_hh, None, None, out, torch.zeros(10, 4), False,
            True)
    with pytest.raises(ValueError, match=r"output must have shape \[5, 2, 4\]"):
        torch.ops.seqcls_fast.lstm_layer_backward_recompute(
            *grads, x, None, None, None, w_ih, w_hh, None, None, out[:4], cell, False, True)
