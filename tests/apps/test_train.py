"""seqcls_fast.apps.train (``python -m seqcls_fast train``): data loading and its
errors, metrics, checkpoints, the native baseline
(seqcls_fast.reference.NativeLSTMClassifier), and DDP with 2 processes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import seqcls_fast as sf
from seqcls_fast.apps import train
from seqcls_fast.data import LengthBucketSampler, collate, pad_batch
from seqcls_fast.reference import NativeLSTMClassifier

from data_helpers import toy, write_npz  # tests/apps/, on sys.path by its conftest.py

FAST = ["--hidden-size", "16", "--batch-size", "8", "--no-progress"]


def _run(args, capsys):
    rc = train.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------ end to end, npz
def test_train_npz_learns_reports_metrics_and_checkpoint_reloads(tmp_path, capsys):
    data = write_npz(tmp_path / "toy.npz")
    out = tmp_path / "run"
    rc, stdout, _ = _run(["--data", data, "--out", str(out), "--epochs", "12", "--lr", "1e-2"]
                         + FAST, capsys)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["c0", "c1", "c2"]
    assert (metrics["n_train"], metrics["n_test"], metrics["channels"]) == (48, 30, 3)
    (run,) = metrics["runs"]
    assert (run["impl"], run["seed"]) == ("seqcls_fast", 0)
    test = run["test"]
    assert test["accuracy"] >= 0.9  # the toy task is easy; a broken loop stays near 1/3
    cm = np.array(test["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 30
    assert test["accuracy"] == pytest.approx(np.trace(cm) / 30)
    assert set(test["per_class"]) == {"c0", "c1", "c2"}
    assert sum(c["support"] for c in test["per_class"].values()) == 30
    assert len(run["train"]["epoch_seconds"]) == 12
    assert run["train"]["epoch_loss"][-1] < run["train"]["epoch_loss"][0]
    assert "confusion matrix" in stdout and "precision" in stdout
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["model"] == metrics["model"] and metrics["model"]["hidden_size"] == 16
    assert set(ckpt["state_dict"]) == set(sf.LSTMClassifier(**metrics["model"]).state_dict())

    rc, stdout, _ = _run(["--data", data, "--checkpoint", str(out / "model.pt"),
                          "--out", str(tmp_path / "eval"), "--no-progress"], capsys)
    assert rc == 0
    again = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert again["evaluation_only"] is True
    assert again["test"]["confusion_matrix"] == test["confusion_matrix"]


def test_train_cell_gru_learns_and_its_checkpoint_reloads(tmp_path, capsys):
    """--cell gru: an sf.GRU classifier (state_dict keys gru.*) learns the toy
    task, and --checkpoint evaluates the saved model to the same confusion
    matrix."""
    data = write_npz(tmp_path / "toy.npz")
    out = tmp_path / "run"
    rc, _, _ = _run(["--data", data, "--out", str(out), "--epochs", "12", "--lr", "1e-2",
                     "--cell", "gru"] + FAST, capsys)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["cell"] == "gru"
    (run,) = metrics["runs"]
    assert run["test"]["accuracy"] >= 0.9
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert any(key.startswith("gru.") for key in ckpt["state_dict"])
    rc, _, _ = _run(["--data", data, "--checkpoint", str(out / "model.pt"),
                     "--out", str(tmp_path / "eval"), "--no-progress"], capsys)
    assert rc == 0
    again = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert again["test"]["confusion_matrix"] == run["test"]["confusion_matrix"]


def test_train_npz_equal_length_and_object_forms(tmp_path, capsys):
    tr, ytr = toy(24, 0, min_len=6, max_len=6)
    te, yte = toy(12, 1, min_len=6, max_len=6)
    path = tmp_path / "eq.npz"
    np.savez(path, X_train=np.stack(tr), y_train=ytr, X_test=np.stack(te), y_test=yte)
    rc, _, err = _run(["--data", str(path), "--out", str(tmp_path / "a"), "--epochs", "1"]
                      + FAST, capsys)
    assert rc == 0, err

    tr, ytr = toy(24, 0)
    obj = np.empty(len(tr), dtype=object)
    obj[:] = tr
    path = tmp_path / "obj.npz"
    np.savez(path, X_train=obj, y_train=ytr, X_test=obj, y_test=ytr)
    rc, _, err = _run(["--data", str(path), "--out", str(tmp_path / "b"), "--epochs", "1"]
                      + FAST, capsys)
    assert rc == 2 and "--allow-pickle" in err
    rc, _, err = _run(["--data", str(path), "--allow-pickle", "--out", str(tmp_path / "b"),
                       "--epochs", "1"] + FAST, capsys)
    assert rc == 0, err


# ------------------------------------------------------------------ bad data
def _ragged_object(channels):
    arr = np.empty(len(channels), dtype=object)
    arr[:] = [np.zeros((4, c), np.float32) for c in channels]
    return arr


@pytest.mark.parametrize("overrides, flags, message", [
    ({"y_train": None}, [], "missing y_train"),
    ({"X_test": None}, [], "no X_test"),
    ({"X_test": np.zeros((0, 3), np.float32), "lengths_test": np.zeros(0, np.int64),
      "y_test": np.array([], dtype="<U2")}, [], "test split is empty"),
    ({"X_train": _ragged_object([3, 3, 2]), "lengths_train": None, "y_train": ["c0", "c1", "c2"]},
     ["--allow-pickle"], "inconsistent channel counts"),
    ({"lengths_train": None}, [], "needs lengths_train"),
    ({"y_test": np.array(["c9"] * 30)}, [], "not one of the training classes"),
    ({"y_train": np.array(["c0"] * 48)}, [], "only 1 class"),
])
def test_bad_npz_gets_clear_error(tmp_path, capsys, overrides, flags, message):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    rc, _, err = _run(["--data", path, "--out", str(tmp_path / "o"), "--epochs", "1"] + FAST
                      + flags, capsys)
    assert rc == 2
    assert message in err
    assert "Traceback" not in err


def test_nan_and_channel_mismatch_between_splits(tmp_path, capsys):
    tr, ytr = toy(48, 0)  # as write_npz's
    te, yte = toy(6, 1, channels=4)
    path = tmp_path / "mismatch.npz"
    np.savez(path, X_train=np.concatenate(tr), lengths_train=[len(s) for s in tr], y_train=ytr,
             X_test=np.concatenate(te), lengths_test=[len(s) for s in te], y_test=yte)
    rc, _, err = _run(["--data", str(path)] + FAST, capsys)
    assert rc == 2 and "3 channels but the test split has 4" in err
    tr[3][1, 1] = np.nan
    path = write_npz(tmp_path / "nan.npz", X_train=np.concatenate(tr))
    rc, _, err = _run(["--data", path] + FAST, capsys)
    assert rc == 2 and "NaN" in err and "sequence 3" in err


def test_missing_file_and_unshipped_dataset(tmp_path, capsys):
    rc, _, err = _run(["--data", str(tmp_path / "nope.npz")], capsys)
    assert rc == 2 and "no such file" in err
    rc, _, err = _run(["--data", str(tmp_path / "nope_TRAIN.ts")], capsys)
    assert rc == 2 and "no such file" in err
    rc, _, err = _run(["--dataset", "FaceDetection"], capsys)  # in the UEA list, not shipped
    assert rc == 2 and "does not ship" in err and "--download" in err and "--data" in err
    rc, _, err = _run(["--dataset", "NoSuchSet"], capsys)
    assert rc == 2 and "not a time series classification set" in err
    rc, _, err = _run(["--dataset", "JapaneseVowels", "--checkpoint", str(tmp_path / "x.pt")],
                      capsys)
    assert rc == 2 and "no such file" in err


# ------------------------------------------------------------------- .ts files
def _ts_text(seqs, labels, with_labels=True):
    classes = " ".join(sorted(set(labels)))
    head = ["@problemName toy", "@timeStamps false", "@missing false",
            f"@univariate {'true' if seqs[0].shape[1] == 1 else 'false'}",
            f"@dimensions {seqs[0].shape[1]}", "@equalLength false",
            f"@classLabel true {classes}" if with_labels else "@classLabel false", "@data"]
    rows = []
    for s, y in zip(seqs, labels):
        row = ":".join(",".join(f"{v:.6f}" for v in s[:, c]) for c in range(s.shape[1]))
        rows.append(row + (f":{y}" if with_labels else ""))
    return "\n".join(head + rows) + "\n"


def test_ts_pair_through_aeon(tmp_path, capsys):
    tr, ytr = toy(30, 0)
    te, yte = toy(15, 1)
    (tmp_path / "toy_TRAIN.ts").write_text(_ts_text(tr, ytr))
    (tmp_path / "toy_TEST.ts").write_text(_ts_text(te, yte))
    rc, stdout, err = _run(["--data", str(tmp_path / "toy_TRAIN.ts"), "--out",
                            str(tmp_path / "o"), "--epochs", "1"] + FAST, capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["n_train"], metrics["n_test"]) == ("toy", 30, 15)
    assert metrics["train_lengths"] == [min(map(len, tr)), max(map(len, tr))]
    # explicit pair; an unlabeled test file is refused
    (tmp_path / "nolabel.ts").write_text(_ts_text(te, yte, with_labels=False))
    rc, _, err = _run(["--data", str(tmp_path / "toy_TRAIN.ts"), str(tmp_path / "nolabel.ts"),
                       "--epochs", "1"] + FAST, capsys)
    assert rc == 2 and "no class labels" in err


def test_aeon_ships_the_issue_datasets():
    train_split, test_split, classes = train.load_aeon_dataset("JapaneseVowels")
    (x, y), (xt, yt) = train_split, test_split
    assert (len(x), len(xt)) == (270, 370)
    assert {s.shape[1] for s in x + xt} == {12}
    assert min(map(len, x)) == 7 and max(map(len, x + xt)) == 29
    assert classes == [str(i) for i in range(1, 10)] and set(y) == set(classes)
    (x, _), (xt, _), classes = train.load_aeon_dataset("PickupGestureWiimoteZ")
    assert (len(x), len(xt), x[0].shape[1], len(classes)) == (50, 50, 1, 10)
    assert len({len(s) for s in x}) > 1  # variable length kept, not the _eq version
    (x, _), _, classes = train.load_aeon_dataset("BasicMotions")
    assert (len(x), x[0].shape, len(classes)) == (40, (100, 6), 4)


def test_standardization_is_fitted_on_train_only():
    tr = [np.full((3, 2), 1.0, np.float32), np.full((1, 2), 5.0, np.float32)]
    mean, std = train.fit_standardization(tr)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(std, [np.sqrt(3.0)] * 2, rtol=1e-6)
    const_mean, const_std = train.fit_standardization([np.ones((4, 1), np.float32)])
    assert const_std[0] == 1.0 and const_mean[0] == 1.0


# -------------------------------------------------------------- native baseline
@pytest.mark.parametrize("pooling, bidirectional, attn_dim", [
    ("attention", True, None), ("attention", False, 5), ("mean", True, None),
    ("last", True, None)])
def test_native_baseline_is_the_same_model(pooling, bidirectional, attn_dim):
    config = dict(input_size=3, hidden_size=6, num_classes=4, num_layers=2,
                  bidirectional=bidirectional, dropout=0.0, pooling=pooling, attn_dim=attn_dim)
    torch.manual_seed(0)
    ours = train.build_model("seqcls_fast", config).double()
    torch.manual_seed(0)
    native = train.build_model("native", config).double()
    assert type(ours) is sf.LSTMClassifier and type(native) is NativeLSTMClassifier
    # same seed -> same initial weights, same names
    assert ours.state_dict().keys() == native.state_dict().keys()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, native.state_dict()[k]), k
    x, lengths = pad_batch([torch.randn(n, 3, dtype=torch.float64) for n in (5, 2, 7, 1)])
    torch.testing.assert_close(ours(x, lengths), native(x, lengths), rtol=1e-10, atol=1e-12)


def test_baseline_native_run_side_by_side(tmp_path, capsys):
    data = write_npz(tmp_path / "toy.npz", train_n=24, test_n=12)
    rc, stdout, err = _run(["--data", data, "--out", str(tmp_path / "o"), "--epochs", "2",
                            "--baseline", "native"] + FAST, capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert [r["impl"] for r in metrics["runs"]] == ["seqcls_fast", "native"]
    assert set(metrics["summary"]) == {"seqcls_fast", "native"}
    assert metrics["speedup_vs_native"] > 0
    assert (tmp_path / "o" / "model_native.pt").exists()
    assert "training speedup vs native" in stdout
    # same init and data order: the two trainings agree to float rounding
    losses = [r["train"]["epoch_loss"] for r in metrics["runs"]]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)


# ------------------------------------------------------------------------ DDP
STEPS, LOCAL_BATCH, WORLD = 3, 4, 2


def _ddp_data():
    g = torch.Generator().manual_seed(123)
    n = STEPS * LOCAL_BATCH * WORLD
    lengths = torch.randint(1, 9, (n,), generator=g)
    seqs = [torch.randn(int(t), 3, generator=g, dtype=torch.float64) for t in lengths]
    labels = torch.randint(0, 4, (n,), generator=g)
    return seqs, labels, lengths


def _ddp_model():
    torch.manual_seed(7)
    return sf.LSTMClassifier(3, 5, 4, num_layers=2, bidirectional=True, dtype=torch.float64)


def _ddp_worker(rank, store_path, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=WORLD)
    try:
        seqs, labels, lengths = _ddp_data()
        model = _ddp_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)  # scale-sensitive, unlike Adam
        sampler = LengthBucketSampler(lengths, LOCAL_BATCH, seed=3)  # rank/world from dist
        assert (sampler.rank, sampler.num_replicas) == (rank, WORLD)
        for batch in sampler:
            x, lens, y = collate([(seqs[i], labels[i]) for i in batch])
            loss = torch.nn.functional.cross_entropy(ddp(x, lens), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_on_combined_batches(tmp_path):
    # fork (where there is one) skips re-importing torch in the children: seconds, not tens
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)),
                       nprocs=WORLD, join=True, start_method=method)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), f"ranks differ in {k}"

    seqs, labels, lengths = _ddp_data()
    model = _ddp_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    shards = [list(LengthBucketSampler(lengths, LOCAL_BATCH, seed=3, num_replicas=WORLD, rank=r))
              for r in range(WORLD)]
    assert len(shards[0]) == len(shards[1]) == STEPS
    for step in range(STEPS):
        batch = shards[0][step] + shards[1][step]  # equal halves: mean loss = mean of means
        assert len(batch) == LOCAL_BATCH * WORLD
        x, lens, y = collate([(seqs[i], labels[i]) for i in batch])
        loss = torch.nn.functional.cross_entropy(model(x, lens), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in model.state_dict().items():
        assert not torch.equal(v, start[k]), f"{k} did not train"
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-9, atol=1e-11, msg=k)


def test_train_cli_under_torchrun_two_processes(tmp_path):
    data = write_npz(tmp_path / "toy.npz", train_n=40, test_n=10)
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__)))]
        + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "seqcls_fast", "train", "--data", data, "--out", str(out), "--epochs", "2"]
        + FAST, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["command"].startswith("torchrun --nproc_per_node 2")
    run = metrics["runs"][0]["train"]
    # 40 sequences less 9 held out for validation (3 of each class), batch 8
    # per process -> 4 batches, 2 per rank
    assert run["steps_per_epoch"] == 2
    assert proc.stdout.count("epoch    1/2") == 1  # only rank 0 logs


# --------------------------------------------------------------- augmentation
def test_augmenting_collate_stretches_and_scales_repeatably():
    from seqcls_fast.apps.train.augment import AugmentingCollate
    items = [(torch.randn(n, 3), torch.tensor(i)) for i, n in enumerate((40, 7, 1, 25))]
    batches = [AugmentingCollate(0.3, 0.1, seed=4)(items) for _ in range(2)]
    for a, b in zip(*batches):
        assert torch.equal(a, b)  # the seed fixes every draw
    x, lengths, y = batches[0]
    assert y.tolist() == [0, 1, 2, 3]
    base = torch.tensor([40, 7, 1, 25])
    assert lengths[2] == 1  # a single step is not stretched
    assert ((lengths >= torch.floor(base * np.exp(-0.3))) & (lengths <= torch.ceil(base * np.exp(0.3)))).all()
    assert not torch.equal(lengths, base)  # some sequence was stretched
    other = AugmentingCollate(0.3, 0.1, seed=5)(items)
    assert not torch.equal(other[1], lengths) or not torch.equal(other[0], x)
    # stretch only: the endpoints are kept (interpolation with aligned corners)
    x, lengths, _ = AugmentingCollate(0.3, 0.0, seed=0)(items)
    for i, (seq, _) in enumerate(items):
        assert torch.allclose(x[i, 0], seq[0]) and torch.allclose(x[i, lengths[i] - 1], seq[-1])
    # scale only: lengths kept, each channel multiplied by one gain
    x, lengths, _ = AugmentingCollate(0.0, 0.1, seed=0)(items)
    assert lengths.tolist() == base.tolist()
    gain = x[0, :40] / items[0][0]
    assert torch.allclose(gain, gain[:1].expand_as(gain), rtol=1e-5)
    with pytest.raises(ValueError, match="stretch and scale must be >= 0"):
        AugmentingCollate(-0.1, 0.0, seed=0)
