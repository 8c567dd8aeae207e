"""seqcls_fast.apps.predict_cli (``python -m seqcls_fast predict``): a checkpoint
of ``seqcls-fast train`` on new data round-trips (the CSV's accuracy is the
test accuracy train reported), works without labels, writes JSON lines, and
refuses data the checkpoint cannot read with a message naming both."""
import csv
import json
import re

import numpy as np
import pytest

from seqcls_fast.apps import predict_cli, train
from seqcls_fast.__main__ import main as cli_main

from data_helpers import toy, write_npz  # tests/apps/, on sys.path by its conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data .npz, run folder) of a bidirectional checkpoint on the toy data."""
    root = tmp_path_factory.mktemp("predict")
    data = write_npz(root / "toy.npz")
    assert train.main(["--data", data, "--out", str(root / "run"), "--epochs", "3", "--lr",
                       "1e-2", "--hidden-size", "16", "--batch-size", "8", "--no-progress"]) == 0
    return data, root / "run"


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_predict_round_trips_the_reported_test_accuracy(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "pred.csv"
    assert cli_main(["predict", "--checkpoint", str(run / "model.pt"), "--data", data,
                     "--out", str(out)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    rows = _rows(out)
    assert len(rows) == metrics["n_test"] == 30
    assert [int(r["index"]) for r in rows] == list(range(30))
    _, labels = toy(30, 1)  # the test split write_npz wrote, in order
    assert [r["label"] for r in rows] == list(labels)
    accuracy = np.mean([r["prediction"] == r["label"] for r in rows])
    assert accuracy == pytest.approx(metrics["runs"][0]["test"]["accuracy"], abs=1e-12)
    classes = metrics["classes"]
    for r in rows:
        probs = [float(r[f"p_{c}"]) for c in classes]
        assert sum(probs) == pytest.approx(1.0, abs=1e-9)
        assert r["prediction"] == classes[int(np.argmax(probs))]
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out


def test_unlabeled_data_and_json_lines(trained, tmp_path):
    data, run = trained
    seqs, _ = toy(30, 1)
    unlabeled = tmp_path / "new.npz"
    np.savez(unlabeled, X=np.concatenate(seqs), lengths=[len(s) for s in seqs])
    labeled_out, out = tmp_path / "labeled.csv", tmp_path / "new.jsonl"
    assert predict_cli.main(["--checkpoint", str(run / "model.pt"), "--data", data,
                             "--out", str(labeled_out)]) == 0
    assert predict_cli.main(["--checkpoint", str(run / "model.pt"), "--data", str(unlabeled),
                             "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30 and all("label" not in r for r in rows)
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in _rows(labeled_out)]


@pytest.mark.parametrize("arrays,message", [
    (dict(channels=4), r"has 4 channels but the checkpoint .* was trained on 3"),
    (dict(label="c9"), r"label 'c9' is not one of the training classes .*checkpoint's classes"),
])
def test_data_the_checkpoint_cannot_read_is_refused(trained, tmp_path, capsys, arrays, message):
    _, run = trained
    seqs, labels = toy(6, 2, channels=arrays.get("channels", 3))
    if "label" in arrays:
        labels = labels.copy()
        labels[0] = arrays["label"]
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.concatenate(seqs), lengths=[len(s) for s in seqs], y=labels)
    assert predict_cli.main(["--checkpoint", str(run / "model.pt"), "--data", str(path),
                             "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqcls-fast predict: error: ")
    assert re.search(message, err), err
