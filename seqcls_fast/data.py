"""Variable-length batches for seqcls_fast: padding, a DataLoader collate_fn,
and a length-bucketing batch sampler that also shards across processes.

    from torch.utils.data import DataLoader
    from seqcls_fast.data import SequenceDataset, LengthBucketSampler, collate

    data = SequenceDataset(sequences, labels)          # sequences: [T_i, C] each
    sampler = LengthBucketSampler(data.lengths, batch_size=32, seed=0,
                                  num_replicas=world_size, rank=rank)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, lengths, y in loader:                    # x [B, T, C], lengths [B]
            logits = model(x, lengths)
"""
import math

import torch

__all__ = ["pad_batch", "collate", "SequenceDataset", "LengthBucketSampler"]


def pad_batch(sequences, padding_value=0.0):
    """Pad a list of ``[T_i, C]`` (or 1-D ``[T_i]``, e.g. token ids) tensors.

    Returns ``(padded, lengths)``: padded ``[B, max T_i, C]`` (``[B, max T_i]``
    for 1-D input), batch first, ``padding_value`` past each length, with the
    sequences' common dtype; lengths int64 ``[B]`` on the CPU. Every sequence
    must have the same trailing shape and dtype and at least one step (a
    length-0 sequence has nothing for an LSTM to read).
    """
    if isinstance(sequences, torch.Tensor) or not hasattr(sequences, "__len__"):
        raise TypeError("pad_batch: sequences must be a list of tensors, got "
                        f"{type(sequences).__name__}")
    if len(sequences) == 0:
        raise ValueError("pad_batch: got an empty list of sequences (batch of 0)")
    tensors = [torch.as_tensor(s) for s in sequences]
    first = tensors[0]
    if first.dim() not in (1, 2):
        raise ValueError("pad_batch: each sequence must be [T_i, C] (or 1-D [T_i]), sequence 0 "
                         f"has shape {tuple(first.shape)}")
    for i, t in enumerate(tensors):
        if t.dim() != first.dim() or t.shape[1:] != first.shape[1:]:
            raise ValueError(f"pad_batch: sequence {i} has shape {tuple(t.shape)}, but sequence 0 "
                             f"has {tuple(first.shape)}; all must be [T_i"
                             + (f", {first.size(1)}]" if first.dim() == 2 else "]")
                             + " (same number of channels)")
        if t.dtype != first.dtype:
            raise TypeError(f"pad_batch: sequence {i} has dtype {t.dtype}, sequence 0 has "
                            f"{first.dtype}; all must have the same dtype")
        if t.device != first.device:
            raise ValueError(f"pad_batch: sequence {i} is on {t.device}, sequence 0 on "
                             f"{first.device}")
        if t.size(0) == 0:
            raise ValueError(f"pad_batch: sequence {i} has length 0; every sequence needs at "
                             "least one step")
    lengths = torch.tensor([t.size(0) for t in tensors], dtype=torch.int64)
    padded = first.new_full((len(tensors), int(lengths.max())) + tuple(first.shape[1:]),
                            padding_value)
    for i, t in enumerate(tensors):
        padded[i, : t.size(0)] = t
    return padded, lengths


def collate(items):
    """``collate_fn`` for a DataLoader over ``(sequence, label)`` items.

    Returns ``(padded [B, T, C], lengths int64 [B], labels int64 [B])``.
    """
    items = list(items)
    if not items:
        raise ValueError("collate: got an empty batch")
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"collate: item {i} must be a (sequence, label) pair, got "
                            f"{type(item).__name__}")
    padded, lengths = pad_batch([s for s, _ in items])
    labels = torch.as_tensor([int(label) for _, label in items], dtype=torch.int64)
    return padded, lengths, labels


class SequenceDataset(torch.utils.data.Dataset):
    """``(sequence [T_i, C], label)`` items from a list of sequences and
    integer labels; ``.lengths`` (int64 ``[N]``) feeds
    :class:`LengthBucketSampler`."""

    def __init__(self, sequences, labels):
        if len(sequences) != len(labels):
            raise ValueError(f"SequenceDataset: {len(sequences)} sequences but {len(labels)} "
                             "labels")
        self.sequences = [torch.as_tensor(s) for s in sequences]
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.lengths = torch.tensor([s.size(0) for s in self.sequences], dtype=torch.int64)

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, index):
        return self.sequences[index], self.labels[index]

    def subset(self, indices):
        """A SequenceDataset of the items at ``indices`` (the tensors shared,
        not copied)."""
        indices = [int(i) for i in indices]
        return SequenceDataset([self.sequences[i] for i in indices],
                               self.labels[torch.as_tensor(indices, dtype=torch.int64)])


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of similar-length sequences, in shuffled order; a
    ``batch_sampler`` for DataLoader.

    Each epoch (``set_epoch``, as for ``DistributedSampler``): the indices are
    shuffled with a generator seeded by ``seed + epoch``, cut into pools of
    ``batch_size * pool_batches`` indices, each pool is sorted by length (ties
    in shuffled order) and cut into batches of ``batch_size``, and all batches
    are shuffled. So a batch holds sequences of similar length (little
    padding) while batch composition and order change every epoch; the same
    ``(seed, epoch)`` always gives the same batches.

    Sharding (``num_replicas`` processes, this one ``rank``; by default taken
    from ``torch.distributed`` when it is initialized, else 1 and 0): every
    rank computes the same batch list and takes batches ``rank, rank + R, ...``.
    The shares are disjoint and of equal count (so DistributedDataParallel
    never waits on a rank that ran out): when the batch count is not a
    multiple of R, the largest batches are split in two until it is, so every
    sequence is still seen exactly once per epoch. With ``drop_last`` the
    short batch of each pool is dropped instead, and then as many batches as
    needed to make the count a multiple of R.

    ``shuffle=False`` gives batches in ascending length order, unsharded-
    deterministic, for evaluation.
    """

    def __init__(self, lengths, batch_size, shuffle=True, seed=0, drop_last=False,
                 num_replicas=None, rank=None, pool_batches=50):
        lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.is_complex():
            raise ValueError("LengthBucketSampler: lengths must be a 1-D integer sequence, got "
                             f"{lengths.dtype} of shape {tuple(lengths.shape)}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"LengthBucketSampler: batch_size must be an int >= 1, got "
                             f"{batch_size!r}")
        if not (isinstance(pool_batches, int) and pool_batches >= 1):
            raise ValueError(f"LengthBucketSampler: pool_batches must be an int >= 1, got "
                             f"{pool_batches!r}")
        if num_replicas is None or rank is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            if num_replicas is None:
                num_replicas = dist.get_world_size() if ready else 1
            if rank is None:
                rank = dist.get_rank() if ready else 0
        if not (isinstance(num_replicas, int) and num_replicas >= 1):
            raise ValueError(f"LengthBucketSampler: num_replicas must be an int >= 1, got "
                             f"{num_replicas!r}")
        if not (isinstance(rank, int) and 0 <= rank < num_replicas):
            raise ValueError(f"LengthBucketSampler: rank must be in [0, {num_replicas}), got "
                             f"{rank!r}")
        self.lengths = lengths.to(torch.int64).cpu()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.pool_batches = pool_batches
        self.epoch = 0
        n, total = len(self.lengths), self._total_batches()
        if total < num_replicas or total > n:
            raise ValueError(f"LengthBucketSampler: {n} sequences with batch_size={batch_size}"
                             f"{' and drop_last' if drop_last else ''} cannot give each of "
                             f"{num_replicas} ranks the same number (>= 1) of batches")

    def set_epoch(self, epoch):
        """Use a different shuffle for each epoch (same on every rank)."""
        self.epoch = int(epoch)

    def _pool_sizes(self):
        n = len(self.lengths)
        pool = self.batch_size * self.pool_batches if self.shuffle else max(n, 1)
        return [min(pool, n - start) for start in range(0, n, pool)]

    def _total_batches(self):
        """Batch count over all ranks, after making it a multiple of R."""
        count = 0
        for size in self._pool_sizes():
            count += size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)
        r = self.num_replicas
        if self.drop_last:
            return count - count % r
        return count + (-count) % r  # each split adds one batch

    def batches(self):
        """All ranks' batches for the current epoch (lists of indices)."""
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        batches, start = [], 0
        for size in self._pool_sizes():
            pool = order[start:start + size]
            start += size
            # stable sort keeps the shuffled order among equal lengths
            pool = pool[torch.sort(self.lengths[pool], stable=True).indices]
            for b in range(0, size, self.batch_size):
                batch = pool[b:b + self.batch_size].tolist()
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        r = self.num_replicas
        if self.drop_last:
            batches = batches[: len(batches) - len(batches) % r]
        while len(batches) % r:
            # split the largest batch (first such in order) in two halves
            largest = max(range(len(batches)), key=lambda i: (len(batches[i]), -i))
            batch = batches[largest]
            if len(batch) < 2:
                raise ValueError(f"LengthBucketSampler: {n} sequences cannot be split into a "
                                 f"multiple of {r} batches")
            half = (len(batch) + 1) // 2
            batches[largest: largest + 1] = [batch[:half], batch[half:]]
        return batches

    def __iter__(self):
        batches = self.batches()
        return iter(batches[self.rank::self.num_replicas])

    def __len__(self):
        return self._total_batches() // self.num_replicas
