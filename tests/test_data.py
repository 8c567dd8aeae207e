"""seqcls_fast.data: pad_batch, collate, SequenceDataset, LengthBucketSampler."""
import pytest
import torch

import seqcls_fast as sf
from helpers import assert_float32_within_pytorchs_own, native_twin
from seqcls_fast.data import LengthBucketSampler, SequenceDataset, collate, pad_batch


def _seqs(lengths, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, generator=g) for n in lengths]


# ------------------------------------------------------------------ pad_batch
def test_pad_batch_shapes_values_and_padding():
    seqs = _seqs([4, 1, 6])
    padded, lengths = pad_batch(seqs)
    assert padded.shape == (3, 6, 3)
    assert padded.dtype == torch.float32
    assert lengths.dtype == torch.int64 and lengths.tolist() == [4, 1, 6]
    for i, s in enumerate(seqs):
        assert torch.equal(padded[i, : len(s)], s)
        assert torch.count_nonzero(padded[i, len(s):]) == 0


def test_pad_batch_padding_value_dtype_and_1d_tokens():
    padded, lengths = pad_batch([torch.tensor([5, 6, 7]), torch.tensor([8])], padding_value=-1)
    assert padded.dtype == torch.int64
    assert padded.tolist() == [[5, 6, 7], [8, -1, -1]]
    assert lengths.tolist() == [3, 1]
    padded64, _ = pad_batch([torch.ones(2, 2, dtype=torch.float64)])
    assert padded64.dtype == torch.float64 and padded64.shape == (1, 2, 2)


def test_pad_batch_feeds_the_classifier_like_packing():
    torch.manual_seed(0)
    model = sf.LSTMClassifier(3, 8, 4, pooling="last").eval()
    seqs = _seqs([5, 2, 7])
    padded, lengths = pad_batch(seqs)
    batched = model(padded, lengths)
    one_by_one = torch.cat([model(s.unsqueeze(0), torch.tensor([len(s)])) for s in seqs])
    # Not bitwise: a batch of 3 and batches of 1 run GEMMs of other shapes,
    # which MKL may sum in other orders. They agree within PyTorch's own
    # float32 error on the batch (the float32 rule, compare_to).
    with torch.no_grad():
        torch32 = native_twin(model, torch.float32)(padded, lengths)
        truth = native_twin(model, torch.float64)(padded.double(), lengths)
    assert_float32_within_pytorchs_own([batched], [torch32], [truth], ["logits"],
                                       compare_to=[one_by_one])


@pytest.mark.parametrize("bad, match", [
    ([], "empty list"),
    ([torch.zeros(3, 2), torch.zeros(4, 5)], "same number of channels"),
    ([torch.zeros(3, 2), torch.zeros(0, 2)], "sequence 1 has length 0"),
    ([torch.zeros(3, 2, 2)], r"\[T_i, C\]"),
])
def test_pad_batch_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        pad_batch(bad)


def test_pad_batch_type_errors():
    with pytest.raises(TypeError, match="list of tensors"):
        pad_batch(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="dtype"):
        pad_batch([torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.float64)])


# ------------------------------------------------------------ collate/dataset
def test_collate_and_dataset_through_dataloader():
    seqs = _seqs([3, 5, 2, 4])
    data = SequenceDataset(seqs, [0, 1, 2, 1])
    assert data.lengths.tolist() == [3, 5, 2, 4]
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collate)
    x, lengths, y = next(iter(loader))
    assert x.shape == (4, 5, 3)
    assert lengths.tolist() == [3, 5, 2, 4]
    assert y.dtype == torch.int64 and y.tolist() == [0, 1, 2, 1]
    assert torch.equal(x[1], seqs[1])


def test_collate_and_dataset_errors():
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(TypeError, match=r"\(sequence, label\) pair"):
        collate([torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="3 sequences but 2 labels"):
        SequenceDataset(_seqs([1, 2, 3]), [0, 1])


# ------------------------------------------------------------------ sampler
LENGTHS = torch.randint(1, 200, (203,), generator=torch.Generator().manual_seed(1))


def _flat(batches):
    return [i for b in batches for i in b]


def test_sampler_covers_each_index_once_and_len_matches():
    s = LengthBucketSampler(LENGTHS, batch_size=16, seed=3, pool_batches=4)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) == 13  # pools of 64: 64,64,64,11 -> 4+4+4+1
        assert sorted(_flat(batches)) == list(range(len(LENGTHS)))
        assert all(1 <= len(b) <= 16 for b in batches)


def test_sampler_batches_similar_lengths():
    """Bucketed batches need far less padding than random batches."""
    s = LengthBucketSampler(LENGTHS, batch_size=16, seed=0)

    def padded_cells(batches):
        return sum(len(b) * int(LENGTHS[b].max()) for b in batches)

    bucketed = padded_cells(list(s))
    perm = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(0))
    random_batches = [perm[i:i + 16].tolist() for i in range(0, len(perm), 16)]
    real = int(LENGTHS.sum())
    # one pool holds all 203 here, so each batch spans a small length range
    assert padded_cells(random_batches) - real > 10 * (bucketed - real)
    for b in s:
        assert int(LENGTHS[b].max() - LENGTHS[b].min()) <= 40


def test_sampler_deterministic_per_seed_and_epoch_and_shuffled():
    a = LengthBucketSampler(LENGTHS, 8, seed=7)
    b = LengthBucketSampler(LENGTHS, 8, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    c = LengthBucketSampler(LENGTHS, 8, seed=8)
    c.set_epoch(2)
    assert list(a) != list(c)
    # batch order is shuffled, not ascending by length
    maxima = [int(LENGTHS[batch].max()) for batch in a]
    assert maxima != sorted(maxima)


def test_sampler_no_shuffle_is_ascending():
    s = LengthBucketSampler(LENGTHS, 32, shuffle=False)
    flat = _flat(list(s))
    assert sorted(flat) == list(range(len(LENGTHS)))
    assert LENGTHS[flat].tolist() == sorted(LENGTHS.tolist())


@pytest.mark.parametrize("n, batch_size, replicas", [(203, 16, 2), (203, 16, 3), (50, 8, 4),
                                                     (7, 4, 3), (64, 16, 4)])
def test_sampler_shards_disjoint_equal_and_complete(n, batch_size, replicas):
    lengths = LENGTHS[:n]
    shards = []
    for rank in range(replicas):
        s = LengthBucketSampler(lengths, batch_size, seed=5, num_replicas=replicas, rank=rank)
        s.set_epoch(1)
        shards.append(list(s))
        assert len(shards[-1]) == len(s)
    counts = {len(sh) for sh in shards}
    assert len(counts) == 1 and counts.pop() >= 1
    flat = [_flat(sh) for sh in shards]
    for i in range(replicas):
        for j in range(i + 1, replicas):
            assert not set(flat[i]) & set(flat[j])
    assert sorted(sum(flat, [])) == list(range(n))
    # the shards are the single-process batch list dealt round-robin
    whole = LengthBucketSampler(lengths, batch_size, seed=5, num_replicas=replicas, rank=0)
    whole.set_epoch(1)
    everything = whole.batches()
    assert [everything[k::replicas] for k in range(replicas)] == shards


def test_sampler_drop_last_sharded():
    shards = [list(LengthBucketSampler(LENGTHS, 16, seed=0, drop_last=True, num_replicas=3,
                                       rank=r)) for r in range(3)]
    assert all(len(b) == 16 for sh in shards for b in sh)
    assert len({len(sh) for sh in shards}) == 1
    flat = sum((_flat(sh) for sh in shards), [])
    assert len(flat) == len(set(flat)) == 16 * 3 * len(shards[0])
    assert len(flat) > len(LENGTHS) - 16 * 4


def test_sampler_uses_torch_distributed_defaults_when_not_initialized():
    s = LengthBucketSampler(LENGTHS, 16)
    assert (s.num_replicas, s.rank) == (1, 0)


def test_sampler_errors():
    with pytest.raises(ValueError, match="1-D integer"):
        LengthBucketSampler(torch.rand(5), 2)
    with pytest.raises(ValueError, match="batch_size"):
        LengthBucketSampler([3, 4], 0)
    with pytest.raises(ValueError, match="rank must be"):
        LengthBucketSampler([3, 4], 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="same number"):
        LengthBucketSampler([3, 4, 5], 2, num_replicas=4, rank=0)
    with pytest.raises(ValueError, match="same number"):
        LengthBucketSampler([3, 4, 5], 2, drop_last=True, num_replicas=2, rank=0)
