"""Model selection in ``seqcls-fast train``: the stratified validation split,
the warmup + cosine schedule and the step budget, the choice of epoch (what
model.pt holds), that the test split cannot influence training or selection,
and several seeds with their summary and plots."""
import json

import numpy as np
import pytest
import torch

from seqcls_fast.apps import train
from seqcls_fast.data import SequenceDataset
from seqcls_fast.apps.train.loop import lr_factor
from seqcls_fast.apps.train.selection import EpochSelector, stratified_split, validation_scores

from data_helpers import toy, write_npz  # tests/apps/, on sys.path by its conftest.py
from helpers import assert_float32_within_pytorchs_own, native_twin  # tests/, by tests/conftest.py

FAST = ["--hidden-size", "16", "--batch-size", "8", "--no-progress", "--lr", "1e-2"]


# ----------------------------------------------------------- split, schedule
@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_stratified_split_holds_out_each_class_in_proportion(fraction):
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])  # the last class has one member
    fit, val = stratified_split(labels, fraction, seed=3)
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(len(labels)))
    assert not set(fit) & set(val)
    held = np.bincount(labels[val], minlength=4)
    expected = [round(fraction * 10), max(1, round(fraction * 5)), 1, 0]
    assert held.tolist() == expected
    assert np.bincount(labels[fit], minlength=4).min() >= 1  # every class still fits
    again = stratified_split(labels, fraction, seed=3)
    assert np.array_equal(again[1], val)
    other = [stratified_split(labels, fraction, seed=s)[1] for s in range(4, 10)]
    assert any(not np.array_equal(o, val) for o in other)  # the seed chooses


def test_stratified_split_without_validation_and_bad_fraction():
    fit, val = stratified_split(np.array([0, 1, 0, 1]), 0.0, seed=0)
    assert fit.tolist() == [0, 1, 2, 3] and val.size == 0
    with pytest.raises(ValueError, match="validation fraction"):
        stratified_split(np.array([0, 1]), 1.0, seed=0)


def test_lr_factor_warms_up_linearly_then_follows_the_schedule():
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup, "cosine") for s in range(total)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:]))
    assert lr_factor(total, total, warmup, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert factors[55] == pytest.approx(0.5, abs=1e-12)  # halfway through the cosine
    assert lr_factor(50, total, warmup, "constant") == 1.0
    assert lr_factor(0, total, 0, "cosine") == 1.0  # no warmup


def _choose(accuracies, window):
    """The epoch (0-based) EpochSelector keeps for these validation
    accuracies, and the weight it restores (each epoch's model is a
    one-parameter module holding its epoch number)."""
    selector = EpochSelector(window=window)
    for epoch, accuracy in enumerate(accuracies):
        selector.update(epoch, accuracy, 0.0, torch.nn.Linear(1, 1, bias=False).requires_grad_(
            False).apply(lambda m: m.weight.fill_(epoch)))
    model = torch.nn.Linear(1, 1, bias=False)
    selector.restore(model)
    assert float(model.weight.detach()) == selector.epoch  # the weights of the chosen epoch
    return selector.epoch


def test_epoch_selector_windowed_mean_ignores_a_lone_spike():
    accuracies = [0.5, 0.9, 1.0, 0.9, 0.95, 0.96, 0.96, 0.96, 0.96, 0.9]
    assert _choose(accuracies, window=1) == 2  # the spike
    # windows of 3 ending at each epoch: the best mean is 0.96 (epochs 6-8);
    # the later epoch wins the tie
    assert _choose(accuracies, window=3) == 8
    assert _choose([0.7, 0.7, 0.7], window=1) == 2  # ties: the later epoch
    # a short window at the start (epoch 0: 1.0 alone) loses to any full one
    assert _choose([1.0, 0.5, 0.5, 0.5], window=3) == 2
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        EpochSelector(window=0)


# ------------------------------------------------------------------ the runs
def _train(data, out, *flags):
    assert train.main(["--data", data, "--out", str(out), *flags] + FAST) == 0
    return json.loads((out / "metrics.json").read_text())


def _validation_split_of(data, ckpt, seed):
    """The validation sequences of run ``seed``, standardized as
    ``ckpt`` was trained, rebuilt from the .npz alone."""
    z = np.load(data)
    seqs = np.split(z["X_train"], np.cumsum(z["lengths_train"])[:-1])
    labels = np.array([ckpt["classes"].index(str(y)) for y in z["y_train"]])
    _, val = stratified_split(labels, 0.2, seed)
    mean, std = ckpt["mean"].numpy(), ckpt["std"].numpy()
    return SequenceDataset([torch.from_numpy((seqs[i] - mean) / std) for i in val], labels[val])


def test_checkpoint_holds_the_chosen_epoch(tmp_path, monkeypatch):
    """model.pt holds bitwise the weights the chosen epoch had, and scores on
    the validation split rebuilt from the .npz what that epoch scored; that
    epoch is the last one with the top validation accuracy."""
    epoch_weights = []  # each epoch's weights, as EpochSelector.update saw them
    update = EpochSelector.update

    def recording_update(self, epoch, accuracy, loss, model):
        epoch_weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return update(self, epoch, accuracy, loss, model)

    monkeypatch.setattr(EpochSelector, "update", recording_update)
    data = write_npz(tmp_path / "toy.npz")
    metrics = _train(data, tmp_path / "run", "--epochs", "8")
    (run,) = metrics["runs"]
    history = run["train"]
    assert len(history["val_accuracy"]) == len(history["val_loss"]) == 8
    best = max(history["val_accuracy"])
    chosen = history["chosen_epoch"]
    assert history["val_accuracy"][chosen - 1] == best == run["chosen_val_accuracy"]
    assert best not in history["val_accuracy"][chosen:]
    ckpt = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert len(epoch_weights) == 8
    for epoch, weights in enumerate(epoch_weights):  # a copy of the chosen epoch's, and no other
        same = all(torch.equal(ckpt["state_dict"][k], v) for k, v in weights.items())
        assert same == (epoch == chosen - 1), epoch
    model = train.model_from_checkpoint(ckpt)
    val = _validation_split_of(data, ckpt, seed=0)
    assert len(val) == run["n_val"] == 9 and run["n_fit"] == 48 - 9
    accuracy, loss = validation_scores(model, val, "cpu")
    assert accuracy == history["chosen_val_accuracy"]
    # The same float32 forward of the same weights (bitwise, above) on the
    # same inputs, yet not bitwise the same loss on every CPU: on an AMD CPU
    # the two came out 6e-10 apart (float32 sums in another order, e.g. by
    # MKL kernels that depend on the alignment of the freshly loaded
    # weights). So the recorded and the recomputed loss agree within the
    # float32 rule's allowance: PyTorch's own float32 error on this loss (the
    # native classifier against the float64 model) plus a few roundings, a
    # few 1e-7. The other epochs' losses differ from it by 1e-3 or more.
    val64 = SequenceDataset([s.double() for s in val.sequences], val.labels)
    loss32 = validation_scores(native_twin(model, torch.float32), val, "cpu")[1]
    loss64 = validation_scores(native_twin(model, torch.float64), val64, "cpu")[1]
    as_tensor = lambda v: [torch.tensor(v, dtype=torch.float64)]  # noqa: E731
    assert_float32_within_pytorchs_own(as_tensor(history["chosen_val_loss"]), as_tensor(loss32),
                                       as_tensor(loss64), ["validation loss"],
                                       compare_to=as_tensor(loss))


def test_test_labels_cannot_influence_training_or_selection(tmp_path):
    """Shuffling the test labels changes the test accuracy but not a bit of
    the chosen weights, nor the epoch chosen."""
    z = dict(np.load(write_npz(tmp_path / "toy.npz")))
    shuffled = dict(z, y_test=np.random.default_rng(0).permutation(z["y_test"]))
    assert not np.array_equal(shuffled["y_test"], z["y_test"])
    np.savez(tmp_path / "shuffled.npz", **shuffled)
    runs = [_train(str(tmp_path / f"{name}.npz"), tmp_path / name, "--epochs", "6",
                   "--seed", "5")["runs"][0] for name in ("toy", "shuffled")]
    assert runs[0]["chosen_epoch"] == runs[1]["chosen_epoch"]
    assert runs[0]["train"]["val_accuracy"] == runs[1]["train"]["val_accuracy"]
    assert runs[0]["train"]["epoch_loss"] == runs[1]["train"]["epoch_loss"]
    weights = [torch.load(tmp_path / name / "model.pt", weights_only=True)["state_dict"]
               for name in ("toy", "shuffled")]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
    assert runs[0]["test_accuracy"] != runs[1]["test_accuracy"]  # the shuffle did matter


def test_step_budget_sets_the_epochs(tmp_path):
    # 48 sequences less 9 held out, batch 8 -> 5 steps an epoch; 12 steps -> 3 epochs
    metrics = _train(write_npz(tmp_path / "toy.npz"), tmp_path / "run", "--steps", "12",
                     "--warmup", "0.2")
    history = metrics["runs"][0]["train"]
    assert (history["steps_per_epoch"], history["epochs"], history["steps"]) == (5, 3, 15)
    assert history["warmup_steps"] == 3
    assert metrics["optim"]["steps"] == 12 and metrics["optim"]["epochs"] is None


def test_several_seeds_summarized_with_checkpoints_and_plots(tmp_path, capsys):
    metrics = _train(write_npz(tmp_path / "toy.npz"), tmp_path / "run", "--epochs", "3",
                     "--seeds", "3", "--seed", "7")
    runs = metrics["runs"]
    assert [r["seed"] for r in runs] == [7, 8, 9]
    accuracies = [r["test_accuracy"] for r in runs]
    assert metrics["test_accuracy_mean"] == pytest.approx(np.mean(accuracies), abs=1e-15)
    assert metrics["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1), abs=1e-15)
    assert metrics["macro_f1_mean"] == pytest.approx(np.mean([r["macro_f1"] for r in runs]))
    assert metrics["summary"]["seqcls_fast"]["runs"] == 3
    # each seed its own split and its own weights
    assert len({tuple(r["train"]["epoch_loss"]) for r in runs}) == 3
    names = [r["checkpoint"].split("/")[-1] for r in runs]
    assert names == ["model.pt", "model_seed8.pt", "model_seed9.pt"]
    first = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    other = torch.load(tmp_path / "run" / "model_seed8.pt", weights_only=True)
    assert not torch.equal(first["state_dict"]["head.weight"], other["state_dict"]["head.weight"])
    out = capsys.readouterr().out
    pytest.importorskip("matplotlib")  # the report extra; the test extra installs it
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert (tmp_path / "run" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"wrote {tmp_path / 'run' / png}" in out


def test_no_matplotlib_is_one_line_not_an_error(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    _train(write_npz(tmp_path / "toy.npz"), tmp_path / "run", "--epochs", "1")
    assert "no plots (matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "run" / "training_curves.png").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--val-fraction", "1", "--val-fraction must be in"),
    ("--warmup", "-0.1", "--warmup must be in"),
    ("--seeds", "0", "--seeds must be >= 1"),
    ("--steps", "0", "--steps must be >= 1"),
    ("--select-window", "1.5", "--select-window must be in"),
    ("--stretch", "-0.5", "--stretch must be >= 0"),
    ("--weight-decay", "-1", "--weight-decay must be >= 0"),
])
def test_selection_options_refused(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit):
        train.main(["--data", "unused.npz", flag, value])
    assert message in capsys.readouterr().err
