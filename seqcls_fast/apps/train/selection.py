"""Model selection without the test split: :func:`stratified_split` carves a
seeded, stratified validation split out of the training sequences, and
:class:`EpochSelector` keeps the weights of the epoch that did best on it
(by a windowed mean of validation accuracy).
The test split is read once, after training, by the caller; nothing here
sees it.
"""
import copy

import numpy as np

from .metrics import predict_proba


def stratified_split(labels, fraction, seed):
    """Indices (fit, validation) of a split of ``labels`` (class indices [N])
    holding out about ``fraction`` of each class, chosen by a generator seeded
    with ``seed``. A class with at least two sequences gives at least one to
    validation and keeps at least one for fitting; a single-sequence class
    stays in fitting. ``fraction == 0`` gives an empty validation split.
    Both index arrays come back sorted."""
    labels = np.asarray(labels)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if fraction == 0.0 or len(members) < 2:
            continue
        k = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        held.append(rng.permutation(members)[:k])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    fit = np.setdiff1d(np.arange(len(labels)), val)
    return fit, val


def validation_scores(model, dataset, device):
    """(accuracy, mean cross-entropy) of ``model`` on ``dataset``, from
    :func:`.metrics.predict_proba` (eval mode, batches in a fixed order: the
    scores depend on nothing but the weights)."""
    probs = predict_proba(model, dataset, device)
    labels = dataset.labels.numpy()
    picked = probs[np.arange(len(labels)), labels]
    # clamped so a probability that underflowed to 0 gives a finite loss, as F.cross_entropy
    loss = -np.mean(np.log(np.maximum(picked, np.finfo(np.float64).tiny)))
    return float(np.mean(probs.argmax(axis=1) == labels)), float(loss)


class EpochSelector:
    """Remembers the best epoch by validation score and a copy of its
    weights. The score of epoch e is the mean validation accuracy over the
    ``window`` epochs ending at e: a small validation split's accuracy jumps
    by one sequence from epoch to epoch, and the maximum of a hundred noisy
    values is mostly noise (an early spike while the learning rate is still
    high); the windowed mean picks a stretch of training that stays good. The
    first ``window - 1`` epochs have shorter windows, as noisy as the spikes,
    so any full window beats them. On equal scores the later epoch wins: the
    schedule anneals toward the end."""

    def __init__(self, window=1):
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        self.window = window
        self.recent = []
        self.epoch = self.score = self.accuracy = self.loss = self.state = None
        self._rank = None  # (window full, score) of the chosen epoch

    def update(self, epoch, accuracy, loss, model):
        self.recent = (self.recent + [accuracy])[-self.window:]
        score = sum(self.recent) / len(self.recent)
        rank = (len(self.recent) == self.window, score)
        if self._rank is None or rank >= self._rank:
            self._rank = rank
            self.epoch, self.score, self.accuracy, self.loss = epoch, score, accuracy, loss
            self.state = copy.deepcopy(model.state_dict())

    def restore(self, model):
        """Load the chosen epoch's weights into ``model``."""
        if self.state is not None:
            model.load_state_dict(self.state)
