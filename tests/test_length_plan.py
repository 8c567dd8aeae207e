"""The length plan: made once per batch (one validation, one sort; GPU lengths
sorted on the GPU, copied to the host at most once, and only for the per-step
path), expanded into its step layout and device copy
once per direction and read by every layer, pass and the pooling; a plan and
raw lengths give the same numbers; a plan that does not belong to the batch is
refused, also after it was used and then changed."""
import pytest
import torch

import seqcls_fast as sf
from seqcls_fast import _C
from seqcls_fast._ops import ops



@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
def test_one_plan_per_training_step(device, pooling):
    """3-layer bidirectional classifier, lengths on the input's device: one
    plan (so one validation and one sort) per training step, no device-to-host
    copy (on a GPU the plan is made and expanded there: every shape here takes
    the persistent recurrence), and one expansion per direction (every later
    layer, the backward and the pooling reuse them)."""
    model = sf.LSTMClassifier(5, 6, 3, num_layers=3, bidirectional=True,
                              pooling=pooling).to(device)
    x = torch.randn(4, 7, 5, device=device)
    lengths = torch.tensor([7, 2, 5, 3], device=device)
    labels = torch.tensor([0, 1, 2, 1], device=device)
    before = _C.length_plan_stats()
    loss = torch.nn.functional.cross_entropy(model(x, lengths), labels)
    loss.backward()
    after = _C.length_plan_stats()
    assert after["plans_made"] - before["plans_made"] == 1
    assert after["host_copies"] == before["host_copies"]
    assert after["expansions"] - before["expansions"] == 2


def test_a_plan_given_is_not_made_again(device):
    lstm = sf.LSTM(3, 4, num_layers=2, bidirectional=True).to(device)
    pool = sf.MaskedAttentionPooling(8).to(device)
    x = torch.randn(6, 3, 3, device=device, requires_grad=True)
    plan = sf.LengthPlan(torch.tensor([6, 1, 4], device=device), 6)
    before = _C.length_plan_stats()
    out, _ = lstm(x, lengths=plan)
    pooled, _ = pool(out.transpose(0, 1), plan)
    pooled.sum().backward()
    after = _C.length_plan_stats()
    assert (after["plans_made"], after["host_copies"]) == (before["plans_made"],
                                                           before["host_copies"])
    assert after["expansions"] - before["expansions"] == 2  # forward and reverse
    out_again, _ = lstm(x, lengths=plan)
    assert _C.length_plan_stats() == after  # already expanded: a lookup
    assert torch.equal(out_again, out)


def test_a_plan_changed_after_use_is_checked_again():
    """The expanded plan is kept for the table as it was: a write to the table
    (seen by its version counter) makes the next call check and expand it again,
    so a plan changed into one that is not this batch's is refused, not read."""
    lstm = sf.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    plan = sf.LengthPlan([5, 3], 5)
    want, _ = lstm(x, lengths=torch.tensor([5, 3]))
    assert torch.equal(lstm(x, lengths=plan)[0], want)
    plan.table[1, 1] = 7  # above T
    with pytest.raises(ValueError, match="plan is not a length plan of this batch"):
        lstm(x, lengths=plan)
    plan.table.copy_(sf.LengthPlan([2, 4], 5).table)  # a valid plan of other lengths
    assert torch.equal(lstm(x, lengths=plan)[0], lstm(x, lengths=torch.tensor([2, 4]))[0])


def test_a_plan_made_in_inference_mode_is_expanded_per_call():
    """Inference tensors have no version counter, so nothing is kept for them:
    each call expands the plan again, with the same results."""
    lstm = sf.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    with torch.inference_mode():
        plan = sf.LengthPlan([5, 3], 5)
        before = _C.length_plan_stats()["expansions"]
        out, _ = lstm(x, lengths=plan)
        assert _C.length_plan_stats()["expansions"] - before == 2  # one per layer
    assert torch.equal(out, lstm(x, lengths=torch.tensor([5, 3]))[0])


def test_plan_and_raw_lengths_agree():
    torch.manual_seed(0)
    lstm = sf.LSTM(3, 5, num_layers=2, bidirectional=True).double()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([2, 6, 6, 3], dtype=torch.int32)
    raw = lstm(x, lengths=lengths)
    planned = lstm(x, lengths=sf.LengthPlan(lengths, 6))
    assert torch.equal(raw[0], planned[0])
    assert torch.equal(raw[1][0], planned[1][0]) and torch.equal(raw[1][1], planned[1][1])


def test_plan_table_is_sorted_order_sorted_lengths_and_lengths():
    table = sf.LengthPlan(torch.tensor([2, 5, 5, 1], dtype=torch.int16), 5).table
    assert table.dtype == torch.int64 and table.device.type == "cpu"
    assert table.tolist() == [[1, 2, 0, 3], [5, 5, 2, 1], [2, 5, 5, 1]]


def test_plan_for_another_batch_is_refused():
    lstm = sf.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"made for \(T, B\) = \(6, 2\), the input has \(5, 2\)"):
        lstm(x, lengths=sf.LengthPlan([5, 3], 6))
    with pytest.raises(ValueError, match=r"made for \(T, B\) = \(5, 3\)"):
        lstm(x, lengths=sf.LengthPlan([5, 3, 1], 5))


@pytest.mark.parametrize("table", [
    [[0, 0], [5, 3], [5, 3]],   # not a permutation
    [[1, 0], [5, 3], [5, 3]],   # caller lengths disagree with the sorted ones
    [[0, 1], [3, 5], [3, 5]],   # not sorted
    [[0, 1], [6, 3], [6, 3]],   # above T
    [[0, 2], [5, 3], [5, 0]],   # row index out of range
])
def test_tampered_plan_is_an_error_not_a_bad_read(table):
    x = torch.randn(5, 2, 3)
    w_ih, w_hh = torch.randn(16, 3), torch.randn(16, 4)
    with pytest.raises(ValueError, match="plan is not a length plan of this batch"):
        ops.lstm_layer_forward(x, None, None, None, w_ih, w_hh, None, None, False, False,
                               torch.tensor(table))
    with pytest.raises(ValueError, match="plan is not a length plan of this batch"):
        ops.masked_attention_pool_forward(x.transpose(0, 1), None, torch.randn(3), None,
                                          torch.tensor(table))


def test_lengths_and_plan_together_are_refused():
    x = torch.randn(5, 2, 3)
    plan = sf.LengthPlan([5, 3], 5).table
    with pytest.raises(ValueError, match="lengths must be None when a plan is given"):
        ops.lstm_layer_forward(x, torch.tensor([5, 3]), None, None, torch.randn(16, 3),
                               torch.randn(16, 4), None, None, False, False, plan)


@pytest.mark.parametrize("lengths", [torch.tensor([3, 1, 3]),
                                     torch.tensor([4, 2, 1], dtype=torch.int32)])
def test_length_plan_opcheck(lengths):
    torch.library.opcheck(ops.length_plan, (lengths, 4, 3))


def test_operators_with_a_plan_pass_opcheck():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    plan = sf.LengthPlan([5, 2, 4], 5).table
    for reverse in (False, True):
        torch.library.opcheck(ops.lstm_layer_forward,
                              (x, None, None, None, w_ih, w_hh, None, None, reverse, True, plan))
    values = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    query = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.masked_attention_pool_forward, (values, None, query, None, plan))


def test_gradcheck_with_a_plan():
    torch.manual_seed(0)
    lstm = sf.LSTM(2, 3, num_layers=2, bidirectional=True).double()
    pool = sf.MaskedAttentionPooling(6).double()
    plan = sf.LengthPlan([4, 1, 3], 4)
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)

    def f(x):
        out, _ = lstm(x, lengths=plan)
        return pool(out.transpose(0, 1), plan)[0]

    assert torch.autograd.gradcheck(f, (x,))


def test_pooling_with_raw_lengths_expands_no_plan():
    """Attention pooling given raw lengths needs only their caller-order row:
    it plans them (one plan made) and expands nothing."""
    values, query = torch.randn(3, 6, 4), torch.randn(4)
    before = _C.length_plan_stats()
    ops.masked_attention_pool_forward(values, None, query, torch.tensor([6, 1, 4]))
    after = _C.length_plan_stats()
    assert after["plans_made"] - before["plans_made"] == 1
    assert after["expansions"] == before["expansions"]
