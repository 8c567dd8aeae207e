"""seqcls_fast.apps.stream_cli (``python -m seqcls_fast stream``): early
classification of a ``seqcls-fast train`` checkpoint on a tiny synthetic
.npz: the whole-sequence score equals train --checkpoint's, each fraction's
predictions equal the offline model on the same prefixes, the JSON keys, and
the one-line errors."""
import json

import numpy as np
import pytest
import torch

from seqcls_fast.apps import stream_cli, train
from seqcls_fast.__main__ import main as cli_main
from seqcls_fast.data import pad_batch

from data_helpers import toy, write_npz  # tests/apps/, on sys.path by its conftest.py

FAST = ["--hidden-size", "16", "--batch-size", "8", "--no-progress"]


def _train(data, out, *flags, capsys=None):
    """train.main on ``data`` into ``out``; -> the model.pt path. With
    ``capsys``, a failure shows train's stderr."""
    rc = train.main(["--data", data, "--out", str(out), "--epochs", "3", "--lr", "1e-2",
                     *flags] + FAST)
    err = capsys.readouterr().err if capsys is not None else None
    assert rc == 0, err
    return str(out / "model.pt")


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A unidirectional attention checkpoint on the toy .npz."""
    root = tmp_path_factory.mktemp("stream")
    data = write_npz(root / "toy.npz")
    return root, data, _train(data, root / "uni", "--no-bidirectional", "--pooling", "attention")


def test_full_sequence_score_equals_train_checkpoint_evaluation(trained, capsys):
    root, data, ckpt = trained
    capsys.readouterr()
    assert train.main(["--data", data, "--checkpoint", ckpt, "--out", str(root / "eval"),
                       "--no-progress"]) == 0
    evaluated = json.loads((root / "eval" / "eval_metrics.json").read_text())["test"]
    rc = cli_main(["stream", "--checkpoint", ckpt, "--data", data, "--steps", "10",
                   "--batch-size", "7", "--out", str(root / "s")])  # 7: a ragged last batch
    stdout = capsys.readouterr().out
    assert rc == 0
    result = json.loads((root / "s" / "stream_metrics.json").read_text())
    assert set(stream_cli.STREAM_METRICS_KEYS) <= set(result)
    assert result["fractions"] == pytest.approx([k / 10 for k in range(1, 11)])
    assert len(result["accuracy"]) == len(result["macro_f1"]) == 10
    assert result["accuracy"][-1] == evaluated["accuracy"]
    assert result["macro_f1"][-1] == pytest.approx(evaluated["macro_f1"])
    assert (result["n_test"], result["dataset"], result["checkpoint"]) == (30, "toy", ckpt)
    assert result["timing"]["feed_calls"] == 10 * 5  # 30 rows in batches of 7
    assert "100%" in stdout and "accuracy" in stdout
    assert (root / "s" / "early_classification.png").exists() == _has_matplotlib()


def test_gru_checkpoint_streams(trained, tmp_path, capsys):
    """A --cell gru checkpoint streams (gru_layer_pooled_forward per chunk):
    its whole-sequence accuracy equals train --checkpoint's evaluation."""
    _, data, _ = trained
    ckpt = _train(data, tmp_path / "gru", "--no-bidirectional", "--cell", "gru", capsys=capsys)
    assert train.main(["--data", data, "--checkpoint", ckpt, "--out", str(tmp_path / "eval"),
                       "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())["test"]
    assert cli_main(["stream", "--checkpoint", ckpt, "--data", data, "--steps", "4",
                     "--out", str(tmp_path / "s")]) == 0
    result = json.loads((tmp_path / "s" / "stream_metrics.json").read_text())
    assert result["accuracy"][-1] == evaluated["accuracy"]


def test_each_fraction_matches_the_offline_model_on_the_prefix(trained):
    _, _, ckpt = trained
    model, _ = stream_cli.load_streaming_model(ckpt, torch.device("cpu"))
    seqs, _ = toy(11, 5, min_len=1, max_len=9)  # lengths below steps: chunk_lengths of 0
    seqs = [torch.from_numpy(s) for s in seqs]
    steps = 4
    preds, calls, _ = stream_cli.stream_predictions(model, seqs, steps, batch_size=4,
                                                    device=torch.device("cpu"))
    assert calls == steps * 3
    prefixes = stream_cli.prefix_lengths(torch.tensor([len(s) for s in seqs]), steps)
    for k in range(steps):
        x, lengths = pad_batch([s[: int(n)] for s, n in zip(seqs, prefixes[k])])
        with torch.no_grad():
            assert torch.equal(preds[k], model(x, lengths).argmax(dim=1)), k
    assert prefixes[:, 0].tolist() == [-(-k * len(seqs[0]) // steps) for k in range(1, 5)]
    assert torch.equal(prefixes[-1], torch.tensor([len(s) for s in seqs]))


def test_errors_are_one_line_exit_2(trained, tmp_path, capsys):
    root, data, ckpt = trained
    bi = _train(data, tmp_path / "bi", "--bidirectional", capsys=capsys)
    cases = [
        (["--checkpoint", bi, "--data", data], "bidirectional, and streaming needs the past only"),
        (["--checkpoint", str(tmp_path / "nope.pt"), "--data", data], "no such file"),
        (["--checkpoint", ckpt, "--data", str(tmp_path / "nope.npz")], "no such file"),
        (["--checkpoint", ckpt, "--data", write_npz(tmp_path / "four.npz", channels=4)],
         "trained on 3 channels, the data has 4"),
    ]
    for argv, message in cases:
        assert stream_cli.main(argv + ["--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert err.startswith("seqcls-fast stream: error: ") and err.count("\n") == 1
