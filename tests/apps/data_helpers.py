"""A tiny learnable data set for the app tests (train and stream): toy
sequences and a .npz of both splits in the layout ``seqcls-fast train
--data`` reads."""
import numpy as np


def toy(n, seed, channels=3, classes=3, min_len=3, max_len=12):
    """n sequences [T_i, channels] and their labels "c0".."c{classes-1}": the
    class is the channel with a raised mean, so the task is learnable."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        label = i % classes
        length = int(rng.integers(min_len, max_len + 1))
        x = rng.normal(size=(length, channels)).astype(np.float32) * 0.5
        x[:, label % channels] += 1.5
        seqs.append(x)
        labels.append(f"c{label}")
    return seqs, np.array(labels)


def write_npz(path, train_n=48, test_n=30, channels=3, **overrides):
    """A toy .npz (train seed 0, test seed 1) at ``path``; ``overrides``
    replace arrays, and None drops one. -> str(path)."""
    tr, ytr = toy(train_n, 0, channels=channels)
    te, yte = toy(test_n, 1, channels=channels)
    arrays = {"X_train": np.concatenate(tr), "lengths_train": [len(s) for s in tr],
              "y_train": ytr, "X_test": np.concatenate(te), "lengths_test": [len(s) for s in te],
              "y_test": yte}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)
